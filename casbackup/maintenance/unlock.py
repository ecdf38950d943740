"""Removing locks left by dead processes: what `casbackup unlock` and the service's unlock job do.

A lock is stale when its process is gone from this host or it was not refreshed for
``repo.lock.STALE_AFTER`` seconds (``LockInfo.is_stale``); live locks are kept unless
``remove_all``, which is for a repository whose every user is known to be stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from casbackup.errors import CasError, NotFound
from casbackup.repo.lock import list_locks
from casbackup.repo.repository import Repository


@dataclass
class UnlockResult:
    removed: list[str] = field(default_factory=list)  # descriptions of the removed locks
    kept: list[str] = field(default_factory=list)  # live locks left in place
    failed: list[str] = field(default_factory=list)  # could not be removed, and why


def remove_stale_locks(repo: Repository, *, remove_all: bool = False) -> UnlockResult:
    result = UnlockResult()
    for info in list_locks(repo):
        if remove_all or info.is_stale():
            try:
                repo.backend.delete(info.name)
            except NotFound:
                continue  # its owner released it meanwhile
            except CasError as exc:  # replaced meanwhile by something that is not a lock
                result.failed.append(f"could not remove {info.name}: {exc}")
                continue
            result.removed.append(info.describe())
        else:
            result.kept.append(info.describe())
    return result
