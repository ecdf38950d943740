"""Restore a snapshot (or one folder or file of it) into a target directory.

Never writes outside the target, whatever the repository says:
- names are validated by the tree decoder (no ``/``, NUL, ``.``, ``..``, no duplicates);
- every file system call is relative to an open directory fd (``dir_fd``) and uses
  ``O_NOFOLLOW``, so a symlink (restored earlier or already in the target) is never
  followed: a directory that turns out to be a symlink stops the restore;
- symlinks are created as links, never written through; ``--overwrite`` unlinks the
  old entry first, so it cannot write through a hard link or symlink either.
The walking thread creates and opens the folders; regular files are created and
written by writer processes (archiver/writers.py) in batches, by name relative to a
folder fd that the walking thread opened and passed along, with ``O_EXCL |
O_NOFOLLOW``. A folder's fd stays open, and its metadata waits, until every batch
with files in it is back: creating entries changes a folder's mtime, and a read-only
mode would stop the writers.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from casbackup.archiver.excludes import Excluder
from casbackup.archiver.writers import (
    BatchItem,
    BlobReader,
    FileJob,
    WriterPool,
    Written,
    apply_metadata,
    write_batch,
)
from casbackup.errors import CasError, Interrupted, NotFound, RestoreError
from casbackup.repo.ids import BlobId
from casbackup.repo.nodecheck import require_sound_file
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.tree import Node, NodeKind
from casbackup.reporter import NULL_REPORTER, Progress, Reporter, Throttle
from casbackup.store.local import LocalBackend


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


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    links: int = 0
    bytes: int = 0
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


class _Dir:
    """A folder of the target being restored into.

    Its fd stays open until the walk has left it (``walked``) and every batch with files
    in it is back (``batches == 0``); then its metadata is applied and the fd closed, on
    whichever thread sees the second of the two.
    """

    __slots__ = ("fd", "node", "rel_path", "batches", "walked")

    def __init__(self, fd: int, node: Node | None, rel_path: bytes) -> None:
        self.fd = fd
        self.node = node  # None: the target itself, which run() opens and closes
        self.rel_path = rel_path
        self.batches = 0
        self.walked = False


class _Batch:
    """Files gathered for one message to a writer, and the folders they go in."""

    __slots__ = ("dirs", "slots", "nodes", "rel_paths", "folders", "fds", "bytes")

    def __init__(self) -> None:
        self.dirs: list[_Dir] = []
        self.slots: dict[int, int] = {}  # id(folder) -> its index in dirs
        self.nodes: list[Node] = []
        self.rel_paths: list[bytes] = []
        self.folders: list[int] = []
        self.fds: list[int] = []  # -1: the writer creates the file by name
        self.bytes = 0


class Restorer:
    def __init__(
        self,
        repo: Repository,
        snapshot: Snapshot,
        options: RestoreOptions,
        reporter: Reporter = NULL_REPORTER,
    ) -> None:
        self.repo = repo
        self.snapshot = snapshot
        self.options = options
        self.reporter = reporter
        self.includer = Excluder(list(options.includes))
        self.excluder = Excluder(list(options.excludes))
        self.owners = os.geteuid() == 0 if options.owners is None else options.owners
        self.result = RestoreResult()
        self._lock = threading.Lock()
        self._hardlinks: dict[tuple[int, int], bytes] = {}  # key -> path relative to the target
        self._progress = Progress(phase="restore")
        self._report_progress = Throttle(reporter, self._progress)
        self._slots = threading.BoundedSemaphore(min(max(4, options.workers * 4), _MAX_IN_FLIGHT))
        self._idle = threading.Condition()  # notified when the last batch in flight is back
        self._inflight = 0
        self._failure: BaseException | None = None  # stops the restore at the next check
        self._batch = _Batch()
        self._open: dict[int, _Dir] = {}  # id -> folder with an open fd (closed on failure)
        self._writers: WriterPool | None = None
        self._threads: ThreadPoolExecutor | None = None
        self._reader = BlobReader(repo.backend, repo.key.encryption_root)

    def run(self) -> RestoreResult:
        opts = self.options
        node = self.repo.find_node(self.snapshot.root, opts.subpath)
        prefix = os.fsencode(opts.subpath.rstrip("/")) if opts.subpath not in ("", "/") else b""
        try:
            os.makedirs(opts.target, exist_ok=True)
            root_fd = os.open(opts.target, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise RestoreError(f"cannot use target {opts.target}: {exc.strerror}") from None
        self._root_fd = root_fd
        root = _Dir(root_fd, None, b"")
        self._start_writers()
        finished = False
        try:
            if node is None or node.kind == NodeKind.DIR:
                tree = self.snapshot.root if node is None else node.subtree
                assert tree is not None
                self._restore_tree(tree, prefix, b"", lambda: root)
            else:
                parent = prefix.rsplit(b"/", 1)[0]
                self._restore_node(node, parent, b"", lambda: root)
            self._flush()
            self._drain()
            finished = True
        except KeyboardInterrupt:
            raise Interrupted("restore interrupted; the target holds a partial restore") from None
        finally:
            self._stop_writers(abort=not finished)
            self._close_open_dirs()  # only now: no writer can use their fds any more
            os.close(root_fd)
        self._report_progress(force=True)
        return self.result

    # ------------------------------------------------------------------ filters
    def _wanted(self, snap_path: bytes, is_dir: bool) -> tuple[bool, bool]:
        """(restore this entry itself, descend into it)."""
        text = os.fsdecode(snap_path)
        if self.excluder and self.excluder.excluded(text):
            return False, False
        if not self.includer:
            return True, True
        if self.includer.excluded(text):  # an include pattern matches: take everything below too
            return True, True
        return False, is_dir

    # ------------------------------------------------------------------ walking
    def _restore_tree(
        self, tree: BlobId, snap_prefix: bytes, rel: bytes, folder: Callable[[], _Dir]
    ) -> None:
        for node in self.repo.load_tree(tree):
            self._restore_node(node, snap_prefix, rel, folder)

    def _restore_node(
        self,
        node: Node,
        snap_prefix: bytes,
        rel: bytes,
        folder: Callable[[], _Dir],
        forced: bool = False,
    ) -> None:
        snap_path = snap_prefix + b"/" + node.name
        rel_path = rel + b"/" + node.name if rel else node.name
        take, descend = (
            (True, True) if forced else self._wanted(snap_path, node.kind == NodeKind.DIR)
        )
        if node.kind == NodeKind.DIR:
            if not descend:
                return
            self._restore_dir(node, snap_path, rel_path, folder, take)
            return
        if not take:
            return
        if self.options.dry_run:
            self._count(node)
            return
        if node.kind == NodeKind.FILE:
            self._restore_file(node, rel_path, folder())
            return
        fd = folder().fd
        if node.kind == NodeKind.SYMLINK:
            self._make(
                node, rel_path, fd, lambda: os.symlink(node.link_target, node.name, dir_fd=fd)
            )
            self._apply_meta_nofollow(node, rel_path, fd)
        elif node.kind == NodeKind.FIFO:
            self._make(node, rel_path, fd, lambda: os.mkfifo(node.name, 0o600, dir_fd=fd))
            self._apply_meta_nofollow(node, rel_path, fd)
        elif node.kind in (NodeKind.CHARDEV, NodeKind.BLOCKDEV):
            if not self.owners:
                self.result.warnings.append(
                    f"{os.fsdecode(rel_path)}: device node skipped (needs root)"
                )
                return
            kind_bits = stat.S_IFCHR if node.kind == NodeKind.CHARDEV else stat.S_IFBLK
            self._make(
                node,
                rel_path,
                fd,
                lambda: os.mknod(node.name, kind_bits | 0o600, node.rdev, dir_fd=fd),
            )
            self._apply_meta_nofollow(node, rel_path, fd)
        else:
            self.result.warnings.append(
                f"{os.fsdecode(rel_path)}: {node.kind.name.lower()} not restored"
            )

    def _restore_dir(
        self,
        node: Node,
        snap_path: bytes,
        rel_path: bytes,
        parent: Callable[[], _Dir],
        take: bool,
    ) -> None:
        state: dict[str, _Dir] = {}

        def my_dir() -> _Dir:
            # Created on first use, so --include restores only the folders that hold matches.
            if "dir" not in state:
                folder = _Dir(self._open_dir(node, rel_path, parent().fd), node, rel_path)
                with self._lock:
                    self._open[id(folder)] = folder
                state["dir"] = folder
            return state["dir"]

        if take and not self.options.dry_run:
            my_dir()
        assert node.subtree is not None
        try:
            children = self.repo.load_tree(node.subtree)
        except CasError as exc:
            # A damaged listing loses this folder only; the rest of the snapshot is restored.
            self._fail(rel_path, f"directory listing unreadable: {exc}")
            children = []
        # On an exception (refusing to clobber or to follow a symlink stops the whole
        # restore), run() closes the folders that are still open.
        for child in children:
            self._restore_node(
                child, snap_path, rel_path, my_dir, forced=take and bool(self.includer)
            )
        if "dir" in state:
            self._leave(state["dir"])
        elif take:
            with self._lock:
                self.result.dirs += 1

    def _open_dir(self, node: Node, rel_path: bytes, parent_fd: int) -> int:
        try:
            os.mkdir(node.name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            pass
        except OSError as exc:
            raise RestoreError(f"cannot create {os.fsdecode(rel_path)}: {exc.strerror}") from None
        try:
            return os.open(
                node.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd
            )
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise RestoreError(
                    f"refusing to restore into {os.fsdecode(rel_path)}: it exists in the target and is not a "
                    "directory (a symlink is never followed)"
                ) from None
            raise RestoreError(f"cannot open {os.fsdecode(rel_path)}: {exc.strerror}") from None

    def _leave(self, folder: _Dir) -> None:
        """The walk is done with ``folder``: finish it now, or when its last batch is back."""
        with self._lock:
            folder.walked = True
            last = folder.batches == 0
        if last:
            self._finish_dir(folder)
        self._raise_failure()

    def _finish_dir(self, folder: _Dir) -> None:
        """All of a folder's entries exist: apply its metadata and close it."""
        if folder.node is None:
            return  # the target itself: run() closes it, and its metadata is the user's
        with self._lock:
            if self._open.pop(id(folder), None) is None:
                return  # closed already, after a failure
        self._apply_meta_fd(folder.node, folder.rel_path, folder.fd, is_dir=True)
        os.close(folder.fd)
        with self._lock:
            self.result.dirs += 1

    def _close_open_dirs(self) -> None:
        """After a failure: close what is left open (no metadata: the restore is partial)."""
        with self._lock:
            left, self._open = list(self._open.values()), {}
        for folder in left:
            os.close(folder.fd)
        for fd in self._batch.fds:
            if fd >= 0:
                os.close(fd)
        self._batch = _Batch()

    def _make(self, node: Node, rel_path: bytes, dir_fd: int, create: Callable[[], None]) -> None:
        try:
            create()
        except FileExistsError:
            if not self.options.overwrite:
                raise RestoreError(_exists(rel_path)) from None
            self._unlink(node, rel_path, dir_fd)
            create()

    def _unlink(self, node: Node, rel_path: bytes, dir_fd: int) -> None:
        try:
            st = os.stat(node.name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise RestoreError(
                    f"{os.fsdecode(rel_path)} is a directory in the target; not replacing it"
                )
            os.unlink(node.name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ files
    def _restore_file(self, node: Node, rel_path: bytes, folder: _Dir) -> None:
        key = node.hardlink_key
        dir_fd = folder.fd
        if key is not None and key in self._hardlinks:
            source = self._hardlinks[key]
            self._make(
                node, rel_path, dir_fd,
                lambda: os.link(source, node.name, src_dir_fd=self._root_fd, dst_dir_fd=dir_fd, follow_symlinks=False),
            )  # fmt: skip
            with self._lock:
                self.result.links += 1
            return
        if self.options.overwrite:
            # Removed here, created new by the writer (O_EXCL): never written through a link.
            self._unlink(node, rel_path, dir_fd)
        created = -1
        if key is not None:
            # The first name of a hard-link group is created here, so that its other names
            # can be linked to it as soon as the walk reaches them.
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            holder: dict[str, int] = {}

            def create() -> None:
                holder["fd"] = os.open(node.name, flags, 0o600, dir_fd=dir_fd)

            self._make(node, rel_path, dir_fd, create)
            self._hardlinks[key] = rel_path
            created = holder["fd"]
        self._queue(folder, node, rel_path, created)

    def _queue(self, folder: _Dir, node: Node, rel_path: bytes, fd: int) -> None:
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
        batch.fds.append(fd)
        batch.bytes += node.size
        if (
            len(batch.nodes) >= _BATCH_FILES
            or batch.bytes >= _BATCH_BYTES
            or len(batch.dirs) >= _BATCH_DIRS
        ):
            self._flush()

    def _flush(self) -> None:
        """Send the gathered batch to a writer (waiting while too many are in flight)."""
        self._raise_failure()  # before taking the batch: on failure run() closes its fds
        batch, self._batch = self._batch, _Batch()
        if not batch.dirs:
            return
        items, file_fds, rel_paths = self._items(batch)
        self._slots.acquire()
        with self._idle:
            self._inflight += 1
        done = _Done(self, batch.dirs, rel_paths)
        dir_fds = [folder.fd for folder in batch.dirs]
        if self._writers is not None:
            load = batch.bytes + _FILE_LOAD * len(items)
            self._writers.submit(dir_fds, items, file_fds, load, done)  # closes file_fds
        else:
            assert self._threads is not None
            done.file_fds = file_fds
            future = self._threads.submit(
                write_batch, dir_fds, items, file_fds, self._reader, self._add_bytes
            )
            future.add_done_callback(done.from_future)

    def _items(self, batch: _Batch) -> tuple[list[BatchItem], list[int], list[bytes]]:
        """The writer's items, the fds of files created here, and the items' paths.

        Every chunk of the batch is located in one index transaction; if that fails, file
        by file, and a file whose chunks are missing is reported and left out.
        """
        try:
            every = self.repo.locate_many([c for node in batch.nodes for c in node.content])
        except CasError:
            every = None
        items: list[BatchItem] = []
        file_fds: list[int] = []
        rel_paths: list[bytes] = []
        pos = 0
        for node, rel_path, slot, fd in zip(
            batch.nodes, batch.rel_paths, batch.folders, batch.fds, strict=True
        ):
            first, pos = pos, pos + len(node.content)
            try:
                locs = (
                    every[first:pos] if every is not None else self.repo.locate_many(node.content)
                )
                require_sound_file(node, [loc.raw_len for loc in locs])  # issue 12
            except CasError as exc:
                self._fail(rel_path, str(exc))
                if fd >= 0:
                    os.close(fd)
                continue
            chunks = tuple((chunk_id, loc.pack, loc.offset, loc.stored_len, loc.raw_len)
                           for chunk_id, loc in zip(node.content, locs, strict=True))  # fmt: skip
            job = FileJob(chunks, node.size, node.content_hash, node.uid, node.gid,
                          node.mode, node.mtime_ns, self.owners)  # fmt: skip
            items.append((slot, None if fd >= 0 else node.name, job))
            if fd >= 0:
                file_fds.append(fd)
            rel_paths.append(rel_path)
        return items, file_fds, rel_paths

    def _add_bytes(self, n: int) -> None:
        self._progress.bytes_done += n

    def _batch_done(
        self, dirs: list[_Dir], rel_paths: list[bytes], results: list[Written] | None
    ) -> None:
        """A batch's outcomes (on a writer's receiver thread or a writer thread); None when
        it was lost with its writer, whose failure then stops the restore."""
        try:
            if results is not None:
                for rel_path, written in zip(rel_paths, results, strict=True):
                    self._written(rel_path, written)
                self._report_progress()
        finally:
            last = []
            with self._lock:
                for folder in dirs:
                    folder.batches -= 1
                    if folder.walked and folder.batches == 0:
                        last.append(folder)
            if results is not None:
                for folder in last:
                    self._finish_dir(folder)
            self._slots.release()
            with self._idle:
                self._inflight -= 1
                if self._inflight == 0:
                    self._idle.notify_all()

    def _written(self, rel_path: bytes, written: Written) -> None:
        if written.exists:
            self._stop(RestoreError(_exists(rel_path)))
        elif written.error is not None:
            self._fail(rel_path, written.error)
        else:
            with self._lock:
                self.result.files += 1
                self.result.bytes += written.bytes
                if written.warning is not None:
                    self.result.warnings.append(f"{os.fsdecode(rel_path)}: {written.warning}")
            if self._writers is not None:
                self._progress.bytes_done += written.bytes
            self._progress.files_done += 1

    def _start_writers(self) -> None:
        opts = self.options
        backend = self.repo.backend
        if isinstance(backend, LocalBackend) and opts.workers > 1 and not opts.dry_run:
            self._writers = WriterPool(backend.root, self.repo.key.encryption_root, opts.workers)
        else:
            self._threads = ThreadPoolExecutor(opts.workers, thread_name_prefix="restore")

    def _stop_writers(self, abort: bool) -> None:
        if self._writers is not None:
            self._writers.close(abort=abort)
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)

    def _drain(self) -> None:
        """Wait for every batch in flight, then raise what stopped the restore, if anything."""
        with self._idle:
            while self._inflight:
                self._idle.wait()
        self._raise_failure()

    def _stop(self, failure: BaseException) -> None:
        with self._lock:
            if self._failure is None:
                self._failure = failure

    def _raise_failure(self) -> None:
        failure = self._failure or (self._writers.failure if self._writers else None)
        if failure is not None:
            raise failure

    # ------------------------------------------------------------------ metadata
    def _apply_meta_fd(self, node: Node, rel_path: bytes, fd: int, *, is_dir: bool) -> None:
        try:
            apply_metadata(fd, node.uid, node.gid, node.mode, node.mtime_ns, owners=self.owners)
        except OSError as exc:
            with self._lock:
                self.result.warnings.append(
                    f"{os.fsdecode(rel_path)}: metadata not fully restored: {exc.strerror}"
                )

    def _apply_meta_nofollow(self, node: Node, rel_path: bytes, dir_fd: int) -> None:
        try:
            if self.owners:
                os.chown(node.name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
            if node.kind != NodeKind.SYMLINK:
                os.chmod(node.name, node.mode, dir_fd=dir_fd, follow_symlinks=False)
            os.utime(
                node.name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False
            )
        except (OSError, NotImplementedError) as exc:
            with self._lock:
                self.result.warnings.append(
                    f"{os.fsdecode(rel_path)}: metadata not fully restored: {exc}"
                )
        with self._lock:
            self.result.files += 1

    def _count(self, node: Node) -> None:
        with self._lock:
            self.result.files += 1
            self.result.bytes += node.size

    def _fail(self, rel_path: bytes, message: str) -> None:
        with self._lock:
            self.result.errors.append(f"{os.fsdecode(rel_path)}: {message}")


def _exists(rel_path: bytes) -> str:
    return f"{os.fsdecode(rel_path)} exists in the target (use --overwrite)"


class _Done:
    """Called once with a batch's outcomes."""

    __slots__ = ("restorer", "dirs", "rel_paths", "file_fds")

    def __init__(self, restorer: Restorer, dirs: list[_Dir], rel_paths: list[bytes]) -> None:
        self.restorer, self.dirs, self.rel_paths = restorer, dirs, rel_paths
        self.file_fds: list[int] = []  # threads only: closed here if the batch never runs

    def __call__(self, results: list[Written] | None) -> None:
        self.restorer._batch_done(self.dirs, self.rel_paths, results)

    def from_future(self, future: Future[list[Written]]) -> None:
        results: list[Written] | None = None
        if future.cancelled():  # the restore stopped before this batch ran
            for fd in self.file_fds:
                os.close(fd)
        else:
            try:
                results = future.result()
            except BaseException as exc:  # noqa: BLE001 - a bug in a writer: stop the restore
                self.restorer._stop(exc)
        self(results)


def restore(
    repo: Repository,
    snapshot: Snapshot,
    options: RestoreOptions,
    reporter: Reporter = NULL_REPORTER,
) -> RestoreResult:
    try:
        return Restorer(repo, snapshot, options, reporter).run()
    except NotFound:
        raise
