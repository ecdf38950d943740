"""Writing restored files' contents, in helper processes or in threads.

The restoring thread resolves every path itself (dir fds, O_NOFOLLOW: see restore.py)
and opens each file; only the open file descriptor travels to a writer, over a Unix
socket (SCM_RIGHTS). A writer can therefore touch nothing but that one file, and the
security argument of restore.py is unchanged. Writers read the blobs from packs,
decrypt, decompress, write (leaving holes for zero chunks), check the whole file
against the content hash recorded at backup time, and apply the file's metadata.

Processes because decryption (AES-GCM in ``cryptography`` holds the GIL) and the
per-chunk Python work otherwise keep one core idle. Backends other than a local
folder (and ``workers=1``) use threads in this process with the same ``write_file``.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import blake3

from casbackup import procs
from casbackup.crypto.envelope import Opener
from casbackup.errors import CasError
from casbackup.repo.ids import Kind
from casbackup.repo.pack import open_blob, pack_name
from casbackup.store.local import LocalBackend

_ZERO = bytes(16 * 1024 * 1024)

Chunk = tuple[bytes, str, int, int, int]  # blob id, pack id, offset, stored length, raw length


@dataclass(frozen=True)
class FileJob:
    chunks: tuple[Chunk, ...]
    size: int
    content_hash: bytes
    uid: int
    gid: int
    mode: int
    mtime_ns: int
    owners: bool


@dataclass(frozen=True)
class Written:
    bytes: int = 0
    error: str | None = None  # the file is wrong or incomplete
    warning: str | None = None  # content fine, metadata not fully applied


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
            job_id, job = msg
            _, fds, _, _ = socket.recv_fds(sock, 1, 1)
            if len(fds) != 1:
                raise EOFError
            conn.send((job_id, write_file(fds[0], job, reader, _ignore)))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        reader.backend.close()
        sock.close()
        conn.close()


def _fd_socket(conn: Connection) -> socket.socket:
    """A socket object on a Connection's Unix socket, made once, to pass fds (SCM_RIGHTS)."""
    return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(conn.fileno()))


def _ignore(_n: int) -> None:
    pass


OnWritten = Callable[[Written], None]
_DIED = "a restore writer process stopped unexpectedly"


class WriterFailed(CasError):
    """A writer process died (killed, out of memory): the restore cannot go on."""


class WriterPool:
    """Hands (fd, job) to writer processes; ``on_done`` runs on a receiver thread."""

    def __init__(self, root: str, encryption_root: bytes, workers: int) -> None:
        ctx = procs.context()
        self._conns: list[Connection] = []
        self._socks: list[socket.socket] = []
        self._send_locks: list[threading.Lock] = []
        self._procs: list[Any] = []
        self._threads: list[threading.Thread] = []
        self._pending: dict[int, OnWritten] = {}
        self._lock = threading.Lock()
        self._next = 0
        self._load = [0] * workers  # files queued per writer: the least busy gets the next
        self._owner: dict[int, int] = {}
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

    def submit(self, fd: int, job: FileJob, on_done: OnWritten) -> None:
        """Send the job and a copy of ``fd``; closes ``fd`` here either way."""
        try:
            with self._lock:
                if self.failure is not None:
                    raise self.failure
                job_id = self._next
                self._next += 1
                self._pending[job_id] = on_done
                worker = min(range(len(self._load)), key=self._load.__getitem__)
                self._load[worker] += 1
                self._owner[job_id] = worker
            try:
                with self._send_locks[worker]:
                    self._conns[worker].send((job_id, job))
                    socket.send_fds(self._socks[worker], [b"F"], [fd])
            except OSError:
                raise self.failure or WriterFailed(_DIED) from None
        finally:
            os.close(fd)

    def _receive(self, conn: Connection) -> None:
        try:
            while True:
                try:
                    job_id, written = conn.recv()
                except (EOFError, OSError):
                    if self._closing:
                        return
                    raise WriterFailed(_DIED) from None
                with self._lock:
                    on_done = self._pending.pop(job_id)
                    self._load[self._owner.pop(job_id)] -= 1
                on_done(written)
        except BaseException as exc:  # noqa: BLE001 - fail every waiting file with it
            with self._lock:
                if self.failure is None:
                    self.failure = exc
                pending, self._pending = self._pending, {}
            for on_done in pending.values():
                on_done(Written(error=str(exc)))

    _closing = False

    def close(self) -> None:
        self._closing = True
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
