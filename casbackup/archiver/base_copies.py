"""Local sealed copies of each delta stream's last stored version, read as delta bases.

Why (issue 16, "backup time of a changed night <= 1.3x"): a database dump's new chunks are
stored as deltas of the parent's chunks, and loading a parent chunk meant resolving it
through its chain in the repository: reading, decrypting and decompressing the full blob
at the bottom and every delta above it, ~75 us a 100 kB chunk plus ~45 us a chain level
(bench/DUMPS.md). A backup that writes a stream also writes its chunks here, so the next
one reads each base with one ``pread`` and one AES-GCM open, whatever its chain's depth.

Layout: ``<cache root>/<repository id>/bases/<name>``, one file per stream, where
``name`` is the BLAKE3 of the stream's key (its application and path: ``stream_key``).
The file is the stream's chunks in order, each sealed on its own with the repository's
key (``Sealer.seal(COPY_KIND, chunk id, chunk)``): ``OVERHEAD`` bytes more than the chunk,
so chunk ``j`` of a stream whose chunks are ``sizes`` long starts at ``sum(sizes[:j]) + j
* OVERHEAD``, and a reader needs nothing but the parent snapshot's chunk list. Mode 0600
in 0700 folders; never plaintext on disk.

Trust: none. Each chunk read must authenticate as the chunk id the parent's tree names at
that place (the envelope binds the id; only a process holding the repository's key seals
one, and it seals the very bytes it has just hashed to that id) and be as long as the tree
says, or the caller resolves the base from the repository as before. The first chunk read
and every ``delta_bases.SPOT_CHECK``-th after it are also resolved from the repository and
compared: a repository that disagrees or cannot give the chunk back (a pack deleted or
damaged since, a blob whose stored bytes are not what its id says) ends the copy's use for
the stream, so that damage is noticed and healed (chunks stored whole) as when every base
came from the repository. What the spot checks leave out is a blob damaged after it was
written and not sampled: the same trust a chunk found in the index gets from every backup
(dedup reads nothing back either), found by ``check --read-data``. A copy of another
version of the stream (a backup that failed after writing it, a restored cache) fails to
authenticate and is given up after ``GIVE_UP`` misses in a row. The cache can be deleted
at any time.

Bound: a stream longer than ``CASBACKUP_BASE_COPY_MIB`` (default 4096; 0 turns copies
off) is not copied (its copy is removed: it would be stale), nor is one that would leave
the cache's file system with less than ``FREE_FLOOR`` of it free. Writing a copy never
fails a backup: any OSError drops the copy. A copy is written to a temporary name and
renamed over the old one once the whole stream is read, so the old copy serves as bases
while the new one is written: up to two versions of a stream's size on disk meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence

import blake3

from casbackup.crypto.envelope import OVERHEAD, Opener, Sealer
from casbackup.errors import CasError
from casbackup.repo.indexcache import CACHE_FILE_MODE, cache_bound, cache_root, private_dirs

DEFAULT_MIB = 4096
#: Sealed as this kind: not a repository kind, so a copy's envelope is never a blob.
COPY_KIND = 0x62
#: Misses in a row, with no hit yet, after which a copy is taken for another version.
GIVE_UP = 16
#: Fraction of the cache's file system a copy leaves free, and the least free bytes.
FREE_FLOOR = 0.05
FREE_MIN = 1 << 30
#: Free space is checked again after each this many bytes written.
CHECK_EVERY = 64 << 20
#: A copy no backup has written or kept for this long is removed (a stream that is gone:
#: an application removed or renamed, a database dropped), seconds.
STALE_S = 45 * 86400
#: A temporary copy of a process that is gone is removed; one this old in any case.
STALE_TEMP_S = 86400


def limit_bytes() -> int:
    """The largest stream copied, in bytes, from ``CASBACKUP_BASE_COPY_MIB`` (0: off). A
    value that is not a non-negative integer falls back to the default: it is a cache."""
    return cache_bound("CASBACKUP_BASE_COPY_MIB", DEFAULT_MIB)


def stream_key(*parts: str | bytes) -> str:
    """The copy's file name for the stream named by ``parts`` (e.g. the application and the
    dump's path): 40 hex digits of their BLAKE3, so any name makes a safe file name."""
    hasher = blake3.blake3()
    for part in parts:
        data = part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part
        hasher.update(len(data).to_bytes(8, "big") + data)
    return hasher.hexdigest()[:40]


def copies_dir(repo_id: str) -> str:
    """The folder holding one repository's copies."""
    return os.path.join(cache_root(), repo_id, "bases")


class BaseCopy:
    """A stream's copy, read as the parent version whose chunk ids are ``ids`` and lengths
    ``sizes`` (bytes). ``get(j)`` returns chunk ``j``'s plaintext, verified, or None. No
    method raises for cache trouble; ``hits`` and ``misses`` count answers."""

    def __init__(
        self,
        fd: int,
        opener: Opener,
        ids: Sequence[bytes],
        sizes: Sequence[int],
    ) -> None:
        self._fd: int | None = fd
        self._opener = opener
        self._ids = ids
        self._sizes = sizes
        self._starts = [0]
        for size in sizes:
            self._starts.append(self._starts[-1] + size + OVERHEAD)
        self.hits = 0
        self.misses = 0

    @classmethod
    def open(
        cls,
        repo_id: str,
        key: str,
        opener: Opener,
        ids: Sequence[bytes],
        sizes: Sequence[int],
    ) -> BaseCopy | None:
        """The copy of stream ``key`` of repository ``repo_id``, or None (none, or copies
        are off)."""
        if limit_bytes() <= 0 or not ids:
            return None
        try:
            fd = os.open(os.path.join(copies_dir(repo_id), key), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        return cls(fd, opener, ids, sizes)

    def get(self, j: int) -> bytes | None:
        """Chunk ``j`` of the parent version, authenticated as its id, or None (no copy,
        another version, damaged)."""
        if self._fd is None or not 0 <= j < len(self._ids):
            return None
        try:
            sealed = os.pread(self._fd, self._sizes[j] + OVERHEAD, self._starts[j])
            plain = self._opener.open(COPY_KIND, self._ids[j], sealed)
            if len(plain) != self._sizes[j]:
                raise CasError("the copy does not match the chunk")
        except (OSError, CasError):
            self.misses += 1
            if self.hits == 0 and self.misses >= GIVE_UP:
                self.close()  # a copy of another version: stop paying for opens
            return None
        self.hits += 1
        return plain

    def sealed_ok(self, j: int) -> bool:
        """Whether chunk ``j``'s envelope in the copy opens as that chunk (``get`` without
        counting: enough to tell a copy of another version)."""
        if self._fd is None or not 0 <= j < len(self._ids):
            return False
        try:
            sealed = os.pread(self._fd, self._sizes[j] + OVERHEAD, self._starts[j])
            return len(self._opener.open(COPY_KIND, self._ids[j], sealed)) == self._sizes[j]
        except (OSError, CasError):
            return False

    @property
    def chunks(self) -> int:
        """How many chunks the parent's version has."""
        return len(self._ids)

    def matches(self, j: int, blob_id: bytes, size: int) -> bool:
        """Whether the parent's chunk ``j`` is ``blob_id``, ``size`` bytes long."""
        return j < len(self._ids) and self._ids[j] == blob_id and self._sizes[j] == size

    def copy_prefix(self, count: int, fd: int) -> None:
        """Copy the copy's first ``count`` chunks, sealed as they are, to ``fd`` (in the
        kernel). Raises OSError (also when the copy is closed or shorter)."""
        if self._fd is None:
            raise OSError("the old copy is closed")
        offset, end = 0, self._starts[count]
        while offset < end:
            done = os.copy_file_range(self._fd, fd, end - offset, offset)
            if done <= 0:
                raise OSError("the old copy is shorter than its chunks")
            offset += done

    def close(self) -> None:
        """Release the file (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class CopyWriter:
    """Writes the copy of one stream as its chunks are stored. ``add`` each chunk in order,
    then ``commit`` (the copy replaces the old one) or ``discard``. No method raises: any
    trouble drops the copy, and the old one with it (stale after this backup).

    With ``old`` (the copy of the parent's version, which the same stream's bases are read
    from), the chunks the new version starts with that the old one starts with too are not
    written again: while they match, nothing is written; at the first difference the old
    copy's bytes for them are copied in the kernel (``os.copy_file_range``) and writing
    goes on from there; a version identical to the old one keeps the old copy as it is.
    Either way the old copy's first and last reused chunks must open as theirs, or the
    copy is dropped (a copy of another version is not carried forward)."""

    def __init__(
        self, folder: str, key: str, sealer: Sealer, limit: int, old: BaseCopy | None
    ) -> None:
        self._folder = folder
        self._final = os.path.join(folder, key)
        self._temp = f"{self._final}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
        self._sealer = sealer
        self._limit = limit
        self._old = old
        self._same = 0  # leading chunks equal to the old copy's, not written yet
        self._written = 0
        self._next_check = 0
        self._fd: int | None = None
        self._dropped = False
        if old is None:
            self._open()

    @classmethod
    def start(
        cls, repo_id: str, key: str, sealer: Sealer, old: BaseCopy | None = None
    ) -> CopyWriter | None:
        """A writer for stream ``key``, or None when copies are off (the old copy is then
        removed: the stream is about to change). ``old``: the stream's current copy."""
        limit = limit_bytes()
        folder = copies_dir(repo_id)
        sweep(folder)
        if limit <= 0:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, key))
            return None
        return cls(folder, key, sealer, limit, old)

    def add(self, blob_id: bytes, chunk: bytes | memoryview) -> None:
        """Append chunk ``blob_id`` (its plaintext ``chunk``, whose id the caller computed)."""
        if self._dropped:
            return
        self._written += len(chunk) + OVERHEAD
        if self._fd is None:
            if self._old is not None and self._old.matches(self._same, blob_id, len(chunk)):
                self._same += 1
                return
            self._reuse()
            if self._fd is None:
                return
        try:
            if self._written > self._limit or (
                self._written >= self._next_check and not self._room()
            ):
                raise OSError("over the copy's bound")
            sealed = self._sealer.seal(COPY_KIND, blob_id, chunk)
            view = memoryview(sealed)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            self._drop()

    def _open(self) -> None:
        try:
            private_dirs(self._folder)
            self._fd = os.open(
                self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, CACHE_FILE_MODE
            )
        except OSError:
            self._drop()

    def _reuse(self) -> None:
        """Start the new copy with the old one's first ``_same`` chunks (checked first)."""
        old, same = self._old, self._same
        if same and (old is None or not (old.sealed_ok(0) and old.sealed_ok(same - 1))):
            self._drop()
            return
        self._open()
        if not same or self._fd is None:
            return
        assert old is not None
        try:
            if self._written > self._limit or not self._room():
                raise OSError("over the copy's bound")
            old.copy_prefix(same, self._fd)
        except OSError:
            self._drop()

    def _room(self) -> bool:
        """Whether the file system keeps its floor free; checked every CHECK_EVERY bytes."""
        self._next_check = self._written + CHECK_EVERY
        st = os.statvfs(self._folder)
        free = st.f_bavail * st.f_frsize
        return free - CHECK_EVERY > max(FREE_MIN, FREE_FLOOR * st.f_blocks * st.f_frsize)

    def commit(self) -> bool:
        """Make the copy the stream's (atomically replacing the old); True when it was."""
        if self._dropped:
            return False
        if self._fd is None:  # every chunk was the old copy's, in order
            old = self._old
            assert old is not None
            if self._same == old.chunks:
                if self._same and not (old.sealed_ok(0) and old.sealed_ok(self._same - 1)):
                    self._drop()
                    return False
                with contextlib.suppress(OSError):
                    os.utime(self._final)  # kept: not stale (``sweep``)
                return True
            self._reuse()  # a shorter version: the old copy's first chunks
            if self._fd is None:
                return False
        try:
            os.close(self._fd)
            self._fd = None
            os.replace(self._temp, self._final)
        except OSError:
            self._drop()
            return False
        return True

    def discard(self) -> None:
        """Drop the partial copy, keeping the old one (the stream was not stored)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(OSError):
            os.unlink(self._temp)
        self._dropped = True

    def _drop(self) -> None:
        """Give up: no copy, and none of the old version either (stale after this)."""
        self.discard()
        with contextlib.suppress(OSError):
            os.unlink(self._final)


_swept: set[str] = set()


def sweep(folder: str, now: float | None = None) -> None:
    """Remove, once per process and folder, the copies no backup has written or kept for
    ``STALE_S`` and the temporary copies of processes that are gone (or older than
    ``STALE_TEMP_S``: a process id can be reused). Never raises."""
    if folder in _swept:
        return
    _swept.add(folder)
    now = time.time() if now is None else now
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            name = entry.name
            if ".tmp-" in name:
                pid = name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
                if age > STALE_TEMP_S or not _alive(int(pid)):
                    os.unlink(entry.path)
            elif age > STALE_S:
                os.unlink(entry.path)
        except (OSError, ValueError):
            continue


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (another user's counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True
