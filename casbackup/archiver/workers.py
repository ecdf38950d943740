"""File readers in worker processes: open, read, chunk, hash, compress, encrypt, verify.

Why processes: with threads, every file and chunk costs Python bytecode under one GIL
(and AES-GCM in ``cryptography`` holds it too), so on many small files the second core
mostly waited. Each worker process does the whole per-file job on its own interpreter
and sends back only what the repository must record: sealed blobs and, per file, its
chunk ids and content hash. The calling process keeps everything that needs one
writer: deduplication across workers, packs, the index, trees and the snapshot.

Safety:
- Every worker draws a new encryption session (``Sealer``) after it starts. A session
  copied from the parent by fork would repeat (key, nonce) pairs; never reuse one.
- A worker skips chunks the LMDB index cache already holds (a read-only view, safe
  across processes). Chunks sealed by two workers at once reach the parent twice; the
  parent keeps the first (``Repository.store_sealed``), so nothing is stored twice.
- Workers ignore SIGINT: the parent turns Ctrl-C into the shared cancel flag. A worker
  whose parent died exits (its pipe breaks, or it notices its parent changed).

Batches: small files travel in batches (one queue hand-off for many files); a message
back carries the sealed blobs of up to ``FLUSH_BYTES`` so memory stays bounded for
files of any size.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import multiprocessing
import os
import queue
import stat
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import blake3

from casbackup import procs
from casbackup.archiver.compare import Counts, SubtreeComparer, SubtreeJob
from casbackup.archiver.excludes import Excluder
from casbackup.chunking.chunker import (
    PAGE_IMAGE_CHUNK,
    Chunker,
    FixedChunker,
    StreamCutter,
    is_page_image_file,
)
from casbackup.crypto.envelope import Opener, Sealer
from casbackup.errors import CasError, IntegrityError
from casbackup.memory import tune_allocator_single_thread
from casbackup.procs import become_helper
from casbackup.repo import codec
from casbackup.repo.config import ChunkerParams
from casbackup.repo.ids import Kind
from casbackup.repo.indexcache import IndexCache
from casbackup.threadsig import quiet_thread, stop_signals_blocked

FLUSH_BYTES = 1 << 20  # sealed bytes a worker gathers before sending them
BATCH_FILES = 128  # small files per job batch
BATCH_BYTES = 4 << 20  # bytes of file content per job batch
PIPE_BYTES = 1 << 20
SEEN_MAX = 16384  # blob ids a reader remembers sealing (about 2 MiB)
PREFETCH_BYTES = 4 << 20  # per file: enough to start a big file, not to flood the cache
_POLL_S = 1.0  # how often an idle worker checks that its parent is alive
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
_OPEN_NOATIME = _OPEN | getattr(os, "O_NOATIME", 0)


@dataclass(frozen=True)
class WorkerSetup:
    """Everything a worker needs; picklable so any start method works."""

    id_key: bytes
    encryption_root: bytes
    chunker: ChunkerParams
    chunker_seed: int
    compression_level: int | None
    verify: bool
    dry_run: bool
    cache_path: str | None  # LMDB index cache, looked up read-only; None: ask nothing
    # Comparing subtrees with the parent snapshot (archiver/compare.py) reads its trees
    # straight from the packs: only for a repository in a local folder.
    repo_root: str | None = None
    excludes: tuple[str, ...] = ()
    exact_excludes: frozenset[str] = frozenset()  # whole paths left out (database files)
    exclude_renames: tuple[tuple[str, str], ...] = ()  # read folder -> original path
    exclude_if_present: tuple[str, ...] = ()  # BackupOptions' fields of the same names
    exclude_larger_than: int = 0
    one_file_system: bool = False
    # SQLite database files cut every 1 MiB (chunking.is_page_image_file): only where
    # their changed chunks can be aligned deltas (format 6 and later, as for dumps).
    page_images: bool = False


@dataclass(frozen=True)
class FileOutcome:
    """What a worker learned reading one file."""

    ids: tuple[bytes, ...] = ()
    digest: bytes = b""
    size: int = 0
    changed: os.stat_result | None = None  # set when the file changed while it was read
    first_mtime_ns: int = 0
    error: tuple[int, str] | None = None  # (errno, message) when it could not be read
    cancelled: bool = False


Sealed = tuple[bytes, bytes, int]  # blob id, envelope, plaintext length
OnRead = Callable[["FileOutcome | None", "BaseException | None"], None]
OnCompared = Callable[["dict[bytes, Counts] | None", "BaseException | None"], None]


class CancelFlag:
    """A stop request shared with the reader processes.

    Plain shared memory, no lock: ``set`` is safe inside a signal handler, and checking
    it between chunks costs next to nothing.
    """

    def __init__(self) -> None:
        self._value = multiprocessing.RawValue("b", 0)

    def set(self) -> None:
        self._value.value = 1

    def is_set(self) -> bool:
        return bool(self._value.value)


class WorkerFailed(CasError):
    """A worker process died or hit a fault it could not report as a file error."""


# --------------------------------------------------------------------- the worker side
class FileReader:
    """The per-file job, run in a worker process."""

    def __init__(self, setup: WorkerSetup, cancel: CancelFlag) -> None:
        self.setup = setup
        self.cancel = cancel
        self.chunker = Chunker(setup.chunker, setup.chunker_seed)
        self.cutter = StreamCutter(self.chunker)
        self.page_cutter = FixedChunker(PAGE_IMAGE_CHUNK)
        self.sealer = Sealer(setup.encryption_root)  # a fresh session: see module docstring
        self.opener = Opener(setup.encryption_root)
        self.level = setup.compression_level
        self.seen: set[bytes] = set()  # sealed by this reader already
        self.sealed: list[Sealed] = []
        self.sealed_bytes = 0
        self.read_bytes = 0
        self._cache: Any = None
        self._comparer: SubtreeComparer | None = None
        if setup.cache_path is not None and not setup.dry_run:
            try:
                self._cache = IndexCache(setup.cache_path, readonly=True)
            except CasError:
                self._cache = None  # only an optimisation: the parent deduplicates anyway

    def close(self) -> None:
        if self._comparer is not None:
            self._comparer.close()
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def compare(self, job: SubtreeJob) -> dict[bytes, Counts]:
        """The folders found unchanged under ``job.path`` (see archiver/compare.py)."""
        if self._cache is None or self.setup.repo_root is None:
            return {}
        if self._comparer is None:
            self._comparer = SubtreeComparer(
                self.setup.repo_root, self._cache, self.opener, self.setup.id_key,
                Excluder(
                    self.setup.excludes, exact=self.setup.exact_excludes,
                    rename=self.setup.exclude_renames,
                    if_present=self.setup.exclude_if_present,
                    larger_than=self.setup.exclude_larger_than,
                ),
                self.setup.one_file_system, self.cancel,
            )  # fmt: skip
        return self._comparer.compare(job)

    def take(self) -> tuple[list[Sealed], int]:
        sealed, read = self.sealed, self.read_bytes
        self.sealed, self.sealed_bytes, self.read_bytes = [], 0, 0
        return sealed, read

    def read_file(self, path: bytes, expected_size: int, flush: Callable[[], None]) -> FileOutcome:
        if self.cancel.is_set():
            return FileOutcome(cancelled=True)
        try:
            return self._read(path, expected_size, flush)
        except _Cancelled:
            return FileOutcome(cancelled=True)
        except OSError as exc:
            return FileOutcome(error=(exc.errno or 0, exc.strerror or str(exc)))

    def _read(self, path: bytes, expected_size: int, flush: Callable[[], None]) -> FileOutcome:
        fd = open_for_reading(path)
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise OSError(errno.EINVAL, "not a regular file any more")
            min_size = self.chunker.min_size
            if before.st_size <= min_size:
                # One read of exactly the expected size (+1 to notice growth): no chunker
                # set-up, no file object and no min-size buffer per tiny file.
                data = os.read(fd, before.st_size + 1)
                if len(data) > before.st_size:
                    data += _read_rest(fd)
                pieces: Any = (
                    self.chunker.buffer(data) if len(data) > min_size else ([data] if data else ())
                )
                ids, digest, size = self._store(pieces, flush)
            else:
                with open(fd, "rb", buffering=0, closefd=False) as f:
                    # A SQLite database file is cut at fixed offsets, as its dump is: its
                    # changed pages then pair with the parent's chunk at the same offset
                    # (--delta-files), and an unchanged run of pages dedups wherever it is.
                    pieces = (
                        self.page_cutter.stream(f)
                        if self.setup.page_images and is_page_image_file(fd)
                        else self.cutter.chunks(f)
                    )
                    ids, digest, size = self._store(pieces, flush)
            after = os.fstat(fd)
        finally:
            os.close(fd)
        return read_outcome(ids, digest, size, before, after)

    def _store(
        self, pieces: Any, flush: Callable[[], None]
    ) -> tuple[tuple[bytes, ...], bytes, int]:
        # Attributes looked up once per file, not once per chunk: a small file is one chunk,
        # and these lookups were a visible share of a reader's time on small files.
        hasher = blake3.blake3()
        update = hasher.update
        keyed = blake3.blake3
        ids: list[bytes] = []
        size = 0
        id_key = self.setup.id_key
        cancel = self.cancel
        seen = self.seen
        cache = None if self.setup.dry_run else self._cache
        dry_run = self.setup.dry_run
        for piece in pieces:
            if cancel.is_set():
                raise _Cancelled
            update(piece)
            n = len(piece)
            size += n
            self.read_bytes += n
            blob_id = keyed(piece, key=id_key).digest()
            ids.append(blob_id)
            if dry_run or blob_id in seen:
                continue
            if cache is not None and cache.contains(blob_id):
                continue
            envelope = self._seal(blob_id, piece)
            if len(seen) >= SEEN_MAX:
                seen.clear()  # bounded memory; the parent still drops any repeat
            seen.add(blob_id)
            self.sealed.append((blob_id, envelope, n))
            self.sealed_bytes += len(envelope)
            if self.sealed_bytes >= FLUSH_BYTES:
                flush()
        return tuple(ids), hasher.digest(), size

    def _seal(self, blob_id: bytes, piece: Any) -> bytes:
        envelope = self.sealer.seal(Kind.DATA, blob_id, codec.compress(piece, self.level))
        if self.setup.verify:
            # Catch bad RAM and bugs before they reach the repository (restic does the same).
            plain = codec.decompress(self.opener.open(Kind.DATA, blob_id, envelope))
            if blake3.blake3(plain, key=self.setup.id_key).digest() != blob_id:
                raise IntegrityError(
                    "a blob failed verification before it was written (memory or software fault)"
                )
        return envelope


class _Cancelled(Exception):
    pass


def open_for_reading(path: bytes) -> int:
    """``path`` opened read-only without following a symlink, and without updating its
    access time where that is allowed (O_NOATIME needs ownership). O_NONBLOCK: a file
    swapped for a FIFO since the walk must not block the open (the caller's fstat refuses
    it); it changes nothing for regular files. Raises OSError."""
    try:
        return os.open(path, _OPEN_NOATIME)
    except PermissionError:
        return os.open(path, _OPEN)


def read_outcome(
    ids: tuple[bytes, ...], digest: bytes, size: int, before: os.stat_result, after: os.stat_result
) -> FileOutcome:
    """A file read between the fstat results ``before`` and ``after``: changed while read
    when its size or times moved. Bytes read that differ from a size that did not move are
    not a change: /proc and /sys report 0 or 4096 for files whose content they make up as
    they are read; what was read is what is stored."""
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
        before.st_size,
        before.st_mtime_ns,
        before.st_ctime_ns,
    ):
        return FileOutcome(ids, digest, size, after, before.st_mtime_ns)
    return FileOutcome(ids, digest, size)


def _read_rest(fd: int) -> bytes:
    """Everything left in ``fd`` up to its end (a file that grew since its fstat)."""
    parts = []
    while block := os.read(fd, 1 << 20):
        parts.append(block)
    return b"".join(parts)


def _worker_main(
    setup: WorkerSetup,
    jobs: Any,
    conn: Connection,
    cancel: CancelFlag,
    parent: int,
    siblings: list[Connection],
) -> None:
    become_helper(parent)
    for other in siblings:
        other.close()  # else this process would keep another reader's pipe open
    tune_allocator_single_thread()
    reader = FileReader(setup, cancel)
    outcomes: list[tuple[int, FileOutcome]] = []

    def flush() -> None:
        sealed, read = reader.take()
        conn.send((sealed, outcomes[:], read))
        outcomes.clear()

    try:
        while True:
            try:
                batch = jobs.get(timeout=_POLL_S)
            except queue.Empty:
                if os.getppid() != parent:
                    return  # orphaned: the backup is gone
                continue
            if batch is None:
                break
            if isinstance(batch, tuple):  # ("compare", job id, SubtreeJob)
                conn.send(("compared", batch[1], reader.compare(batch[2])))
                continue
            if len(batch) > 1:
                _prefetch(batch)
            for job_id, path, size in batch:
                outcomes.append((job_id, reader.read_file(path, size, flush)))
            flush()
    except (BrokenPipeError, EOFError, KeyboardInterrupt):
        return
    except BaseException as exc:  # noqa: BLE001 - report any fault, then stop
        kind = "integrity" if isinstance(exc, IntegrityError) else "fault"
        detail = str(exc) if isinstance(exc, CasError) else _one_line(exc)
        try:
            conn.send(("error", kind, detail))
        except OSError:
            pass
    finally:
        reader.close()
        conn.close()


def _one_line(exc: BaseException) -> str:
    """A bug in a reader, as one line for the user: what, and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _prefetch(batch: list[tuple[int, bytes, int]]) -> None:
    """Ask the kernel to start reading a batch's files now, all at once.

    Read one after another, small files cost a disk round trip each; told about the
    whole batch first, the disk gets many requests at a time (cold cache: see bench/).
    Only a hint: errors are ignored here and reported when the file is really read.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_NOATIME", 0)
    for _job_id, path, size in batch:
        try:
            fd = os.open(path, flags)
        except OSError:
            continue
        try:
            os.posix_fadvise(fd, 0, min(size, PREFETCH_BYTES), os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)


# --------------------------------------------------------------------- the parent side
class ReaderPool:
    """Hands file batches to worker processes and resolves one Future per file.

    ``store`` is called (from receiver threads) with each batch of sealed blobs before
    the outcomes of the files that produced them are resolved, so a file's result
    never names a blob that is not yet in a pack or already indexed. ``settle``, when
    given, receives each answer's callbacks and outcomes in one call (instead of one
    call per file); a failure still calls each callback with the error.
    """

    def __init__(
        self,
        setup: WorkerSetup,
        workers: int,
        store: Callable[[list[Sealed]], None],
        on_read: Callable[[int], None],
        cancel: CancelFlag,
        settle: Callable[[list[OnRead], list[FileOutcome]], None] | None = None,
    ) -> None:
        self._store = store
        self._settle = settle
        self._on_read = on_read
        self._pending: dict[int, Callable[..., None]] = {}
        self._lock = threading.Lock()
        self._next_id = 0
        self._failure: BaseException | None = None
        ctx = procs.context()
        self.cancel = cancel
        self._jobs = ctx.Queue()
        self._procs: list[Any] = []
        self._threads: list[threading.Thread] = []
        receivers: list[Connection] = []  # our ends, closed in readers forked later
        # Objects that exist now are never collected in the readers: without this, the
        # readers' first garbage collection would touch (and so copy) every inherited page.
        gc.freeze()
        try:
            self._start(ctx, setup, workers, receivers)
        finally:
            gc.unfreeze()

    def _start(
        self, ctx: Any, setup: WorkerSetup, workers: int, receivers: list[Connection]
    ) -> None:
        for _ in range(workers):
            ours, theirs = ctx.Pipe(duplex=False)
            _widen_pipe(theirs)
            proc = ctx.Process(
                target=_worker_main,
                args=(setup, self._jobs, theirs, self.cancel, os.getpid(), [*receivers, ours]),
                daemon=True,
                name="casbackup-reader",
            )
            proc.start()
            theirs.close()
            receivers.append(ours)
            self._procs.append(proc)
            t = quiet_thread(self._receive, (ours, proc))
            t.start()
            self._threads.append(t)

    def submit(self, batch: list[tuple[bytes, int, OnRead]]) -> None:
        """Queue files (path, expected size, callback); each callback runs exactly once."""
        jobs = []
        with self._lock:
            failure = self._failure
            if failure is None:
                for path, size, on_done in batch:
                    self._pending[self._next_id] = on_done
                    jobs.append((self._next_id, path, size))
                    self._next_id += 1
        if failure is not None:
            for _path, _size, on_done in batch:
                on_done(None, failure)
            return
        self._put(jobs)

    def compare(self, job: SubtreeJob, on_done: OnCompared) -> None:
        """Queue a subtree comparison; ``on_done`` runs exactly once, on a receiver thread."""
        with self._lock:
            failure = self._failure
            if failure is None:
                job_id = self._next_id
                self._next_id += 1
                self._pending[job_id] = on_done
        if failure is not None:
            on_done(None, failure)
            return
        self._put(("compare", job_id, job))

    def _put(self, item: Any) -> None:
        # The queue's first put starts its feeder thread, which inherits this thread's mask:
        # blocked, so that the stop signals keep going to the main thread (threadsig.py).
        with stop_signals_blocked():
            self._jobs.put(item)

    def _receive(self, conn: Connection, proc: Any) -> None:
        try:
            while True:
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    if self._closing:
                        return
                    raise WorkerFailed(
                        f"a file reader process stopped unexpectedly (exit code {_exit(proc)})"
                    ) from None
                if msg[0] == "error":
                    _, kind, detail = msg
                    if kind == "integrity":
                        raise IntegrityError(detail)
                    raise WorkerFailed(f"a file reader process failed: {detail}")
                if msg[0] == "compared":
                    with self._lock:
                        on_compared = self._pending.pop(msg[1])
                    on_compared(msg[2], None)
                    continue
                sealed, outcomes, read = msg
                if sealed:
                    self._store(sealed)
                if read:
                    self._on_read(read)
                with self._lock:
                    callbacks = [self._pending.pop(job_id) for job_id, _ in outcomes]
                if self._settle is not None:
                    self._settle(callbacks, [outcome for _, outcome in outcomes])
                    continue
                for on_done, (_, outcome) in zip(callbacks, outcomes, strict=True):
                    on_done(outcome, None)
        except BaseException as exc:  # noqa: BLE001 - fail every waiting file with it
            self._fail(exc)
        finally:
            conn.close()

    @property
    def failure(self) -> BaseException | None:
        """What stopped the readers (a dead worker, a failed pack write), if anything."""
        return self._failure

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = exc
            pending, self._pending = self._pending, {}
        self.cancel.set()
        for on_done in pending.values():
            on_done(None, exc)

    _closing = False

    def close(self) -> None:
        """Stop the workers (after they finish what was queued) and reap them."""
        self._closing = True
        for _ in self._procs:
            try:
                self._put(None)
            except (OSError, ValueError):
                pass
        procs.reap(self._threads, self._procs)
        self._jobs.close()
        self._jobs.join_thread()


def _widen_pipe(conn: Connection) -> None:
    """Ask for a 1 MiB pipe buffer (Linux): 16x fewer reads, writes and wake-ups per message."""
    setsize = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsize is None:
        return
    try:
        fcntl.fcntl(conn.fileno(), setsize, PIPE_BYTES)
    except OSError:
        pass  # above /proc/sys/fs/pipe-max-size or not a pipe: the default works too


def _exit(proc: Any) -> str:
    proc.join(timeout=1)
    code = proc.exitcode
    if code is not None and code < 0:
        return f"killed by signal {-code}"
    return str(code)
