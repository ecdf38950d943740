"""Upgrading a repository's format in place (``casbackup migrate``).

Version 1 to 2 rewrites only ``config``: the same parameters, ``"version": 2`` and a MAC
under the master key (repo/config.py). Order, each step durable before the next:

1. take an exclusive lock (no backup or prune writes while the format changes);
2. re-read ``config`` and refuse if it changed since the repository was opened;
3. write the new config through the backend's ``put``: a temp name, fsync, rename over
   ``config``, fsync of the folder. A kill before the rename leaves version 1 (and a temp
   file that readers ignore and prune removes), a kill after it leaves version 2: the
   repository opens either way, and running ``migrate`` again finishes the job;
4. record version 2 in this client's local state, so a later version 1 config here is
   reported as a rollback (ConfigTampered).

Objects written by version 1 stay as they are: version 2 readers read them.

Version 2 to 3 (delta blobs, repo/delta.py) is the same single step: the config with
``"version": 3`` and its MAC. Nothing stored changes: version 3 readers read every
version 2 object; from then on backups may write DELTA blobs, which version 2 readers
cannot read, and they refuse the version 3 config (exit 21) before reading anything.
Version 3 to 4 (TREE_DELTA blobs: trees stored as deltas of the parent snapshot's tree)
is the same step again; version 3 readers refuse the version 4 config. Version 4 to 5
(snapshot records rewritten by ``tag``, record version 2) is that step once more; version 4
readers refuse the version 5 config, so none of them ever calls such a record damaged.
Version 5 to 6 (aligned DELTA payloads, repo/aligned_delta.py) is the same step; version 5
readers refuse the version 6 config before they could meet a payload they would call
damaged. A version 1 to 5 repository goes straight to the current version.
Migrating authenticates what the version 1 config says, so ``MigrationPlan.unusual``
names every parameter that differs from casbackup's defaults: a config changed by a
storage attacker before the upgrade would otherwise become authenticated.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from casbackup.errors import ConfigTampered, UsageError
from casbackup.repo.config import DUMP_CHUNKER, FORMAT_VERSION, ChunkerParams, RepoConfig
from casbackup.repo.lock import Lock
from casbackup.repo.repository import Repository


@dataclass(frozen=True)
class MigrationPlan:
    from_version: int
    to_version: int
    unusual: tuple[str, ...]  # parameters that differ from the defaults (to review)

    @property
    def needed(self) -> bool:
        return self.from_version < self.to_version


def _describe(value: object) -> str:
    """A setting as the user reads it: chunker sizes in bytes, not a dataclass repr."""
    if isinstance(value, ChunkerParams):
        return (f"{value.algorithm} min {value.min_size} / avg {value.avg_size} / "
                f"max {value.max_size} bytes")  # fmt: skip
    return str(value)


def plan_migration(repo: Repository) -> MigrationPlan:
    """What ``migrate`` would do; reads nothing but the open repository's config.

    ``unusual`` is only filled for a version 1 config (a version 2 one is authenticated
    already: nothing new becomes trusted by the upgrade)."""
    config = repo.config
    unusual: list[str] = []
    for name, value, default in (
        ()
        if config.authenticated
        else (
            ("chunker", config.chunker, ChunkerParams()),
            ("dump_chunker", config.dump_chunker, DUMP_CHUNKER),
            ("compression", config.compression, "zstd"),
        )
    ):
        if value != default:
            unusual.append(f"{name} is {_describe(value)}, the default is {_describe(default)}")
    return MigrationPlan(config.version, max(config.version, FORMAT_VERSION), tuple(unusual))


def migrate(repo: Repository, *, accept_unusual: bool = False) -> MigrationPlan:
    """Upgrade the repository to ``FORMAT_VERSION`` (see the module docstring for the order).

    The plan is not ``needed`` when another migrate upgraded it since it was opened.
    Raises UsageError, changing nothing, when a version 1 config has ``unusual``
    parameters and ``accept_unusual`` is False: the user confirms them first (they become
    authenticated). Raises LockError when another process holds a lock, ConfigTampered
    when the stored config changed otherwise since it was opened, StorageError when it
    cannot be written."""
    plan = plan_migration(repo)
    if not plan.needed:
        return plan
    if plan.unusual and not accept_unusual:
        raise UsageError(
            f"the repository's unauthenticated config has settings other than the defaults "
            f"({'; '.join(plan.unusual)}): migrating makes them authenticated, so a config "
            "changed by whoever can write the storage would be trusted from then on; if these "
            "are your settings, run 'casbackup migrate --accept-settings'"
        )
    lock = Lock(repo, True, "migrate").acquire()  # Repository.lock refuses a v1 repository
    try:
        current = RepoConfig.decode(repo.backend.get("config"))
        new = replace(repo.config, version=FORMAT_VERSION).sign(repo.key)
        new.validate()
        if current == new:
            # Another migrate finished first (the same config, signed by the same key): done.
            plan = MigrationPlan(new.version, new.version, ())
        elif current != repo.config:
            raise ConfigTampered("the repository config changed while migrating; run it again")
        else:
            repo.backend.put("config", new.encode())
        repo.config = new
        repo.writable = True
        repo.remember_open()
    finally:
        lock.release()
    return plan
