"""Restore a snapshot (or one folder or file of it) into a target directory.

Never writes outside the target, whatever the repository says:
- names are validated by the tree decoder (no ``/``, NUL, ``.``, ``..``, no duplicates);
- every file system call is relative to an open directory fd (``dir_fd``) and uses
  ``O_NOFOLLOW``, so a symlink (restored earlier or already in the target) is never
  followed: a directory that turns out to be a symlink stops the restore;
- symlinks are created as links, never written through; ``--overwrite`` unlinks the
  old entry first, so it cannot write through a hard link or symlink either.
File contents are written by writer processes (archiver/writers.py) on fds opened
by the walking thread and passed to them; directory metadata is applied after all
of a directory's entries exist.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from casbackup.archiver.excludes import Excluder
from casbackup.archiver.writers import (
    BlobReader,
    FileJob,
    WriterPool,
    Written,
    apply_metadata,
    write_file,
)
from casbackup.errors import CasError, Interrupted, NotFound, RestoreError
from casbackup.repo.ids import BlobId
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
        self._slots = threading.BoundedSemaphore(max(4, options.workers * 16))
        self._idle = threading.Condition()  # notified when the last file in flight is written
        self._inflight = 0
        self._failure: BaseException | None = None  # an unexpected fault in a writer thread
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
        self._start_writers()
        try:
            if node is None or node.kind == NodeKind.DIR:
                tree = self.snapshot.root if node is None else node.subtree
                assert tree is not None
                self._restore_tree(tree, prefix, b"", lambda: root_fd)
            else:
                parent = prefix.rsplit(b"/", 1)[0]
                self._restore_node(node, parent, b"", lambda: root_fd)
            self._drain(all_done=True)
        except KeyboardInterrupt:
            raise Interrupted("restore interrupted; the target holds a partial restore") from None
        finally:
            self._stop_writers()
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
        self, tree: BlobId, snap_prefix: bytes, rel: bytes, dir_fd: Callable[[], int]
    ) -> None:
        for node in self.repo.load_tree(tree):
            self._restore_node(node, snap_prefix, rel, dir_fd)

    def _restore_node(
        self,
        node: Node,
        snap_prefix: bytes,
        rel: bytes,
        dir_fd: Callable[[], int],
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
            self._restore_dir(node, snap_path, rel_path, dir_fd, take)
            return
        if not take:
            return
        if self.options.dry_run:
            self._count(node)
            return
        fd = dir_fd()
        if node.kind == NodeKind.FILE:
            self._restore_file(node, rel_path, fd)
        elif node.kind == NodeKind.SYMLINK:
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
        parent_fd: Callable[[], int],
        take: bool,
    ) -> None:
        state: dict[str, int] = {}

        def my_fd() -> int:
            # Created on first use, so --include restores only the folders that hold matches.
            if "fd" not in state:
                state["fd"] = self._open_dir(node, rel_path, parent_fd())
            return state["fd"]

        if take and not self.options.dry_run:
            my_fd()
        assert node.subtree is not None
        try:
            children = self.repo.load_tree(node.subtree)
        except CasError as exc:
            # A damaged listing loses this folder only; the rest of the snapshot is restored.
            self._fail(rel_path, f"directory listing unreadable: {exc}")
            children = []
        try:
            for child in children:
                self._restore_node(
                    child, snap_path, rel_path, my_fd, forced=take and bool(self.includer)
                )
        except BaseException:
            # Refusing to clobber or to follow a symlink stops the whole restore: no fd leaks.
            if "fd" in state:
                os.close(state.pop("fd"))
            raise
        if "fd" in state:
            fd = state["fd"]
            self._drain(all_done=False)
            self._apply_meta_fd(node, rel_path, fd, is_dir=True)
            os.close(fd)
            with self._lock:
                self.result.dirs += 1
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

    def _make(self, node: Node, rel_path: bytes, dir_fd: int, create: Callable[[], None]) -> None:
        try:
            create()
        except FileExistsError:
            if not self.options.overwrite:
                raise RestoreError(
                    f"{os.fsdecode(rel_path)} exists in the target (use --overwrite)"
                ) from None
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
    def _restore_file(self, node: Node, rel_path: bytes, dir_fd: int) -> None:
        key = node.hardlink_key
        if key is not None and key in self._hardlinks:
            source = self._hardlinks[key]
            self._make(
                node, rel_path, dir_fd,
                lambda: os.link(source, node.name, src_dir_fd=self._root_fd, dst_dir_fd=dir_fd, follow_symlinks=False),
            )  # fmt: skip
            with self._lock:
                self.result.links += 1
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        holder: dict[str, int] = {}

        def create() -> None:
            holder["fd"] = os.open(node.name, flags, 0o600, dir_fd=dir_fd)

        self._make(node, rel_path, dir_fd, create)
        if key is not None:
            self._hardlinks[key] = rel_path
        fd = holder["fd"]
        try:
            chunks = [(chunk_id, loc.pack, loc.offset, loc.stored_len, loc.raw_len)
                      for chunk_id, loc in zip(node.content, self.repo.locate_many(node.content), strict=True)]  # fmt: skip
        except CasError as exc:
            os.close(fd)
            self._fail(rel_path, str(exc))
            return
        job = FileJob(tuple(chunks), node.size, node.content_hash, node.uid, node.gid,
                      node.mode, node.mtime_ns, self.owners)  # fmt: skip
        self._slots.acquire()
        with self._idle:
            self._inflight += 1
        done = _Done(self, rel_path)
        if self._writers is not None:
            self._writers.submit(fd, job, done)  # closes our copy of fd
        else:
            assert self._threads is not None
            future = self._threads.submit(write_file, fd, job, self._reader, self._add_bytes)
            future.add_done_callback(done.from_future)

    def _add_bytes(self, n: int) -> None:
        self._progress.bytes_done += n

    def _written(self, rel_path: bytes, written: Written) -> None:
        """A file's outcome (on a writer's receiver thread or a writer thread)."""
        try:
            if written.error is not None:
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
                self._report_progress()
        finally:
            self._slots.release()
            with self._idle:
                self._inflight -= 1
                if self._inflight == 0:
                    self._idle.notify_all()

    def _start_writers(self) -> None:
        opts = self.options
        backend = self.repo.backend
        if isinstance(backend, LocalBackend) and opts.workers > 1 and not opts.dry_run:
            self._writers = WriterPool(backend.root, self.repo.key.encryption_root, opts.workers)
        else:
            self._threads = ThreadPoolExecutor(opts.workers, thread_name_prefix="restore")

    def _stop_writers(self) -> None:
        if self._writers is not None:
            self._writers.close()
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)

    def _drain(self, all_done: bool) -> None:
        """Raise a writer's unexpected fault; with ``all_done``, wait for every file first."""
        if all_done:
            with self._idle:
                while self._inflight:
                    self._idle.wait()
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


class _Done:
    """Called once with a file's outcome."""

    __slots__ = ("restorer", "rel_path")

    def __init__(self, restorer: Restorer, rel_path: bytes) -> None:
        self.restorer, self.rel_path = restorer, rel_path

    def __call__(self, written: Written) -> None:
        self.restorer._written(self.rel_path, written)

    def from_future(self, future) -> None:  # type: ignore[no-untyped-def]
        try:
            written = future.result()
        except BaseException as exc:  # noqa: BLE001 - a bug in a writer: stop the restore
            self.restorer._failure = exc
            written = Written(error=f"not written: {exc}")
        self(written)


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
