"""Opening the index cache (repo/indexcache.py) so that trouble with it never fails a command.

A cache is an optimisation. One that cannot be opened is rebuilt; where its folder cannot be
used at all (a read-only file system, a folder the user may not write, one another user made
first in a shared CASBACKUP_CACHE_DIR: userdirs.refuse_foreign) the command goes on with a
cache in a private temporary folder, rebuilt from the repository's index and removed when the
repository is closed, after one warning naming the folder (restic and borg carry on without
their caches too). A run killed before it could remove its folder (SIGKILL, a power cut)
leaves it behind, as large as the index; the next run that needs a temporary cache removes
those of runs that have ended (``sweep_temporaries``: each folder names its process in
``OWNER_FILE``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import tempfile
import time

from casbackup.errors import CasError, StorageError
from casbackup.liveness import ProcessId, gone, this_process
from casbackup.repo.indexcache import IndexCache, private_dirs

PREFIX = "casbackup-index-"
#: In each temporary cache folder: which process made it (liveness.ProcessId, as JSON).
OWNER_FILE = "owner.json"
#: A folder with no readable owner (killed between making it and naming itself) is
#: removed once it is this old, seconds.
ORPHAN_AGE_S = 24 * 3600

log = logging.getLogger("casbackup.repo")


def open_index_cache(path: str, repo_id: str) -> tuple[IndexCache, str | None]:
    """The index cache at ``path`` (made if missing), or a temporary one: (cache, the
    temporary folder for the caller to remove after closing the cache, or None).

    Raises StorageError (why ``path`` could not be used) only when no temporary cache can be
    made either."""
    try:
        return IndexCache(path), None
    except CasError as exc:
        reason = str(exc)
    try:
        private_dirs(path)  # raises for a folder that is not ours to remove
        shutil.rmtree(path, ignore_errors=True)  # a damaged cache is only a cache
        return IndexCache(path), None
    except (CasError, OSError):
        pass
    sweep_temporaries(tempfile.gettempdir())
    try:
        folder = tempfile.mkdtemp(prefix=f"{PREFIX}{repo_id[:10]}-")
    except OSError:
        raise StorageError(reason) from None
    try:
        me = this_process()
        with open(os.path.join(folder, OWNER_FILE), "w", encoding="ascii") as f:
            json.dump({"pid": os.getpid(), "boot": me.boot, "pidns": me.pidns,
                       "start": me.start}, f)  # fmt: skip
        cache = IndexCache(os.path.join(folder, "index"))
    except (CasError, OSError):
        shutil.rmtree(folder, ignore_errors=True)
        raise StorageError(reason) from None
    log.warning(f"{reason}; this run keeps its index cache in {folder} instead")
    return cache, folder


def sweep_temporaries(parent: str) -> int:
    """Remove the temporary index caches in ``parent`` (``PREFIX`` folders of this user) whose
    process has ended: one that ran in an earlier boot or whose pid is gone or another
    process's now (liveness.gone; never one in another pid namespace, which this process
    cannot judge), or, with no readable owner, one untouched for ``ORPHAN_AGE_S``. Returns
    how many were removed. Never raises: a folder that cannot be judged or removed stays."""
    removed = 0
    try:
        names = [n for n in os.listdir(parent) if n.startswith(PREFIX)]
    except OSError:
        return 0
    for name in names:
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue  # a symlink, a file, another user's: not ours to remove
            if not _ended(path, st.st_mtime):
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed += not os.path.lexists(path)
    return removed


def _ended(folder: str, mtime: float) -> bool:
    """Whether the process that made temporary cache ``folder`` has ended."""
    try:
        with open(os.path.join(folder, OWNER_FILE), encoding="ascii") as f:
            doc = json.load(f)
        who = ProcessId(doc["boot"], doc["pidns"], doc["start"])
        pid = int(doc["pid"])
        if not all(isinstance(v, (str, int, type(None))) for v in (who.boot, who.pidns, who.start)):
            raise ValueError("owner fields")
    except (OSError, ValueError, KeyError, TypeError):
        return time.time() - mtime > ORPHAN_AGE_S
    if pid == os.getpid():
        return False
    return gone(pid, who) is True
