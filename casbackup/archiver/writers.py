"""Creating and writing restored files, in helper processes or in threads.

The restoring thread resolves every folder itself (dir fds, O_NOFOLLOW: see restore.py).
Files travel to a writer in batches: one message names up to a hundred or so files and
carries the fds of the folders they go in (SCM_RIGHTS). The writer creates each file
by name relative to its folder's fd with ``O_CREAT | O_EXCL | O_NOFOLLOW``, so it can
make only new entries directly in folders the restoring thread has vetted, never follow
a link and never touch an existing file: the security argument of restore.py is
unchanged. (The first name of a hard-link group is created by the restoring thread and
travels as an open fd, so that later names can be linked to it at once.) Writers read
the blobs from packs, decrypt, decompress, write (leaving holes for zero chunks), check
the whole file against the content hash recorded at backup time, and apply the file's
metadata; the outcomes of a batch go back in one message.

Processes because decryption (AES-GCM in ``cryptography`` holds the GIL) and the
per-chunk Python work otherwise keep one core idle; batches because creating a file and
a message per file in the restoring process was the bottleneck. Backends other than a
local folder (and ``workers=1``) use threads in this process with the same
``write_batch``.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import blake3

from casbackup import procs
from casbackup.crypto.envelope import Opener
from casbackup.errors import CasError
from casbackup.repo.ids import Kind
from casbackup.repo.pack import open_blob, pack_name
from casbackup.store.local import LocalBackend

_ZERO = bytes(16 * 1024 * 1024)

Chunk = tuple[bytes, str, int, int, int]  # blob id, pack id, offset, stored length, raw length


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


class Written(NamedTuple):
    bytes: int = 0
    error: str | None = None  # the file is wrong, incomplete or missing
    warning: str | None = None  # content fine, metadata not fully applied
    exists: bool = False  # the name was taken in the target: nothing written, restore stops


# One file of a batch: (index of its folder among the batch's folder fds, name, job).
# Name None: the restoring thread created the file and it comes as the batch's next file fd.
BatchItem = tuple[int, bytes | None, FileJob]

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class BlobReader:
    """Reads located blobs from packs; one per thread or process."""

    def __init__(self, backend: Any, encryption_root: bytes) -> None:
        self.backend = backend
        self.opener = Opener(encryption_root)

    def read(self, chunk: Chunk) -> bytes:
        blob_id, pack, offset, stored_len, raw_len = chunk
        envelope = self.backend.get(pack_name(pack), offset, stored_len)
        return open_blob(self.opener, Kind.DATA, blob_id, pack, envelope, raw_len)


def write_file(
    fd: int, job: FileJob, reader: BlobReader, on_bytes: Callable[[int], None]
) -> Written:
    """Fill ``fd`` with the file's content, verify it, apply metadata, close ``fd``."""
    try:
        hasher = blake3.blake3()
        offset = 0
        sparse = False
        for chunk in job.chunks:
            data = reader.read(chunk)
            hasher.update(data)
            if len(data) >= 4096 and memoryview(_ZERO)[: len(data)] == data:
                sparse = True  # leave a hole: zero chunks cost no disk space
            else:
                os.pwrite(fd, data, offset)
            offset += len(data)
            on_bytes(len(data))
        if sparse or offset != job.size:
            os.ftruncate(fd, offset)
        if job.content_hash and hasher.digest() != job.content_hash:
            return Written(
                offset, "restored content does not match the hash recorded at backup time"
            )
        try:
            apply_metadata(fd, job.uid, job.gid, job.mode, job.mtime_ns, owners=job.owners)
        except OSError as exc:
            return Written(offset, warning=f"metadata not fully restored: {exc.strerror}")
        return Written(offset)
    except CasError as exc:
        return Written(error=str(exc))
    except OSError as exc:
        return Written(error=exc.strerror or str(exc))
    finally:
        os.close(fd)


def write_batch(
    dir_fds: Sequence[int],
    items: Sequence[BatchItem],
    file_fds: Sequence[int],
    reader: BlobReader,
    on_bytes: Callable[[int], None],
) -> list[Written]:
    """Create and fill each file; one outcome per item. Closes ``file_fds``, never ``dir_fds``."""
    given = iter(file_fds)
    results: list[Written] = []
    try:
        for folder, name, job in items:
            if name is None:
                fd = next(given)
            else:
                try:
                    fd = create_file(dir_fds[folder], name)
                except FileExistsError:
                    results.append(Written(error="exists in the target", exists=True))
                    continue
                except OSError as exc:
                    results.append(Written(error=f"cannot create: {exc.strerror}"))
                    continue
            results.append(write_file(fd, job, reader, on_bytes))
    finally:
        for fd in given:  # only after a fault above: the files not reached
            os.close(fd)
    return results


def create_file(dir_fd: int, name: bytes) -> int:
    """A new, empty file directly in ``dir_fd``: never an existing entry, never through a link."""
    # The tree decoder already refuses such names; a writer checks again because it is
    # the one that creates the file.
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise OSError(errno.EINVAL, "invalid file name")
    return os.open(name, _CREATE, 0o600, dir_fd=dir_fd)


def apply_metadata(fd: int, uid: int, gid: int, mode: int, mtime_ns: int, *, owners: bool) -> None:
    """Owner (when asked), mode and times of an open file or folder; raises OSError."""
    if owners:
        os.fchown(fd, uid, gid)
    os.fchmod(fd, mode)  # after chown, which clears setuid/setgid
    os.utime(fd, ns=(mtime_ns, mtime_ns))


# --------------------------------------------------------------------- processes
def _writer_main(
    conn: Connection, root: str, encryption_root: bytes, parent: int, inherited: list[Connection]
) -> None:
    procs.become_helper(parent)
    for other in inherited:
        other.close()  # the parent's ends of this and earlier writers' sockets
    reader = BlobReader(LocalBackend(root), encryption_root)  # its own fds and locks
    sock = _fd_socket(conn)
    try:
        while True:
            msg = conn.recv()
            if msg is None:
                break
            batch_id, n_dirs, n_files, items = msg
            fds = _recv_fds(sock, n_dirs + n_files)
            try:
                results = write_batch(fds[:n_dirs], items, fds[n_dirs:], reader, _ignore)
            finally:
                for fd in fds[:n_dirs]:
                    os.close(fd)
            conn.send((batch_id, results))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        reader.backend.close()
        sock.close()
        conn.close()


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
            t = threading.Thread(target=self._receive, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def submit(
        self,
        dir_fds: Sequence[int],
        items: Sequence[BatchItem],
        file_fds: Sequence[int],
        load: int,
        on_done: OnBatch,
    ) -> None:
        """Send a batch with copies of its fds. Closes ``file_fds`` here either way; the
        caller keeps ``dir_fds`` open (and valid) until ``on_done`` has run."""
        try:
            with self._lock:
                if self.failure is not None:
                    raise self.failure
                batch_id = self._next
                self._next += 1
                self._pending[batch_id] = on_done
                worker = min(range(len(self._load)), key=self._load.__getitem__)
                self._load[worker] += load
                self._owner[batch_id] = (worker, load)
            try:
                with self._send_locks[worker]:
                    self._conns[worker].send((batch_id, len(dir_fds), len(file_fds), items))
                    socket.send_fds(self._socks[worker], [b"F"], [*dir_fds, *file_fds])
            except OSError:
                raise self.failure or WriterFailed(_DIED) from None
        finally:
            for fd in file_fds:
                os.close(fd)

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
