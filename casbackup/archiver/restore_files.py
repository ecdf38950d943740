"""Sending a restore's regular files to the writers, and what comes back.

The tree walk (restore.py) creates the folders; every regular file it meets comes here:
the first name of a hard-link group (and every other file) is gathered into a batch with
its folder, its chunks are located in the index, and the batch goes to a writer process
(or thread: archiver/writers.py), which reads the chunks per pack (readplan.py), writes
under a temporary name, verifies and publishes. Outcomes come back on another thread:
counts, errors by path, hard links waiting for their first name, and the release of the
folders the batch held open (the walk's side applies their metadata: ``_finish_dir``).
"""

from __future__ import annotations

import itertools
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from casbackup.archiver.metadata import FS_INTERNAL_XATTRS
from casbackup.archiver.readplan import LOCAL_GAP, REMOTE_GAP, BlobReader, Chain, Chunk
from casbackup.archiver.readpool import ReaderPool
from casbackup.archiver.restore_state import Batch, BatchDone, Folder, LinkGroup
from casbackup.archiver.targetfs import TargetError, refuse_dir, remove_entry, temp_prefix
from casbackup.archiver.writers import (
    TARGET_FULL,
    BatchItem,
    FileJob,
    WriterPool,
    Written,
    write_batch,
)
from casbackup.errors import CasError, Interrupted, RestoreError
from casbackup.repo import delta
from casbackup.repo.ids import Kind
from casbackup.repo.index import Location, chunk_location
from casbackup.repo.nodecheck import require_sound_file
from casbackup.repo.repository import Repository
from casbackup.repo.tree import Node, NodeKind
from casbackup.reporter import NULL_REPORTER, Progress, Reporter, Throttle
from casbackup.store.base import is_remote
from casbackup.store.local import LocalBackend
from casbackup.threadsig import block_stop_signals


class TargetFull(RestoreError):
    """The target took no more data (full, over quota, read-only): the restore stops at
    once instead of failing every file the same way; ``str()`` is the OS's reason."""


class RestoreStopped(RestoreError):
    """The restore stopped (the target took no more data) after writing part of it:
    ``result`` holds what was done, ``result.errors`` each entry that failed before by
    path, so they are still reported (the CLI lists them before the one-line stop)."""

    def __init__(self, message: str, result: RestoreResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class RestoreOptions:
    target: str
    subpath: str = "/"
    includes: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    overwrite: bool = False
    workers: int = 2  # writer processes (threads for backends other than a local folder)
    owners: bool | None = None  # None: restore owners when running as root
    dry_run: bool = False
    xattrs: bool = True  # extended attributes (ACLs, capabilities): False for --no-xattrs


@dataclass
class RestoreResult:
    files: int = 0  # regular files
    symlinks: int = 0
    specials: int = 0  # FIFOs and device nodes
    dirs: int = 0
    links: int = 0  # further names of hard-link groups
    bytes: int = 0
    # Files, links and special files the snapshot gives to another user, restored as the
    # restoring user's (only root restores owners): said once, where tar and restic say
    # nothing, since a copy of them put back with 'sudo cp' would be that user's.
    others_owned: int = 0
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


# A batch closes at whichever limit comes first. Many small files per message spread its
# cost (pickling, sendmsg, a wake-up on each side) that per file was the bottleneck; the
# byte limit lets a big file go nearly alone so that both writers stay busy; the folder
# limit (one sendmsg carries at most 253 fds) bounds the folders held open for batches.
_BATCH_FILES = 128
_BATCH_BYTES = 4 << 20
_BATCH_DIRS = 16
# Batches in flight: a few per writer keep each busy; the cap keeps the folder fds held
# for them (at most _BATCH_DIRS each, plus the walk's own path) well below 1024.
_MAX_IN_FLIGHT = 32
_FILE_LOAD = 8192  # a file's cost to a writer beyond its bytes, for picking the least busy
# Ranged reads in flight from an object store (threads, shared by the writing threads).
_REMOTE_READERS = 8


class FileSender(ABC):
    """The file side of a restore: batches, writers, outcomes, hard links, and the
    result's counts and messages (shared with the walk, under ``_lock``)."""

    def __init__(
        self, repo: Repository, options: RestoreOptions, reporter: Reporter = NULL_REPORTER
    ) -> None:
        self.repo = repo
        self.options = options
        self.reporter = reporter
        self.owners = os.geteuid() == 0 if options.owners is None else options.owners
        self._me = os.geteuid()
        self.result = RestoreResult()
        self._lock = threading.Lock()
        self._groups: dict[tuple[int, int, bytes], LinkGroup] = {}  # Node.link_group -> it
        self._progress = Progress(phase="restore")
        self._report_progress = Throttle(reporter, self._progress)
        self._slots = threading.BoundedSemaphore(min(max(4, options.workers * 4), _MAX_IN_FLIGHT))
        self._idle = threading.Condition()  # notified when the last batch in flight is back
        self._inflight = 0
        self._failure: BaseException | None = None  # stops the restore at the next check
        self._batch = Batch()
        self._outstanding: set[BatchDone] = set()  # batches sent, outcome not back: temp names
        self._temp_prefix = temp_prefix()
        self._temps = itertools.count()
        self._writers: WriterPool | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._fetchers: ReaderPool | None = None  # ranged reads, for the threads
        self._aborted = False  # the writers are being stopped: no file starts any more
        self._reader: BlobReader | None = None
        self._root_fd = -1  # the target folder, set by the walk before any file is sent

    @abstractmethod
    def _finish_dir(self, folder: Folder) -> None:
        """Every entry of ``folder`` exists: apply its metadata and close it (the walk's)."""

    def _make(self, node: Node, rel_path: bytes, dir_fd: int, create: Callable[[], None]) -> bool:
        """Create an entry with ``create``; with --overwrite, replace what is there. False
        when it could not be (reported by path); an existing entry without --overwrite
        stops the restore (RestoreError)."""
        try:
            create()
            return True
        except FileExistsError:
            if not self.options.overwrite:
                raise RestoreError(_exists(rel_path)) from None
        except OSError as exc:
            self._os_failed(rel_path, exc)
            return False
        try:
            remove_entry(node.name, dir_fd)
            create()
            return True
        except TargetError as exc:
            self._fail(rel_path, str(exc))
        except OSError as exc:
            self._os_failed(rel_path, exc)
        return False

    def _os_failed(self, rel_path: bytes, exc: OSError) -> None:
        """An entry the OS would not create: reported by path, or, when the target takes
        no more, the restore stops (TargetFull)."""
        if exc.errno in TARGET_FULL:
            self.stop(TargetFull(exc.strerror or str(exc)))
        else:
            self._fail(rel_path, f"cannot create: {exc.strerror}")

    # ------------------------------------------------------------------ files
    def _restore_file(self, node: Node, rel_path: bytes, folder: Folder) -> None:
        # node.link_group, inline: this runs once a file
        key = (node.device, node.inode, node.content_hash) if node.nlink > 1 else None
        if key is not None:
            with self._lock:
                group = self._groups.get(key)
                if group is None:
                    self._groups[key] = LinkGroup(rel_path)
                elif group.state is None:
                    # The first name is still being written: link once it is in place.
                    group.waiting.append((folder, node, rel_path))
                    folder.batches += 1
                    return
            if group is not None:
                self._link(group, folder, node, rel_path)
                return
        if self.options.overwrite:
            # The writer renames the verified file over the old entry (the old file stays
            # whole until then, and a link there is replaced, never written through); a
            # folder there is a conflict.
            try:
                refuse_dir(node.name, folder.fd)
            except TargetError as exc:
                self._fail(rel_path, str(exc))
                self._first_settled(key, str(exc))
                return
        self._queue(folder, node, rel_path)

    def _link(self, group: LinkGroup, folder: Folder, node: Node, rel_path: bytes) -> None:
        """Another name of a hard-link group whose first name is in place (or failed)."""
        if group.state:
            self._fail(rel_path, f"hard link not made: {os.fsdecode(group.source)} failed")
            return
        source = group.source
        dir_fd = folder.fd
        try:
            self._make(
                node, rel_path, dir_fd,
                lambda: os.link(source, node.name, src_dir_fd=self._root_fd, dst_dir_fd=dir_fd, follow_symlinks=False),
            )  # fmt: skip
        except RestoreError as exc:
            self.stop(exc)  # the name was taken and --overwrite not given
            return
        with self._lock:
            self.result.links += 1

    def _first_settled(self, key: tuple[int, int, bytes] | None, why: str = "") -> None:
        """The first name of a hard-link group is in place (``why`` empty) or failed: its
        other names that waited are linked to it, or reported."""
        if key is None:
            return
        with self._lock:
            group = self._groups[key]
            group.state = why
            waiting, group.waiting = group.waiting, []
        for folder, node, rel_path in waiting:
            self._link(group, folder, node, rel_path)
            self._release(folder)

    def _queue(self, folder: Folder, node: Node, rel_path: bytes) -> None:
        batch = self._batch
        slot = batch.slots.get(id(folder))
        if slot is None:
            slot = batch.slots[id(folder)] = len(batch.dirs)
            batch.dirs.append(folder)
            with self._lock:
                folder.batches += 1
        batch.folders.append(slot)
        batch.nodes.append(node)
        batch.rel_paths.append(rel_path)
        batch.bytes += node.size
        if (
            len(batch.nodes) >= _BATCH_FILES
            or batch.bytes >= _BATCH_BYTES
            or len(batch.dirs) >= _BATCH_DIRS
        ):
            self._flush()

    def _flush(self) -> None:
        """Send the gathered batch to a writer (waiting while too many are in flight)."""
        self._raise_failure()  # before taking the batch: on failure run() closes its folders
        batch, self._batch = self._batch, Batch()
        if not batch.dirs:
            return
        items, nodes, rel_paths = self._items(batch)
        self._slots.acquire()
        with self._idle:
            self._inflight += 1
        done = BatchDone(self, batch.dirs, items, nodes, rel_paths)
        with self._lock:
            self._outstanding.add(done)
        dir_fds = [folder.fd for folder in batch.dirs]
        if self._writers is not None:
            load = batch.bytes + _FILE_LOAD * len(items)
            self._writers.submit(dir_fds, items, load, done)
        else:
            assert self._threads is not None and self._reader is not None
            future = self._threads.submit(
                write_batch, dir_fds, items, self._reader, self._add_bytes, self._stopping
            )
            future.add_done_callback(done.from_future)

    def _items(self, batch: Batch) -> tuple[list[BatchItem], list[Node], list[bytes]]:
        """The writer's items, and the nodes and paths of those items.

        Every chunk of the batch is located in one index transaction; if that fails, file
        by file, and a file whose chunks are missing is reported and left out.
        """
        try:
            every = self.repo.locate_values([c for node in batch.nodes for c in node.content])
        except CasError:
            every = None
        items: list[BatchItem] = []
        nodes: list[Node] = []
        rel_paths: list[bytes] = []
        # Per file, on the walk's thread (the restore's critical path on 2 cores): what is
        # the same for the whole batch is looked up once, here.
        dirs = batch.dirs
        owners, exact_acls = self.owners, self.exact_acls
        replace, xattrs = self.options.overwrite, self.options.xattrs
        prefix, temps = self._temp_prefix, self._temps
        data = Kind.DATA
        pos = 0
        for node, rel_path, slot in zip(batch.nodes, batch.rel_paths, batch.folders, strict=True):
            content = node.content
            first, pos = pos, pos + len(content)
            try:
                values = (
                    every[first:pos]
                    if every is not None
                    else self.repo.locate_values(list(content))
                )
                found: list[Chunk] = []
                whole = True
                for chunk_id, value in zip(content, values, strict=True):
                    chunk, kind = chunk_location(chunk_id, value)
                    found.append(chunk)
                    whole = whole and kind == data
                chunks = tuple(found)
                sizes = [chunk[4] for chunk in chunks]
                # issue 12: what file_node_problem accepts at a glance, else its full say
                if len(node.content_hash) != 32 or not chunks or sum(sizes) != node.size:
                    require_sound_file(node, sizes)
                chains: tuple[tuple[int, Chain], ...] = ()
                if not whole:  # a chunk not stored whole (a delta) is rebuilt from its chain
                    # (CasError: its base is missing or its chain too deep)
                    locs = [Location.decode(value) for value in values]
                    chains = tuple((i, self._chain(chunks[i], loc))
                                   for i, loc in enumerate(locs) if loc.kind != data)  # fmt: skip
            except CasError as exc:
                self._fail(rel_path, str(exc))
                self._first_settled(node.link_group, str(exc))
                continue
            folder = dirs[slot]
            job = FileJob(chunks, node.size, node.content_hash, node.uid, node.gid, node.mode,
                          node.mtime_ns, owners, self._xattrs(node) if xattrs else (),
                          prefix + b"%d" % next(temps), replace, chains,
                          exact_acls and folder.inherits, folder.created)  # fmt: skip
            items.append((slot, node.name, job))
            nodes.append(node)
            rel_paths.append(rel_path)
        return items, nodes, rel_paths

    def _chain(self, chunk: Chunk, loc: Location) -> Chain:
        """The located blobs that rebuild a chunk not stored whole (a DELTA blob), itself
        first and its full base last (``delta.chain_of``: at most ``delta.MAX_DEPTH`` deltas).
        Raises NotFound or IntegrityError when a base is missing or the chain too deep;
        a TREE where data is expected comes back alone and the writer refuses it."""
        if loc.kind != Kind.DELTA:
            return (chunk,)
        return tuple(delta.located_chain(self.repo.locate, chunk[0], loc))

    def _xattrs(self, node: Node) -> tuple[tuple[bytes, bytes], ...]:
        if not self.options.xattrs or not node.xattrs:
            return ()
        # Snapshots taken on XFS before read_xattrs left them out hold its internal copies
        # of the ACLs: not set again (the system.* ACL attributes are).
        if any(name in FS_INTERNAL_XATTRS for name, _ in node.xattrs):
            return tuple(pair for pair in node.xattrs if pair[0] not in FS_INTERNAL_XATTRS)
        return node.xattrs

    # Whether an entry's recorded attributes are all it had (the snapshot recorded them and
    # they are being restored): then ACLs inherited in the target are removed. Set by the
    # subclass, which knows the snapshot.
    exact_acls = False

    def _add_bytes(self, n: int) -> None:
        self._progress.bytes_done += n

    def batch_done(self, done: BatchDone, results: list[Written] | None) -> None:
        """A batch's outcomes (on a writer's receiver thread or a writer thread); None when
        it was lost with its writer, whose failure then stops the restore (its folders then
        stay open for ``_close_open_dirs``)."""
        try:
            if results is not None:
                with self._lock:
                    self._outstanding.discard(done)
                for node, rel_path, written in zip(
                    done.nodes, done.rel_paths, results, strict=True
                ):
                    self._written(node, rel_path, written)
                self._report_progress()
        finally:
            # A lost batch keeps its folders: a writer killed mid-file can have left a
            # temporary name in any of them, which _close_open_dirs removes through the
            # folder's fd once the writers are stopped. Released, the folder could reach
            # zero batches and be finished and closed by another batch or by the walk
            # (found under load: a temporary file left in the target).
            if results is not None:
                for folder in done.dirs:
                    self._release(folder)
            self._slots.release()
            with self._idle:
                self._inflight -= 1
                if self._inflight == 0:
                    self._idle.notify_all()

    def _release(self, folder: Folder) -> None:
        """One batch or waiting link in ``folder`` is over: finish it if it was the last."""
        with self._lock:
            folder.batches -= 1
            last = folder.walked and folder.batches == 0
        if last:
            self._finish_dir(folder)

    def _written(self, node: Node, rel_path: bytes, written: Written) -> None:
        key = node.link_group
        if written.exists:
            self.stop(RestoreError(_exists(rel_path)))
            self._first_settled(key, "exists in the target")
        elif written.full:  # not listed by path: the restore stops and says why, once
            self.stop(TargetFull(written.error or "the target takes no more data"))
            self._first_settled(key, "not written")
        elif written.error is not None:
            self._fail(rel_path, written.error)
            self._first_settled(key, written.error or "failed")
        else:
            with self._lock:
                self.result.files += 1
                self.result.bytes += written.bytes
            for warning in written.warnings:
                self._warn(rel_path, warning)
            if self._writers is not None:
                self._progress.bytes_done += written.bytes
            self._progress.files_done += 1
            self._first_settled(key)

    def _start_writers(self) -> None:
        opts = self.options
        backend = self.repo.backend
        if isinstance(backend, LocalBackend) and opts.workers > 1 and not opts.dry_run:
            self._writers = WriterPool(backend.root, self.repo.key.encryption_root, opts.workers)
            return
        self._threads = ThreadPoolExecutor(
            opts.workers, thread_name_prefix="restore", initializer=block_stop_signals
        )
        # Ranged reads run in their own threads, ahead of the writing; an object store gets
        # several requests in flight (its client releases the GIL while it waits).
        local = not is_remote(backend)
        fetchers = max(1, opts.workers) if local else _REMOTE_READERS
        # Daemon readers (archiver/readpool.py): a stop fails their running gets at once
        # instead of waiting for them, and the interpreter's exit does not join them.
        self._fetchers = ReaderPool(fetchers, "restore-read")
        self._reader = BlobReader(
            backend,
            self.repo.key.encryption_root,
            gap=LOCAL_GAP if local else REMOTE_GAP,
            pool=self._fetchers,
        )

    def _stop_writers(self, abort: bool) -> None:
        """End the writers; ``abort`` (an error or a stop): without waiting for any get.

        The writer threads are waited for (the folders' fds they write through are closed
        next), but first no further file is started, no get starts, and the gets running
        fail at once: a writer waiting on a range from a store that hangs wakes now, not
        after the store's timeout times the retries."""
        if self._writers is not None:
            self._writers.close(abort=abort)
        if abort:
            stopped = Interrupted("restore stopped")
            self._aborted = True
            if self._reader is not None:
                self._reader.halted = stopped
            if self._fetchers is not None:
                self._fetchers.stop(stopped)
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
        if self._fetchers is not None:
            self._fetchers.shutdown(wait=True, cancel_futures=True)

    def _drain(self) -> None:
        """Wait for every batch in flight, then raise what stopped the restore, if anything."""
        with self._idle:
            while self._inflight:
                self._idle.wait()
        self._raise_failure()

    def stop(self, failure: BaseException) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = failure

    def _stopping(self) -> bool:
        """Whether the restore is stopping: writer threads then write no further file."""
        return self._failure is not None or self._aborted

    def _raise_failure(self) -> None:
        failure = self._failure or (self._writers.failure if self._writers else None)
        if failure is not None:
            raise failure

    def _count(self, node: Node) -> None:
        with self._lock:
            if node.kind == NodeKind.SYMLINK:
                self.result.symlinks += 1
            elif node.kind == NodeKind.FILE:
                self.result.files += 1
            else:
                self.result.specials += 1
            self.result.bytes += node.size

    def _warn(self, rel_path: bytes, message: str) -> None:
        with self._lock:
            self.result.warnings.append(f"{os.fsdecode(rel_path)}: {message}")

    def _fail(self, rel_path: bytes, message: str) -> None:
        with self._lock:
            self.result.errors.append(f"{os.fsdecode(rel_path)}: {message}")


def _exists(rel_path: bytes) -> str:
    return f"{os.fsdecode(rel_path)} exists in the target (use --overwrite)"
