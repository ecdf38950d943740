"""A bounded local cache of tree blobs, beside the LMDB index cache, for remote repositories.

Why: an unchanged re-backup to S3 compares every folder with the parent snapshot's tree,
and each tree was one ranged GET: about 110 of the 125-170 requests of an unchanged
re-backup of the bench corpus (issue 14). Trees are small and the same ones are read by
every backup of a client, so keeping them on the local disk turns those requests into
file reads. A backup also puts the trees it writes here, so the next one finds them.

Layout: ``<cache root>/<repository id>/trees/<first 2 hex>/<blob id hex>``, one file per
tree, mode 0600 in 0700 folders (tree contents name files; nobody else's business). A
``trees`` folder (or one above it) that another user made, or a link, is not used at all
(``private_dirs``): eviction would delete the files of the folder a link names.

Trust: none. An entry is an envelope sealed with the repository's key and the blob id as
associated data (the same sealing as in a pack, never plaintext on disk), so reading one
authenticates it; the decrypted tree must also hash to its id under the repository's keyed
hash. Anything that fails (a damaged, truncated, swapped or planted file) is removed and
the caller reads the repository instead. The cache can be deleted at any time.

Filling: a miss on a client with a cold cache (a new machine, after eviction) would read
the parent's trees one ranged GET each (215 for the bench corpus). Trees are kept in packs
of their own (blobstore.py), so ``fill_from_pack`` reads the missed tree's whole pack
once when it is small (at most PREFETCH_MAX; one HEAD and one GET), authenticates it
(its name is its hash, its header and every blob are sealed) and caches every tree in it.

Bound: ``CASBACKUP_TREE_CACHE_MIB`` (default 256; 0 switches the cache off). When a
process has written past the bound, the least recently used entries (by mtime; a hit
refreshes it) are removed until the cache holds at most 3/4 of it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from casbackup.crypto.envelope import Opener, Sealer
from casbackup.errors import CasError
from casbackup.repo import codec
from casbackup.repo.ids import Kind, check_name
from casbackup.repo.indexcache import CACHE_DIR_MODE, CACHE_FILE_MODE, cache_bound, private_dirs
from casbackup.repo.pack import open_blob, pack_name, parse_pack_tail

DEFAULT_MIB = 256
#: A tree pack at most this big is read whole on a miss (a data pack never is).
PREFETCH_MAX = 4 << 20
#: An entry larger than this is never read (a tree this big is not cached either).
ENTRY_MAX = 16 << 20


def cap_bytes() -> int:
    """The cache's bound in bytes from ``CASBACKUP_TREE_CACHE_MIB`` (0: off). A value
    that is not a non-negative integer falls back to the default: it is only a cache."""
    return cache_bound("CASBACKUP_TREE_CACHE_MIB", DEFAULT_MIB)


class TreeCache:
    """Sealed tree blobs under ``root`` (one repository's folder). Thread-safe.

    ``get(blob_id)`` returns the verified plaintext or None; ``put(blob_id, plaintext)``
    stores it. ``hash_id(data) -> 32 bytes`` is the repository's keyed blob hash. No method
    raises for cache trouble (an unwritable disk, damaged entries): the cache only saves
    requests, it never decides what a backup contains.
    """

    def __init__(
        self,
        root: str,
        sealer: Sealer,
        opener: Opener,
        hash_id: Callable[[bytes], bytes],
        cap: int,
    ) -> None:
        self.root = root
        self.cap = cap
        self._sealer = sealer
        self._opener = opener
        self._hash_id = hash_id
        self._lock = threading.Lock()
        self._written = 0  # bytes this process added; eviction runs when the total may be over
        self._total: int | None = None  # measured on the first eviction check
        self._packs_read: set[str] = set()  # packs fill_from_pack has read (once each)
        self._folders: set[str] = set()  # entry folders known to exist
        self._usable: bool | None = None  # see _ours
        self.hits = 0
        self.misses = 0

    def _path(self, blob_id: bytes) -> str:
        name = blob_id.hex()
        return os.path.join(self.root, name[:2], name)

    def _ours(self) -> bool:
        """Whether ``root`` is a folder of ours from the cache root down, made 0700 if
        missing (``private_dirs``); asked once."""
        if self._usable is None:
            try:
                private_dirs(self.root)
                self._usable = True
            except OSError:
                self._usable = False
        return self._usable

    def get(self, blob_id: bytes) -> bytes | None:
        """The tree's plaintext, authenticated and checked against ``blob_id``, or None."""
        if not self._ours():
            self.misses += 1
            return None
        path = self._path(blob_id)
        try:
            with open(path, "rb") as f:
                sealed = f.read(ENTRY_MAX + 1)
        except OSError:
            self.misses += 1
            return None
        try:
            if len(sealed) > ENTRY_MAX:
                raise CasError("oversized entry")
            data = codec.decompress(self._opener.open(Kind.TREE, blob_id, sealed))
            if self._hash_id(data) != blob_id:
                raise CasError("entry does not match its id")
        except (CasError, ValueError):
            # Damaged or planted: drop it and let the caller read the repository.
            self._remove(path)
            self.misses += 1
            return None
        try:
            os.utime(path)  # recently used: evicted last
        except OSError:
            pass
        self.hits += 1
        return data

    def put(self, blob_id: bytes, plaintext: bytes) -> None:
        """Store a tree the caller has verified (read and checked, or just written)."""
        if self.cap <= 0 or len(plaintext) > ENTRY_MAX // 2 or not self._ours():
            return
        path = self._path(blob_id)
        folder = os.path.dirname(path)
        try:
            if folder not in self._folders:
                os.makedirs(folder, mode=CACHE_DIR_MODE, exist_ok=True)
                self._folders.add(folder)
            # Straight to its name, no temp file and rename (a backup writes every tree it
            # saves here, on its critical path): a reader that meets a half-written entry
            # fails to authenticate it and treats it as a miss.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, CACHE_FILE_MODE)
        except OSError:
            return  # there already (FileExistsError), or the cache cannot be written
        try:
            try:
                sealed = self._sealer.seal(Kind.TREE, blob_id, codec.compress(plaintext, 3))
                os.write(fd, sealed)
            finally:
                os.close(fd)  # may fail too (NFS tells a write error there): a cache error
        except OSError:
            self._remove(path)
            return
        with self._lock:
            self._written += len(sealed)
            due = self._total is None or self._total + self._written > self.cap
        if due:
            self._evict()

    def fill_from_pack(self, backend: Any, pack: str) -> int:
        """Read the pack ``pack`` (a file id) whole when it is small and holds trees only,
        and cache every tree in it. Returns how many were cached; 0 when the pack is big,
        was read before by this process, or holds data. Raises what the backend raises
        (NotFound, StorageError) and IntegrityError for a damaged pack: the caller then
        reads the one tree as it would without a cache."""
        with self._lock:
            if pack in self._packs_read or self.cap <= 0:
                return 0
            self._packs_read.add(pack)
        name = pack_name(pack)
        size = backend.stat(name)
        if size > PREFETCH_MAX:
            return 0
        data = backend.get(name)
        check_name(name, data)  # a pack's name is its hash
        entries = parse_pack_tail(self._opener, data, len(data))[1]
        if any(e.kind not in (Kind.TREE, Kind.TREE_DELTA) for e in entries):
            return 0  # not a tree pack: reading one tree at a time is cheaper
        cached = 0
        for e in entries:
            if e.kind != Kind.TREE:
                continue  # a tree delta is resolved (and then cached) when it is read
            envelope = data[e.offset : e.offset + e.stored_len]
            tree = open_blob(self._opener, Kind.TREE, e.id, pack, envelope, e.raw_len)
            if self._hash_id(tree) == e.id:
                self.put(e.id, tree)
                cached += 1
        return cached

    def _evict(self) -> None:
        """Measure the cache; over the cap, remove the least recently used entries."""
        entries: list[tuple[float, int, str]] = []
        if not self._ours():
            return
        try:
            with os.scandir(self.root) as top:
                for sub in top:
                    if not sub.is_dir(follow_symlinks=False):
                        continue
                    with os.scandir(sub.path) as inner:
                        for e in inner:
                            if e.is_file(follow_symlinks=False):
                                st = e.stat(follow_symlinks=False)
                                entries.append((st.st_mtime, st.st_size, e.path))
        except OSError:
            return
        total = sum(size for _, size, _ in entries)
        if total > self.cap:
            entries.sort()
            for _, size, path in entries:
                if total <= self.cap * 3 // 4:
                    break
                self._remove(path)
                total -= size
        with self._lock:
            self._total, self._written = total, 0

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass
