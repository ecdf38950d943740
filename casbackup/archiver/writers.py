"""Creating and writing restored files, in helper processes or in threads.

The restoring thread resolves every folder itself (dir fds, O_NOFOLLOW: see restore.py).
Files travel to a writer in batches: one message names up to a hundred or so files and
carries the fds of the folders they go in (SCM_RIGHTS). The writer creates each file
relative to its folder's fd, either with no name at all (O_TMPFILE, archiver/unnamed.py:
the common case) or under a temporary name chosen by the restoring thread with
``O_CREAT | O_EXCL | O_NOFOLLOW`` (--overwrite, or where unnamed files cannot be linked),
so it can make only new entries directly in folders the restoring thread has vetted,
never follow a link and never touch an existing file: the security argument of
restore.py is unchanged. Writers read the blobs from packs, decrypt, decompress, write
(leaving holes for zero chunks), check the whole file against the content hash recorded
at backup time, apply the file's metadata, and only then link the file to its real name
(never replacing an entry) and drop the temporary name, if it had one: a damaged pack or
a full disk leaves nothing partial under a real name. The outcomes of a batch go back in
one message. (Further names of a hard-link group are linked by the
restoring thread once the first name is in place: restore.py.)

Processes because decryption (AES-GCM in ``cryptography`` holds the GIL) and the
per-chunk Python work otherwise keep one core idle; batches because creating a file and
a message per file in the restoring process was the bottleneck. Backends other than a
local folder (and ``workers=1``) use threads in this process with the same
``write_batch``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import blake3

from casbackup import procs
from casbackup.archiver.readplan import LOCAL_GAP, BlobReader, Chain, Chunk, ChunkFeed
from casbackup.archiver.restore_meta import apply_metadata
from casbackup.archiver.unnamed import create_unnamed, link_flag, link_unnamed, not_supported_here
from casbackup.errors import CasError
from casbackup.memory import large_buffers_in_heap, tune_allocator_writer
from casbackup.repo.tree import valid_name
from casbackup.store.local import LocalBackend
from casbackup.threadsig import block_stop_signals, quiet_thread

# A run of at least this many zero bytes inside a chunk is left as a hole (one file
# system block: a shorter run could not free any space).
HOLE_MIN = 4096
# A file of at least this size gets its recorded size before its content is written
# (see write_file); smaller ones are written in one or two calls anyway.
PRESIZE_MIN = 64 * 1024
_ZERO = bytes(16 * 1024 * 1024)
_ZERO_VIEW = memoryview(_ZERO)
_ZERO_RUN = bytes(HOLE_MIN)


# NamedTuples, not dataclasses: a batch pickles a hundred of them, and a tuple pickles
# without a per-object dict.
class FileJob(NamedTuple):
    chunks: tuple[Chunk, ...]
    size: int
    content_hash: bytes
    uid: int
    gid: int
    mode: int
    mtime_ns: int
    owners: bool
    xattrs: tuple[tuple[bytes, bytes], ...] = ()  # () also when --no-xattrs
    temp: bytes = b""  # the name the file is written under until its content is verified
    replace: bool = False  # --overwrite: the verified file replaces what is at its name
    # (index in ``chunks``, chain) for each chunk not stored whole (index kind other than
    # DATA, e.g. a delta blob): rebuilt from its chain, never read by the ranged path
    chains: tuple[tuple[int, Chain], ...] = ()
    exact_acls: bool = False  # drop ACLs the new file inherited (see drop_inherited_acls)
    # Its folder was made by this restore (targetfs.open_dir): nothing but the restore's
    # own entries can be there, so ``write_file`` does not first look whether the name is
    # free (a stat per file); ``publish`` still never replaces an entry.
    fresh: bool = False


class Written(NamedTuple):
    bytes: int = 0
    error: str | None = None  # the file is wrong, incomplete or missing: nothing under its name
    warnings: tuple[str, ...] = ()  # content fine; each piece of metadata not applied
    exists: bool = False  # the name was taken in the target: nothing written, restore stops
    full: bool = False  # the target takes no more (TARGET_FULL): nothing written, restore stops


# The target file system is full, over quota or read-only: every further file would fail
# the same way, so the writers stop writing and the restore stops (restore.py).
TARGET_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
# A file of a batch left unwritten because the target took no more.
NOT_WRITTEN = Written(error="not written: the target takes no more data", full=True)


# One file of a batch: (index of its folder among the batch's folder fds, name, job).
BatchItem = tuple[int, bytes, FileJob]

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_file(
    dir_fd: int,
    name: bytes,
    job: FileJob,
    chunks: Iterable[bytes],
    on_bytes: Callable[[int], None],
) -> Written:
    """Write the file under ``job.temp`` in ``dir_fd``, verify it, apply its metadata, and
    only then give it its real ``name``. ``chunks``: the plaintexts of ``job.chunks`` in
    order (readplan.ChunkFeed.file), iterated only once the temporary file exists; reading
    one may raise CasError, which fails this file only.

    Whatever fails (a damaged pack, a full disk, a hash mismatch, the name taken meanwhile),
    the temporary file is removed and nothing is left under ``name``: a restored name
    always holds the content recorded at backup time. Where the target and this process
    allow it (``link_flag``) and ``job.replace`` is off, the file has no temporary
    name at all: it is created unnamed and linked to ``name`` once verified.
    """
    if not valid_name(name):
        return Written(error="invalid file name")
    if not job.replace and not job.fresh:
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            return Written(error="exists in the target", exists=True)  # before any work
        except FileNotFoundError:
            pass
        except OSError as exc:
            return Written(error=f"cannot create: {exc.strerror}")
    # Without --overwrite, an unnamed file (O_TMPFILE) where this process can link one:
    # nothing of it is visible until it is whole and verified, and a crash leaves nothing.
    flag = 0 if job.replace else link_flag(dir_fd, job.temp)
    unnamed = flag != 0
    try:
        if unnamed:
            try:
                fd = create_unnamed(dir_fd, job.mode)
            except OSError as exc:
                if not not_supported_here(exc):
                    raise
                # Another file system than the probe's at this folder's device (an
                # overlay, a FUSE layer): a temporary name here.
                unnamed = False
                fd = create_file(dir_fd, job.temp)
        else:
            fd = create_file(dir_fd, job.temp)
    except FileExistsError:
        return Written(error="a temporary file of this restore exists already")
    except OSError as exc:
        return Written(error=f"cannot create: {exc.strerror}", full=exc.errno in TARGET_FULL)
    published = False
    try:
        hasher = blake3.blake3()
        offset = 0
        sparse = False
        presized = job.size >= PRESIZE_MIN
        if presized:
            # Its final size first, so that no write past a hole extends the file: XFS gives
            # an extending write blocks beyond the end in advance, and a later write beyond
            # those keeps them inside the file, allocated (a sparse 256 MiB image with 8 MiB
            # of data at its start came back 8.3 MB bigger on XFS; 20 kB with this).
            os.ftruncate(fd, job.size)
        for data in chunks:
            hasher.update(data)
            extents = data_extents(data)
            if extents is None:
                _pwrite_all(fd, data, offset)
            else:
                # Runs of zeros are left as holes: the file is new, so what is not written
                # reads as zeros, and a sparse source comes back no bigger on disk.
                sparse = True
                view = memoryview(data)
                for start, end in extents:
                    _pwrite_all(fd, view[start:end], offset + start)
            offset += len(data)
            on_bytes(len(data))
        if offset != job.size or (sparse and not presized):
            os.ftruncate(fd, offset)
        if job.content_hash and hasher.digest() != job.content_hash:
            return Written(
                offset, "restored content does not match the hash recorded at backup time"
            )
        # What the new file already has (owner, mode) is not set again (apply_metadata).
        problems = apply_metadata(fd, job.uid, job.gid, job.mode, job.mtime_ns, owners=job.owners,
                                  xattrs=job.xattrs, exact_acls=job.exact_acls,
                                  have=os.fstat(fd))  # fmt: skip
        if unnamed:
            published = link_unnamed(fd, dir_fd, name, flag)
        else:
            published = publish(dir_fd, job.temp, name, replace=job.replace)
        if not published:
            return Written(error="exists in the target", exists=True)
        return Written(offset, warnings=tuple(problems))
    except CasError as exc:
        return Written(error=str(exc))
    except OSError as exc:
        return Written(error=exc.strerror or str(exc), full=exc.errno in TARGET_FULL)
    finally:
        os.close(fd)
        if not published and not unnamed:
            discard(dir_fd, job.temp)


def data_extents(data: bytes) -> list[tuple[int, int]] | None:
    """The parts of ``data`` to write when its runs of ``HOLE_MIN`` or more zero bytes
    are left as holes: ``(start, end)`` byte ranges in order, ``[]`` for all zeros, None
    when ``data`` has no such run (write it whole: the common case, one ``find``).

    Restore makes holes by content, not by the source's layout (the repository does not
    record where the source's holes were, as restic and borg do not): a source that held
    allocated zeros comes back sparse, which reads the same.
    """
    n = len(data)
    first = data.find(_ZERO_RUN) if n >= HOLE_MIN else -1
    if first < 0:
        return None
    extents: list[tuple[int, int]] = []
    pos = 0
    while first >= 0:
        end = _zero_run_end(data, first + HOLE_MIN, n)
        if first > pos:
            extents.append((pos, first))
        pos = end
        first = data.find(_ZERO_RUN, end) if end < n else -1
    if pos < n:
        extents.append((pos, n))
    return extents


def _zero_run_end(data: bytes, pos: int, n: int) -> int:
    """The end of the run of zero bytes that reaches ``pos`` (the first non-zero byte at
    or after ``pos``, or ``n``): whole spans compared at once (``startswith`` is a
    memcmp), doubling while they match and halving once they do not, so a run of any
    length costs a few dozen comparisons."""
    step = HOLE_MIN
    while pos < n and step:
        k = min(step, n - pos)
        if data.startswith(_ZERO_VIEW[:k], pos):
            pos += k
            if k == step and step < len(_ZERO):
                step *= 2
        else:
            step = k // 2
    return pos


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    """pwrite may write less than asked (a signal, a nearly full disk): finish or raise."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view, offset = view[n:], offset + n


def publish(dir_fd: int, temp: bytes, name: bytes, *, replace: bool = False) -> bool:
    """Give the verified file ``temp`` its real ``name`` in the same folder; False when
    ``name`` is taken and ``replace`` is off (the caller removes ``temp``).

    With ``replace`` (--overwrite) a rename: it swaps the directory entry itself, so the
    old file stays whole until the new one is verified, and a link at ``name`` is
    replaced, never written through (a folder there makes rename fail). Without it,
    ``renameat2(RENAME_NOREPLACE)``, else a hard link then an unlink of the temporary
    name, because a plain rename would silently replace an entry that appeared meanwhile.
    File systems with neither get a rename after a check: not atomic against a racing
    creator, still never through a link.
    """
    if replace:
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return True
    done = _rename_noreplace(dir_fd, temp, name)
    if done is not None:
        return done
    try:
        os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK, errno.ENOSYS):
            raise
        try:
            os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            return False
        except FileNotFoundError:
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return True
    os.unlink(temp, dir_fd=dir_fd)
    return True


# renameat2(RENAME_NOREPLACE) (Linux 3.15+, glibc 2.28+; os has no binding) does in one
# step what link + unlink do in two; where libc or the file system lacks it, those two.
_LIBC = ctypes.CDLL(None, use_errno=True)
_RENAMEAT2 = getattr(_LIBC, "renameat2", None)
_RENAME_NOREPLACE = 1
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


def _rename_noreplace(dir_fd: int, temp: bytes, name: bytes) -> bool | None:
    """True: renamed; False: ``name`` is taken; None: not available here (use link)."""
    if _RENAMEAT2 is None:
        return None
    if _RENAMEAT2(dir_fd, temp, dir_fd, name, _RENAME_NOREPLACE) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        return False
    if err in _UNSUPPORTED:
        return None
    raise OSError(err, os.strerror(err))


def discard(dir_fd: int, temp: bytes) -> None:
    """Remove a temporary file if it is there (cleanup after a failure)."""
    try:
        os.unlink(temp, dir_fd=dir_fd)
    except OSError:
        pass


def write_batch(
    dir_fds: Sequence[int],
    items: Sequence[BatchItem],
    reader: BlobReader,
    on_bytes: Callable[[int], None],
    halted: Callable[[], bool] = lambda: False,
) -> list[Written]:
    """Write each file (see ``write_file``); one outcome per item. Never closes ``dir_fds``.

    The batch's chunks are read per pack, a window at a time (readplan.ChunkFeed). Once
    the target takes no more (a file came back ``full``) or ``halted()`` says the restore
    is stopping, the remaining files are not even created: NOT_WRITTEN.
    """
    feed = ChunkFeed(reader, [job for _, _, job in items])
    results: list[Written] = []
    full = False
    try:
        for i, (folder, name, job) in enumerate(items):
            if full or halted():
                results.append(NOT_WRITTEN)
                continue
            written = write_file(dir_fds[folder], name, job, feed.file(i), on_bytes)
            full = written.full
            results.append(written)
        return results
    finally:
        feed.close()


def create_file(dir_fd: int, name: bytes) -> int:
    """A new, empty file directly in ``dir_fd``: never an existing entry, never through a link."""
    # The tree decoder already refuses such names; a writer checks again because it is
    # the one that creates the file (and, in write_file, gives it its name).
    if not valid_name(name):
        raise OSError(errno.EINVAL, "invalid file name")
    return os.open(name, _CREATE, 0o600, dir_fd=dir_fd)


def _writer_main(
    conn: Connection, root: str, encryption_root: bytes, parent: int, inherited: list[Connection]
) -> None:
    procs.become_helper(parent)
    # Pack ranges of up to readplan.MAX_RANGE and the blobs decrypted and decompressed
    # from them: from a heap that keeps them for the next, not one fresh mmap each (a page
    # fault per 4 KiB touched). See memory.tune_allocator_writer.
    tune_allocator_writer()
    for other in inherited:
        other.close()  # the parent's ends of this and earlier writers' sockets
    # Its own fds and locks; threads read the next window's ranges while this one
    # decrypts and writes, so the disk and the CPU work side by side, and resolve delta
    # chains (a zstd decompression per link, outside the GIL) two at a time.
    ahead = ThreadPoolExecutor(2, thread_name_prefix="read-ahead", initializer=block_stop_signals)
    reader = BlobReader(LocalBackend(root), encryption_root, gap=LOCAL_GAP, pool=ahead)
    sock = _fd_socket(conn)
    full = False  # the target took no more: later batches are not written either
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                break
            batch_id, n_dirs, wire = msg
            items = [(slot, name, _job(job)) for slot, name, job in wire]  # see submit
            fds = _recv_fds(sock, n_dirs)
            try:
                if full:
                    results = [NOT_WRITTEN] * len(items)
                else:
                    # Delta chains: a buffer of a chunk's size per link, and zstd's; see
                    # memory.large_buffers_in_heap.
                    chained = any(job.chains for _, _, job in items)
                    with large_buffers_in_heap() if chained else nullcontext():
                        results = write_batch(fds, items, reader, _ignore)
                    full = any(w.full for w in results)
            finally:
                for fd in fds:
                    os.close(fd)
            conn.send((batch_id, results))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        ahead.shutdown(wait=True, cancel_futures=True)
        reader.backend.close()
        sock.close()
        conn.close()


def _job(fields: tuple[Any, ...]) -> FileJob:
    """A FileJob from its fields as ``WriterPool.submit`` sends them (all of them, in order)."""
    if len(fields) != len(FileJob._fields):
        raise ValueError("a restore job with the wrong number of fields")
    return _new_tuple(FileJob, fields)


_new_tuple = tuple.__new__


def _recv_fds(sock: socket.socket, count: int) -> list[int]:
    _, fds, flags, _ = socket.recv_fds(sock, 1, count)
    if len(fds) != count or flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise EOFError
    return fds


def _fd_socket(conn: Connection) -> socket.socket:
    """A socket object on a Connection's Unix socket, made once, to pass fds (SCM_RIGHTS)."""
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(conn.fileno()))


def _ignore(_n: int) -> None:
    pass


OnBatch = Callable[[list[Written] | None], None]  # None: the batch was lost with its writer
_DIED = "a restore writer process stopped unexpectedly"


class WriterFailed(CasError):
    """A writer process died (killed, out of memory): the restore cannot go on."""


class WriterPool:
    """Hands batches to writer processes; ``on_done`` runs on a receiver thread."""

    def __init__(self, root: str, encryption_root: bytes, workers: int) -> None:
        ctx = procs.context()
        self._conns: list[Connection] = []
        self._socks: list[socket.socket] = []
        self._send_locks: list[threading.Lock] = []
        self._procs: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._pending: dict[int, OnBatch] = {}
        self._lock = threading.Lock()
        self._next = 0
        self._load = [0] * workers  # work queued per writer: the least busy gets the next
        self._owner: dict[int, tuple[int, int]] = {}  # batch -> (writer, its load)
        self.failure: BaseException | None = None
        for _ in range(workers):
            ours, theirs = ctx.Pipe(duplex=True)  # a Unix socket pair: can carry fds
            proc = ctx.Process(
                target=_writer_main,
                args=(theirs, root, encryption_root, os.getpid(), [*self._conns, ours]),
                daemon=True,
                name="casbackup-writer",
            )
            proc.start()
            theirs.close()
            self._procs.append(proc)
            self._conns.append(ours)
            self._socks.append(_fd_socket(ours))
            self._send_locks.append(threading.Lock())
        for conn in self._conns:
            t = quiet_thread(self._receive, (conn,))
            t.start()
            self._threads.append(t)

    def submit(
        self,
        dir_fds: Sequence[int],
        items: Sequence[BatchItem],
        load: int,
        on_done: OnBatch,
    ) -> None:
        """Send a batch with copies of its folder fds; the caller keeps ``dir_fds`` open
        (and valid) until ``on_done`` has run."""
        with self._lock:
            if self.failure is not None:
                raise self.failure
            batch_id = self._next
            self._next += 1
            self._pending[batch_id] = on_done
            worker = min(range(len(self._load)), key=self._load.__getitem__)
            self._load[worker] += load
            self._owner[batch_id] = (worker, load)
        # Jobs go as plain tuples: a NamedTuple pickles through a Python-level
        # __reduce_ex__/__getnewargs__ per object, about 2 us a file on the walk's thread
        # (the restore's critical path), a tuple in C; the writer makes FileJobs again.
        wire = [(slot, name, tuple(job)) for slot, name, job in items]
        try:
            with self._send_locks[worker]:
                self._conns[worker].send((batch_id, len(dir_fds), wire))
                socket.send_fds(self._socks[worker], [b"F"], list(dir_fds))
        except OSError:
            raise self.failure or WriterFailed(_DIED) from None

    def _receive(self, conn: Connection) -> None:
        try:
            while True:
                try:
                    batch_id, results = conn.recv()
                except (EOFError, OSError):
                    if self._closing:
                        return
                    raise WriterFailed(_DIED) from None
                with self._lock:
                    on_done = self._pending.pop(batch_id)
                    worker, load = self._owner.pop(batch_id)
                    self._load[worker] -= load
                on_done(results)
        except BaseException as exc:  # noqa: BLE001 - fail every waiting batch with it
            with self._lock:
                if self.failure is None:
                    self.failure = exc
                pending, self._pending = self._pending, {}
            for on_done in pending.values():
                on_done(None)

    _closing = False

    def close(self, *, abort: bool = False) -> None:
        """Let the writers finish what they have; with ``abort`` (the restore has failed or
        was interrupted), stop them at once: the target holds a partial restore either way."""
        self._closing = True
        if abort:
            for proc in self._procs:
                proc.kill()
        for conn, lock in zip(self._conns, self._send_locks, strict=True):
            with lock:
                try:
                    conn.send(None)
                except OSError:
                    pass
        procs.reap(self._threads, self._procs)
        for sock in self._socks:
            sock.close()
        for conn in self._conns:
            conn.close()
