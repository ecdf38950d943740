"""Local sealed copies of each delta stream's last stored version, read as delta bases.

Why (issue 16, "backup time of a changed night <= 1.3x"): a database dump's new chunks are
stored as deltas of the parent's chunks, and loading a parent chunk meant resolving it
through its chain in the repository: reading, decrypting and decompressing the full blob
at the bottom and every delta above it, ~75 us a 100 kB chunk plus ~45 us a chain level
(bench/DUMPS.md). A backup that stores part of a stream again also writes the chunks it
stored here (``CopyWriter``), so the next one reads each base with one ``pread`` and one
AES-GCM open (``BaseCopy``), plus reading and authenticating the chain's envelopes
without decompressing them.

Layout: ``<cache root>/<repository id>/bases-2/<name>``, one file per stream, where
``name`` is the BLAKE3 of the stream's key (its application and path: ``stream_key``).
Each chunk is sealed on its own with the repository's key (``Sealer.seal(COPY_KIND,
chunk id, chunk)``, ``OVERHEAD`` bytes more than the chunk) and lies where its offset in
the stream puts it: the chunk at stream byte ``s`` at ``copy_offset(s) = s + OVERHEAD *
(s // SLOT)``, so chunks of at least ``SLOT`` bytes never overlap, a reader needs nothing
but the parent snapshot's chunk list, and a chunk whose boundary moved while the bytes
around it kept their place (a database page rewritten in place) is written where it was,
not in a new file. The copy is at most 1% larger than the stream (``OVERHEAD / SLOT``).
Bytes no backup wrote read as zeros (a hole: absent). Mode 0600 in 0700 folders; never
plaintext on disk. Copies of the earlier layout (``bases/``, chunk after chunk) are
removed.

Trust: none. Each chunk read must authenticate as the chunk id the parent's tree names at
that place (the envelope binds the id; only a process holding the repository's key seals
one, and it seals the very bytes it has just hashed to that id) and be as long as the tree
says, or the caller resolves the base from the repository as before. That the repository
can still give the chunk back is checked for every base: each link of its chain there is
read and must authenticate (``DeltaWriting._chain_intact``: no decompression, which is
what a base from the repository costs); a link damaged or missing since it was written
ends the copy's use for the stream (a warning), and that chunk and every later one take
their bases from the repository, so the damage is healed (chunks stored whole) as when
every base came from there. The first chunk read and every ``delta_bases.SPOT_CHECK``-th
after it are also resolved whole and compared with the copy. A copy of another version of
the stream (a backup that failed after writing it, a restored cache) fails to
authenticate and is given up after ``GIVE_UP`` misses in a row. The cache can be deleted
at any time.

Bound: a stream longer than ``CASBACKUP_BASE_COPY_MIB`` (default 4096; 0 turns copies
off) is not copied (its copy is removed: it would be stale), nor are chunks that would
leave the cache's file system with less than ``FREE_FLOOR`` of it (or ``FREE_MIN``)
free. A copy takes about its stream's size; a new file is written beside the old one
only when the old one cannot be updated in place (none yet, another version, or the
stream's bytes moved too far: ``PENDING_MAX``), then both exist until the backup's end. Writing
never fails a backup: any OSError drops the copy. Copies no backup touched for
``STALE_S`` and temporaries of writers that are gone are swept (``sweep``).
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections import deque
from collections.abc import Sequence

import blake3

from casbackup.crypto.envelope import OVERHEAD, Opener, Sealer
from casbackup.errors import CasError
from casbackup.liveness import pid_exists
from casbackup.repo.indexcache import (
    CACHE_FILE_MODE,
    cache_bound,
    cache_root,
    owned_dirs,
    private_dirs,
)

DEFAULT_MIB = 4096
#: Sealed as this kind: not a repository kind, so a copy's envelope is never a blob.
COPY_KIND = 0x62
#: Stream bytes per copy slot: the chunk at stream offset ``s`` lies at ``copy_offset(s)``.
SLOT = 4096
#: Sealed chunks an in-place update may hold back, bytes, while the parent chunks their
#: places overlap may still be read as bases; past it the update goes on in a new file.
PENDING_MAX = 32 << 20
LEGACY_DIR = "bases"
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


def _open_copy(path: str, flags: int) -> int:
    """Open the copy at ``path`` with ``flags``, only if it is a regular file with no other
    name: a symlink or a hard link put in its place must not have a file of the user's read
    or written (truncated, extended) as a copy, nor a FIFO hang a backup. Raises OSError."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise OSError(f"not a copy of casbackup's: {path}")
    except OSError:
        os.close(fd)
        raise
    return fd


def copies_dir(repo_id: str) -> str:
    """The folder holding one repository's copies."""
    return os.path.join(cache_root(), repo_id, "bases-2")


def copy_length(sizes: Sequence[int]) -> int:
    """The length of a whole copy of a stream whose chunks are ``sizes`` bytes long."""
    if not sizes:
        return 0
    return copy_offset(sum(sizes) - sizes[-1]) + sizes[-1] + OVERHEAD


def copy_offset(position: int) -> int:
    """Where the chunk that starts at byte ``position`` of the stream lies in its copy
    (bytes). Chunks of at least ``SLOT`` bytes get disjoint places: the next chunk's
    place is at least ``OVERHEAD`` further on than this one's end."""
    return position + OVERHEAD * (position // SLOT)


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
        self._starts: list[int] = []  # each chunk's offset in the stream
        self._at: dict[int, int] = {}  # stream offset -> chunk index
        position = 0
        for j, size in enumerate(sizes):
            self._starts.append(position)
            self._at[position] = j
            position += size
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
        folder = copies_dir(repo_id)
        if not owned_dirs(folder):
            return None  # another user's folder (a shared cache), or a link: not ours
        try:
            fd = _open_copy(os.path.join(folder, key), os.O_RDONLY)
        except OSError:
            return None
        return cls(fd, opener, ids, sizes)

    def get(self, j: int) -> bytes | None:
        """Chunk ``j`` of the parent version, authenticated as its id, or None (no copy,
        another version, damaged)."""
        if self._fd is None or not 0 <= j < len(self._ids):
            return None
        try:
            sealed = os.pread(self._fd, self._sizes[j] + OVERHEAD, copy_offset(self._starts[j]))
            if not sealed or sealed[0] == 0:
                return None  # a hole: never written (an envelope starts with its version, 1)
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

    @property
    def fd(self) -> int | None:
        """The open copy (None once closed)."""
        return self._fd

    def holds(self, position: int, length: int, blob_id: bytes) -> bool:
        """Whether the parent version has chunk ``blob_id``, ``length`` bytes, at stream
        offset ``position`` (then the copy has it in the place this version's would take)."""
        j = self._at.get(position)
        return j is not None and self._sizes[j] == length and self._ids[j] == blob_id

    def close(self) -> None:
        """Release the file (idempotent, never raises)."""
        _close(self)


class CopyWriter:
    """Brings the copy of one stream up to the version being stored: ``add`` each chunk in
    order, then ``commit``, or ``discard`` when the stream was not stored. No method
    raises: any trouble drops the copy (``_drop``), and a backup never fails for it.

    With ``old`` (the copy of the parent's version, which this stream's bases are read
    from) the copy is updated in place: a chunk the parent had at the same stream offset
    (same id, same length) is left as it is, every other chunk is sealed and written at
    its place. A write is held back (at most ``PENDING_MAX`` bytes) until its place lies
    below every parent chunk still to be read as a base (``safe`` in ``add``: the lowest
    stream offset of the parent's that the next chunk's base may come from), so an update
    does not overwrite a base before it is read. Writing in place costs little (sealing,
    and a copy into pages the file already has); a new file costs a page allocated for
    every 4 kB, about as much as resolving a base through a short chain in the repository,
    so a new file holds only the chunks this backup stored (the others are holes, read
    from the repository if they are ever a base). A new file is written without ``old``
    (the stream's first copy: it costs no more than what was stored), when ``old`` was
    given up (another version, ``BaseCopy.get``) or refuted, and when the stream's bytes
    moved too far for an update in place (a large insertion): what the old file holds so
    far is then copied in the kernel (``os.copy_file_range``). It replaces the old one at
    ``commit``. A chunk only half updated (a crash, two backups at once) fails to
    authenticate: a miss, and the next backup that stores that chunk writes it again."""

    def __init__(
        self, folder: str, key: str, sealer: Sealer, limit: int, old: BaseCopy | None
    ) -> None:
        self._folder = folder
        self._final = os.path.join(folder, key)
        self._temp = f"{self._final}.tmp-{os.getpid()}-{os.urandom(4).hex()}"
        self._sealer = sealer
        self._limit = limit
        self._old = old
        self._position = 0  # the next chunk's offset in the stream
        self._end = 0  # the copy's length so far: where the last chunk's place ends
        self._pending: deque[tuple[int, bytes]] = deque()  # (place, sealed chunk), in order
        self._pending_bytes = 0
        self._fd: int | None = None
        self._in_place = False  # _fd is the old copy, updated in place
        self._next_check = 0
        self._written = 0
        self._dropped = False
        if old is not None and old.fd is not None:
            try:
                fd = _open_copy(self._final, os.O_RDWR)
            except OSError:
                return
            if os.fstat(fd).st_ino == os.fstat(old.fd).st_ino:
                self._fd, self._in_place = fd, True
            else:  # replaced since it was opened (another backup): start a new file
                os.close(fd)

    @classmethod
    def start(
        cls, repo_id: str, key: str, sealer: Sealer, old: BaseCopy | None = None
    ) -> CopyWriter | None:
        """A writer for stream ``key``, or None when copies are off (the old copy is then
        removed: the stream is about to change). ``old``: the stream's current copy."""
        limit = limit_bytes()
        folder = copies_dir(repo_id)
        sweep(folder)
        sweep(os.path.join(os.path.dirname(folder), LEGACY_DIR), legacy=True)
        if limit <= 0:
            _remove(folder, key)
            return None
        return cls(folder, key, sealer, limit, old)

    def add(self, blob_id: bytes, chunk: bytes | memoryview, new: bool, safe: int = 0) -> None:
        """The next chunk of the stream: ``blob_id`` (which the caller computed from
        ``chunk``, its plaintext); ``new``: whether this backup stored it (without an old
        copy only those are written: a stream's first copy is made by the first backup
        that stores part of it, and costs no more than what it stored). ``safe``: the
        parent version's stream offset below which no base will be read from the old copy
        again (``BaseFinder.low_water``)."""
        position = self._position
        self._position += len(chunk)
        place, room = copy_offset(position), self._end
        self._end = place + len(chunk) + OVERHEAD
        if self._dropped:
            return
        try:
            if self._position > self._limit:
                raise OSError("over the copy's bound")
            if self._in_place and self._old is not None:
                if self._old.fd is None:  # given up or refuted: no longer the parent's
                    self._switch(place)
                elif self._old.holds(position, len(chunk), blob_id):
                    self._flush(copy_offset(safe))
                    return
            if place < room:
                return  # the chunk before was shorter than SLOT: no place (a miss later)
            if not self._in_place and not new:
                return  # a hole: the chunk is read from the repository if it is ever a base
            if self._fd is None:
                self._switch(0)
            sealed = self._sealer.seal(COPY_KIND, blob_id, chunk)
            if not self._in_place:
                self._write(place, sealed)
                return
            self._pending.append((place, sealed))
            self._pending_bytes += len(sealed)
            self._flush(copy_offset(safe))
            if self._pending_bytes > PENDING_MAX:
                self._switch(self._pending[0][0])
        except OSError:
            self._drop()

    def _flush(self, below: int) -> None:
        """Write the held-back chunks whose places end at or below ``below``."""
        while self._pending and self._pending[0][0] + len(self._pending[0][1]) <= below:
            place, sealed = self._pending.popleft()
            self._pending_bytes -= len(sealed)
            self._write(place, sealed)

    def _write(self, place: int, sealed: bytes) -> None:
        assert self._fd is not None
        self._written += len(sealed)
        if self._written >= self._next_check and not self._room():
            raise OSError("the cache's file system is nearly full")
        view = memoryview(sealed)
        while view:
            done = os.pwrite(self._fd, view, place)
            view, place = view[done:], place + done

    def _switch(self, keep: int) -> None:
        """Go on in a new file holding the first ``keep`` bytes of the current one and the
        chunks held back."""
        private_dirs(self._folder)
        fd = os.open(
            self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, CACHE_FILE_MODE
        )
        source, self._fd, self._in_place = self._fd, fd, False
        if source is not None:
            try:
                done = 0
                while done < keep:
                    step = os.copy_file_range(source, fd, keep - done, done, done)
                    if step <= 0:
                        break  # the old copy is shorter: the rest is a hole
                    done += step
            finally:
                os.close(source)
        self._flush(1 << 62)

    def _room(self) -> bool:
        """Whether the file system keeps its floor free; checked every CHECK_EVERY bytes."""
        self._next_check = self._written + CHECK_EVERY
        st = os.statvfs(self._folder)
        free = st.f_bavail * st.f_frsize
        return free - CHECK_EVERY > max(FREE_MIN, FREE_FLOOR * st.f_blocks * st.f_frsize)

    def commit(self) -> bool:
        """Make the copy the stream's (a new file atomically replaces the old); True when
        there is one (not when nothing was ever written: an unchanged stream without one)."""
        if self._dropped or self._fd is None:
            return False
        try:
            self._flush(1 << 62)  # the stream is read: no base is read any more
            os.ftruncate(self._fd, self._end)  # the new version's length (holes kept)
            if self._in_place:
                os.utime(self._fd)  # kept: not stale (``sweep``)
            # Forgotten before it is closed: a close that fails (NFS tells a write error
            # there) has closed it all the same, and a second close could close a file
            # another thread has just opened under the same number.
            fd, self._fd = self._fd, None
            os.close(fd)
            if not self._in_place:
                os.replace(self._temp, self._final)
        except OSError:
            self._drop()
            return False
        return True

    def discard(self) -> None:
        """The stream was not stored: stop. A new file goes; updates made in place stay
        (each chunk of the copy stands alone: those of another version are misses)."""
        self._pending.clear()
        _close(self)
        with contextlib.suppress(OSError):
            os.unlink(self._temp)
        self._dropped = True

    def _drop(self) -> None:
        """Give up: no copy, and none of the old version either (stale after this)."""
        self.discard()
        _remove(self._folder, os.path.basename(self._final))


def _close(owner: BaseCopy | CopyWriter) -> None:
    """Close ``owner._fd`` once, forgotten first (see ``CopyWriter.commit``); errors are
    ignored: what it held is given up."""
    fd, owner._fd = owner._fd, None
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def _remove(folder: str, name: str) -> None:
    """Remove the copy ``name`` of ``folder`` when the folder is ours (``owned_dirs``)."""
    if owned_dirs(folder):
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))


_swept: set[str] = set()


def sweep(folder: str, now: float | None = None, *, legacy: bool = False) -> None:
    """Remove, once per process and folder, the copies no backup has written or kept for
    ``STALE_S`` and the temporary copies of processes that are gone (or older than
    ``STALE_TEMP_S``: a process id can be reused); with ``legacy`` (a folder of an earlier
    layout) every file and then the folder. Only in a folder that is ours from the cache
    root down and no link (``owned_dirs``), through its descriptor: a link another user
    put in a shared cache's folder must not have the files it names deleted. Never raises."""
    if folder in _swept:
        return
    _swept.add(folder)
    now = time.time() if now is None else now
    if not owned_dirs(folder):
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if os.fstat(fd).st_uid != os.geteuid():
            return  # swapped since it was checked
        with os.scandir(fd) as listing:
            entries = list(listing)
        for entry in entries:
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
                name = entry.name
                if legacy:
                    os.unlink(name, dir_fd=fd)
                elif ".tmp-" in name:
                    pid = name.rsplit(".tmp-", 1)[1].split("-", 1)[0]
                    if age > STALE_TEMP_S or (int(pid) != os.getpid() and not pid_exists(int(pid))):
                        os.unlink(name, dir_fd=fd)
                elif age > STALE_S:
                    os.unlink(name, dir_fd=fd)
            except (OSError, ValueError):
                continue
    except OSError:
        return
    finally:
        os.close(fd)
    if legacy:
        with contextlib.suppress(OSError):
            os.rmdir(folder)
