"""Opening the index cache (repo/indexcache.py) so that trouble with it never fails a command.

A cache is an optimisation. One that cannot be opened is rebuilt; where its folder cannot be
used at all (a read-only file system, a folder the user may not write, one another user made
first in a shared CASBACKUP_CACHE_DIR: userdirs.refuse_foreign) the command goes on with a
cache in a private temporary folder, rebuilt from the repository's index and removed when the
repository is closed, after one warning naming the folder (restic and borg carry on without
their caches too).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile

from casbackup.errors import CasError, StorageError
from casbackup.repo.indexcache import IndexCache, private_dirs

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
    try:
        folder = tempfile.mkdtemp(prefix=f"casbackup-index-{repo_id[:10]}-")
    except OSError:
        raise StorageError(reason) from None
    try:
        cache = IndexCache(os.path.join(folder, "index"))
    except CasError:
        shutil.rmtree(folder, ignore_errors=True)
        raise StorageError(reason) from None
    log.warning(f"{reason}; this run keeps its index cache in {folder} instead")
    return cache, folder
