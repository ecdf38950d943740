"""The backup pipeline: walk sources, reuse or read files, write trees and a snapshot.

Processes: the caller's thread walks directories (stat is cheap and ordered) and
keeps everything that needs one writer (packs, index, trees). File contents are
read, chunked, hashed, compressed, encrypted and verified in reader processes
(archiver/workers.py), small files in batches, so Python's per-file work runs on
every core. A bounded number of files is in flight, so memory stays bounded
whatever the tree.

Change detection (incremental/differential): a file is reused from the parent's
tree when size, mtime, ctime and inode match, every chunk is still indexed, and
neither time is within RACE_MARGIN_NS of the parent's start (borg's guard: a file
written while the parent ran may have been read half-changed and would then look
unchanged forever).
"""

from __future__ import annotations

import getpass
import operator
import os
import signal
import socket
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

import blake3

from casbackup import __version__
from casbackup.archiver.compare import Counts, SubtreeJob, file_unchanged
from casbackup.archiver.excludes import Excluder
from casbackup.archiver.later import Later
from casbackup.archiver.metadata import Xattrs, node_from_stat, read_xattrs, stat_matches
from casbackup.archiver.nesting import Level, drive
from casbackup.archiver.workers import (
    BATCH_BYTES,
    BATCH_FILES,
    CancelFlag,
    FileOutcome,
    ReaderPool,
    WorkerSetup,
)
from casbackup.chunking.chunker import Chunker
from casbackup.errors import CasError, Interrupted, NotFound, UsageError
from casbackup.repo.ids import BlobId, Kind
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import (
    BACKUP_TYPES,
    DatabaseRecord,
    FsSnapshotRecord,
    Snapshot,
    Summary,
    now_utc,
)
from casbackup.repo.tree import Node, NodeKind
from casbackup.reporter import NULL_REPORTER, Progress, Reporter, Throttle
from casbackup.store.local import LocalBackend

if TYPE_CHECKING:
    from casbackup.fssnap.session import FsSnapshotPlan

MAX_RECORDED_ERRORS = 1000
MAX_PENDING_DIRS = 4096  # folders waiting for their files; bounds memory
DATABASES_DIR = b".databases"


class DumpSource(Protocol):
    """A byte stream to store as a file in the snapshot (a database dump)."""

    def readinto(self, buffer: Any) -> int: ...

    def finish(self) -> Any: ...  # returns engines.base.DumpInfo or raises DatabaseError

    def close(self) -> None: ...


@dataclass(frozen=True)
class StreamSpec:
    name: str  # logical database name
    filename: str  # file name under /.databases/
    engine: str
    open: Callable[[], DumpSource]
    # False for a file stored beside a dump whose own record names it (PostgreSQL globals):
    # stored and checked like a dump, but no database record of its own.
    record: bool = True


@dataclass(frozen=True)
class BackupOptions:
    paths: tuple[str, ...]
    type: str = "incremental"
    app: str | None = None
    tags: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    one_file_system: bool = False
    dry_run: bool = False
    workers: int = 2  # reader processes
    streams: tuple[StreamSpec, ...] = ()
    app_definition: dict[str, Any] | None = None
    parent: str | None = None  # force a parent snapshot id
    xattrs: bool = True  # record extended attributes, ACLs and capabilities (--no-xattrs: off)
    # Database files that ``streams`` dump through their engine (absolute paths): left out
    # of the walk with their -wal, -shm and -journal companions (a live file read while it
    # changes is neither consistent nor needed; the dump restores the database).
    database_files: tuple[str, ...] = ()

    # File-system snapshots (fssnap/): (source, folder to read it from); the tree records
    # the source's own path. `fs_snapshots` goes into the snapshot record; `before_save`
    # runs after everything was read and may raise to fail the backup (a full LVM snapshot).
    read_from: tuple[tuple[str, str], ...] = ()
    fs_snapshots: tuple[FsSnapshotRecord, ...] = ()
    before_save: Callable[[], None] | None = None
    fs_plan: FsSnapshotPlan | None = None  # applied by archiver/application.py


# The files SQLite keeps beside a database while it is open (WAL mode, rollback journal).
DATABASE_COMPANIONS = ("", "-wal", "-shm", "-journal")


@dataclass
class BackupResult:
    """``warnings``: what could not be stored (files, folders, attributes): a partial
    backup (exit 3). ``notes``: what the user should know though everything was stored
    (a file that changed while it was read, database files left to their dumps)."""

    snapshot: Snapshot | None
    parent: Snapshot | None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Counters:
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    dirs: int = 0
    files_total: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    errors: int = 0


def choose_parent(
    repo: Repository, options: BackupOptions
) -> tuple[Snapshot | None, Snapshot | None]:
    """Return (reference, reuse_source): the latest of the group, and what files may be reused from."""
    if options.parent:
        forced = repo.resolve_snapshot(options.parent)
        return forced, forced
    group = [s for s in repo.list_snapshots(warnings=[]) if _same_group(s, options)]
    latest = group[-1] if group else None
    if options.type == "full":
        return latest, None
    if options.type == "incremental":
        return latest, latest
    fulls = [s for s in group if s.type == "full"]
    base = fulls[-1] if fulls else None
    return base, base


def _same_group(snap: Snapshot, options: BackupOptions) -> bool:
    if options.app is not None:
        return snap.app == options.app
    return (
        snap.app is None
        and snap.host == socket.gethostname()
        and sorted(snap.paths) == sorted(options.paths)
    )


def _renames(read_from: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """(read folder, original path) pairs, so excludes match the paths users wrote."""
    return tuple((read, os.path.abspath(source)) for source, read in read_from)


class Backup:
    def __init__(
        self, repo: Repository, options: BackupOptions, reporter: Reporter = NULL_REPORTER
    ) -> None:
        if options.type not in BACKUP_TYPES:
            raise UsageError(f"backup type must be one of {', '.join(BACKUP_TYPES)}")
        self.repo = repo
        self.options = options
        self.reporter = reporter
        self._database_files = _database_files(options)
        self.excluder = Excluder(
            list(options.excludes), exact=self._database_files, rename=_renames(options.read_from)
        )
        self._read_from = {
            os.fsencode(os.path.abspath(a)): os.fsencode(b) for a, b in options.read_from
        }
        self.chunker = Chunker(repo.config.chunker, repo.key.chunker_seed)
        self.dump_chunker = Chunker(repo.config.dump_chunker, repo.key.chunker_seed)
        self.counters = _Counters()
        self.warnings: list[str] = []
        self.notes: list[str] = []
        self._keep_meta = True  # parent nodes may stand as they are (same --no-xattrs)
        self._progress = Progress(phase="backup")
        self._report_progress = Throttle(reporter, self._progress)
        self._count_lock = threading.Lock()
        self._pending_dirs: deque[_PendingDir] = deque()
        self._hardlinks: dict[tuple[int, int], Later[Node | None] | Node] = {}
        self._uid_names: dict[int, str] = {}
        self._gid_names: dict[int, str] = {}
        self._ready = threading.Condition()  # shared by every Later of this backup
        self._cancelled = CancelFlag()
        self._pool: ReaderPool | None = None
        # Files in flight: two batches per reader keeps every reader fed.
        self._slots = threading.BoundedSemaphore(2 * BATCH_FILES * max(1, options.workers))
        self._batch: list[tuple[bytes, int, _Reading]] = []
        self._batch_bytes = 0
        self._reuse_start_ns = 0
        # Subtree comparison in the readers (archiver/compare.py): folders found unchanged,
        # how many open comparisons cover the folder being walked, and its depth.
        self._compare_subtrees = False
        self._verdicts: dict[bytes, Counts] = {}
        self._compares: dict[bytes, Later[dict[bytes, Counts]]] = {}  # by path, unanswered
        self._split: set[bytes] = set()  # folders whose subfolders were handed out instead
        self._covered = 0
        self._depth = 0

    # ------------------------------------------------------------------ entry
    def run(self) -> BackupResult:
        opts = self.options
        started = time.monotonic()
        stats0 = (
            self.repo.stats_bytes_added,
            self.repo.stats_bytes_stored,
            self.repo.stats_blobs_added,
        )
        time_text, start_ns = now_utc()
        paths = tuple(os.path.abspath(p) for p in opts.paths)
        for p in paths:
            if not os.path.lexists(p):
                raise NotFound(f"source {p} does not exist")
        opts = replace(opts, paths=paths)
        self.options = opts
        reference, reuse = choose_parent(self.repo, opts)
        notes = self.notes
        if opts.type != "full" and reuse is None:
            notes.append(
                f"no {'full ' if opts.type == 'differential' else ''}parent snapshot: reading every file"
            )
            self.reporter.info(notes[-1])
        excluded_dbs = tuple(sorted(p for p in opts.database_files if _inside(p, paths)))
        if excluded_dbs:
            notes.append(
                "left out of the file walk, stored as database dumps instead (with their -wal, "
                "-shm and -journal files): " + ", ".join(excluded_dbs)
            )
            self.reporter.info(notes[-1])
        self._reference = reference
        self._reuse = reuse
        # A parent recorded without extended attributes (--no-xattrs, or made before they
        # were recorded) cannot lend its nodes to a backup that records them, nor the
        # reverse: ctime says the attributes are unchanged, not that they were recorded.
        self._keep_meta = reuse is None or reuse.xattrs == opts.xattrs
        self._reuse_start_ns = reuse.start_ns if reuse else 0
        if reference is not None:
            # The previous snapshot's size is a good estimate of this one's: it gives the
            # progress line an ETA without a separate scan of the sources.
            self._progress.files_total = reference.summary.files_total
            self._progress.bytes_total = reference.summary.bytes_total
        db_records: list[DatabaseRecord] = []
        self._pool = self._start_readers()
        try:
            with self._deferred_sigint():
                root = self._archive_roots(paths, reference, db_records)
                if self._cancelled.is_set():  # files skipped after the request: no snapshot
                    raise KeyboardInterrupt
            self._report_progress(force=True)
        except KeyboardInterrupt:
            failure = self._pool.failure if self._pool is not None else None
            self._cancelled.set()
            self._shutdown()
            self._keep_committed()
            if failure is not None:  # a reader failed and stopped the others: say why
                raise failure from None
            raise Interrupted(
                "backup interrupted; the chunks stored so far are kept for the next run"
            ) from None
        except BaseException:
            self._cancelled.set()
            self._shutdown()
            self._keep_committed()
            raise
        self._shutdown()
        c = self.counters
        summary = Summary(
            files_new=c.files_new, files_changed=c.files_changed, files_unchanged=c.files_unchanged,
            dirs=c.dirs, files_total=c.files_total, bytes_total=c.bytes_total, bytes_read=c.bytes_read,
            bytes_added=self.repo.stats_bytes_added - stats0[0],
            bytes_stored=self.repo.stats_bytes_stored - stats0[1],
            blobs_added=self.repo.stats_blobs_added - stats0[2], errors=c.errors,
            duration_s=round(time.monotonic() - started, 3),
        )  # fmt: skip
        parent_id = reference.id if reference else None
        base_full = None
        if opts.type == "differential" and reuse is not None:
            base_full = reuse.id
        elif opts.type == "incremental" and reuse is not None:
            base_full = reuse.id if reuse.type == "full" else reuse.base_full
        # Without a parent to reuse from every file was read: record what was done ("full").
        snap = Snapshot(
            time=time_text, start_ns=start_ns, host=socket.gethostname(), user=getpass.getuser(),
            paths=paths, tree=root.hex(), type=opts.type if reuse else "full", app=opts.app, tags=tuple(opts.tags),
            parent=parent_id, base_full=base_full, excludes=tuple(opts.excludes), summary=summary,
            databases=tuple(db_records), app_definition=opts.app_definition,
            program_version=__version__, errors=tuple(self.warnings[:MAX_RECORDED_ERRORS]),
            xattrs=opts.xattrs, excluded_databases=excluded_dbs,
            fs_snapshots=tuple(opts.fs_snapshots),
        )  # fmt: skip
        if opts.before_save is not None:
            opts.before_save()
        if opts.dry_run:
            return BackupResult(None, reference, self.warnings, notes)
        saved = self.repo.save_snapshot(snap)
        return BackupResult(saved, reference, self.warnings, notes)

    @contextmanager
    def _deferred_sigint(self) -> Iterator[None]:
        """Turn Ctrl-C into a request that the pipeline honours at a safe point.

        An exception raised asynchronously could land between storing a pack and recording
        it, leaving a pack no index names. Instead the first SIGINT sets the cancel flag,
        which the walker and the workers check between files and chunks; a second Ctrl-C
        exits at once, like a kill (the repository stays consistent).
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(_signum: int, _frame: object) -> None:
            if self._cancelled.is_set():
                # Second Ctrl-C: leave now, as a kill would. Crash safety keeps the repository
                # consistent; an exception here could strike inside a lock and hang.
                os.write(2, b"error: interrupted twice; stopped at once\n")
                os._exit(130)
            self._cancelled.set()

        previous = signal.signal(signal.SIGINT, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _start_readers(self) -> ReaderPool:
        repo = self.repo
        setup = WorkerSetup(
            id_key=repo.key.chunk_id_key,
            encryption_root=repo.key.encryption_root,
            chunker=repo.config.chunker,
            chunker_seed=repo.key.chunker_seed,
            compression_level=repo.compression_level,
            verify=repo.verify_before_write,
            dry_run=self.options.dry_run,
            cache_path=None if self.options.dry_run else repo.cache.path,
            repo_root=repo.backend.root if isinstance(repo.backend, LocalBackend) else None,
            excludes=tuple(self.options.excludes),
            exact_excludes=self._database_files,
            exclude_renames=_renames(self.options.read_from),
            one_file_system=self.options.one_file_system,
        )
        # Worth it only with a parent to compare with and a reader to spare for it.
        self._compare_subtrees = (
            self._reuse is not None
            and self._keep_meta
            and setup.repo_root is not None
            and not self.options.dry_run
        )
        store = repo.store_sealed_batch

        def on_read(n: int) -> None:
            self._progress.bytes_done += n

        with repo.cache.closed_for_fork():  # so each reader can open its own view of it
            return ReaderPool(setup, max(1, self.options.workers), store, on_read, self._cancelled)

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _keep_committed(self) -> None:
        """After an abort, index what was stored so the next run does not store it again."""
        if self.options.dry_run:
            return
        try:
            self.repo.flush()
        except (CasError, OSError):
            pass

    # ------------------------------------------------------------------ roots
    def _archive_roots(
        self, paths: tuple[str, ...], reference: Snapshot | None, dbs: list[DatabaseRecord]
    ) -> BlobId:
        """Build the tree from / down to each source, then the sources themselves."""
        # Nested dict of path components; a leaf (None) is a source to archive in full.
        layout: dict[bytes, Any] = {}
        for p in sorted(paths):
            parts = [x for x in os.fsencode(p).split(b"/") if x]
            node = layout
            for part in parts[:-1]:
                child = node.setdefault(part, {})
                if child is None:
                    break  # an ancestor is already a source: nested paths are covered
                node = child
            else:
                if parts:
                    node[parts[-1]] = None
                else:
                    raise UsageError("backing up / as a whole is not supported; name its folders")
        ref_root = reference.root if reference is not None else None
        reuse_root = self._reuse.root if self._reuse is not None else None
        nodes = drive(self._build_layout(b"", layout, ref_root, reuse_root))
        if self.options.streams:
            nodes.append(self._archive_streams(dbs))
            nodes.sort(key=lambda n: n.name)
        return self._save_tree(nodes)

    def _build_layout(
        self,
        prefix: bytes,
        layout: dict[bytes, Any],
        ref_tree: BlobId | None,
        reuse_tree: BlobId | None,
    ) -> Level[list[Node]]:
        """The nodes of the folders from / down to the sources (a level for ``drive``)."""
        ref_nodes = self._load_children(ref_tree)
        reuse_nodes = self._load_children(reuse_tree) if reuse_tree != ref_tree else ref_nodes
        nodes: list[Node] = []
        for name in sorted(layout):
            path = prefix + b"/" + name
            sub = layout[name]
            try:
                st = os.lstat(path)
            except OSError as exc:
                raise NotFound(f"cannot read source {os.fsdecode(path)}: {exc.strerror}") from None
            if sub is None:
                # Read from a file-system snapshot when there is one; names stay the source's.
                read = self._read_from.get(path, path)
                if read != path:
                    try:
                        st = os.lstat(read)
                    except OSError as exc:
                        raise NotFound(
                            f"cannot read source {os.fsdecode(path)} from its file-system "
                            f"snapshot {os.fsdecode(read)}: {exc.strerror}"
                        ) from None
                node = yield self._archive_entry(
                    read, name, st, ref_nodes.get(name), reuse_nodes.get(name), st.st_dev
                )
                if isinstance(node, Later):
                    self._finish_dirs(keep=0)
                    if self._pending_dirs:  # an invariant, checked so a bug fails, never hangs
                        raise RuntimeError("internal error: a folder was left unfinished")
                    node = node.result()
                if node is not None:
                    nodes.append(node)
                continue
            ref_child, reuse_child = ref_nodes.get(name), reuse_nodes.get(name)
            children = yield self._build_layout(
                path, sub,
                ref_child.subtree if ref_child else None,
                reuse_child.subtree if reuse_child else None,
            )  # fmt: skip
            nodes.append(self._dir_node(path, name, st, self._save_tree(children)))
        return nodes

    def _load_children(self, tree: BlobId | None) -> dict[bytes, Node]:
        if tree is None:
            return {}
        try:
            return {n.name: n for n in self.repo.load_tree(tree)}
        except CasError as exc:
            # A damaged parent tree only costs re-reading; never fail the backup for it.
            self._notice(f"parent tree unreadable, re-reading its files: {exc}")
            return {}

    def _save_tree(self, nodes: list[Node]) -> BlobId:
        if self.options.dry_run:
            return self.repo.blob_id(_encode(nodes))
        return self.repo.save_tree(nodes)

    def _dir_node(
        self,
        path: bytes,
        name: bytes,
        st: os.stat_result,
        subtree: BlobId,
        old: Node | None = None,
    ) -> Node:
        if old is not None and old.subtree == subtree and self._same_meta(old, st):
            return old  # lets the folder above reuse its tree too
        return node_from_stat(name, st, self._uid_names, self._gid_names, subtree=subtree,
                              xattrs=self._xattrs(path))  # fmt: skip

    def _meta(self, path: bytes, name: bytes, st: os.stat_result) -> Node:
        return node_from_stat(name, st, self._uid_names, self._gid_names,
                              xattrs=self._xattrs(path))  # fmt: skip

    def _same_meta(self, old: Node, st: os.stat_result) -> bool:
        """Whether the parent's node for this entry can stand as it is (``stat_matches``)."""
        return self._keep_meta and stat_matches(old, st, self._uid_names, self._gid_names)

    def _xattrs(self, path: bytes) -> Xattrs:
        """The entry's extended attributes (ACLs, capabilities), unless --no-xattrs;
        each one that cannot be read is reported and left out."""
        if not self.options.xattrs:
            return ()
        pairs, problems = read_xattrs(path)
        for problem in problems:
            self._problem(f"{os.fsdecode(path)}: {problem}")
        return pairs

    def _mount_point(self, st: os.stat_result, root_dev: int) -> bool:
        """A folder on another file system than its source's, under --one-file-system."""
        return self.options.one_file_system and st.st_dev != root_dev

    # ------------------------------------------------------------------ walking
    def _archive_entry(
        self,
        path: bytes,
        name: bytes,
        st: os.stat_result,
        ref: Node | None,
        reuse: Node | None,
        root_dev: int,
    ) -> Level[Node | Later[Node | None] | None]:
        """One entry (a level for ``drive``: a folder's walk goes on below it)."""
        if stat.S_ISDIR(st.st_mode):
            return (yield self._archive_dir(path, name, st, ref, reuse, root_dev))
        return self._archive_leaf(path, name, st, ref, reuse)

    def _archive_leaf(
        self,
        path: bytes,
        name: bytes,
        st: os.stat_result,
        ref: Node | None,
        reuse: Node | None,
    ) -> Node | Later[Node | None] | None:
        """Anything but a folder: a file is handed to the readers, the rest recorded here."""
        if self._cancelled.is_set():
            raise KeyboardInterrupt
        mode = st.st_mode
        if stat.S_ISREG(mode):
            return self._archive_file(path, name, st, ref, reuse)
        target = b""
        if stat.S_ISLNK(mode):
            try:
                target = os.readlink(path)
            except OSError as exc:
                self._error(path, exc)
                return None
        if reuse is not None and reuse.link_target == target and self._same_meta(reuse, st):
            return reuse
        return node_from_stat(name, st, self._uid_names, self._gid_names, link_target=target,
                              xattrs=self._xattrs(path))  # fmt: skip

    def _mount_point_node(
        self, path: bytes, name: bytes, st: os.stat_result, old: Node | None
    ) -> Node:
        """A mount point under --one-file-system: an empty folder with the metadata seen
        there, so that a restored system has its /proc, /sys, /dev, /run to mount on."""
        with self._count_lock:
            self.counters.dirs += 1
        old = old if old is not None and old.kind == NodeKind.DIR else None
        return self._dir_node(path, name, st, self._save_tree([]), old)

    def _archive_dir(
        self,
        path: bytes,
        name: bytes,
        st: os.stat_result,
        ref: Node | None,
        reuse: Node | None,
        root_dev: int,
    ) -> Level[Later[Node | None] | None]:
        """A folder: its entries, each subfolder as a level below (see archiver/nesting.py)."""
        if self._cancelled.is_set():
            raise KeyboardInterrupt
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self._error(path, exc)
            return None
        ref_nodes = self._load_children(ref.subtree) if ref is not None and ref.subtree else {}
        if reuse is ref:
            reuse_nodes = ref_nodes
        else:
            reuse_nodes = (
                self._load_children(reuse.subtree) if reuse is not None and reuse.subtree else {}
            )
        listed = self._stat_entries(entries)
        self._start_compares(path, listed, reuse_nodes, root_dev)
        children: list[Node | Later[Node | None]] = []
        kept: list[tuple[int, bytes, os.stat_result, Node | None]] = []
        self._depth += 1
        try:
            for entry, child_st in listed:
                child_path, child_name = entry.path, entry.name
                mode = child_st.st_mode
                child_reuse = reuse_nodes.get(child_name)
                child: Node | Later[Node | None] | None
                if not stat.S_ISDIR(mode):
                    if (
                        child_reuse is not None
                        and stat.S_ISREG(mode)
                        and self._unchanged_meta(child_reuse, child_st)
                    ):
                        # Unchanged: keep the parent's content unread. Whether its chunks are
                        # all still indexed is asked once for the whole folder, below.
                        kept.append(
                            (len(children), child_path, child_st, ref_nodes.get(child_name))
                        )
                        children.append(
                            self._kept_file(child_path, child_name, child_st, child_reuse)
                        )
                        continue
                    child = self._archive_leaf(
                        child_path, child_name, child_st, ref_nodes.get(child_name), child_reuse
                    )
                elif self._mount_point(child_st, root_dev):
                    child = self._mount_point_node(child_path, child_name, child_st, child_reuse)
                else:
                    answered = False  # a reader compared this folder: what is unchanged is known
                    if child_reuse is not None:
                        answered, same = self._compared(child_path, child_st, child_reuse)
                        if same is not None:
                            children.append(same)
                            continue
                    self._covered += answered
                    try:
                        child = yield self._archive_dir(
                            child_path, child_name, child_st, ref_nodes.get(child_name),
                            child_reuse, root_dev,
                        )  # fmt: skip
                    finally:
                        self._covered -= answered
                if child is not None:
                    children.append(child)
        finally:
            self._depth -= 1
        if kept:
            self._confirm_kept(kept, children)
        # Finishing this folder's tree waits for its files; do it later (in post-order,
        # from a queue) so the walker never stalls while workers drain, and workers never
        # starve while the walker waits at the end of each small folder.
        done: Later[Node | None] = Later(self._ready)
        old = list(reuse_nodes.values()) if reuse is not None else None
        self._pending_dirs.append(_PendingDir(done, path, name, st, children, reuse, old))
        self._finish_dirs(keep=MAX_PENDING_DIRS)
        return done

    def _stat_entries(
        self, entries: list[os.DirEntry[bytes]], *, quiet: bool = False
    ) -> list[tuple[os.DirEntry[bytes], os.stat_result]]:
        """The entries to archive with their lstat, after excludes (mount points stay:
        the walk stores them as empty folders under --one-file-system).

        ``quiet``: a look ahead; errors are reported when the walk itself gets there.
        """
        excluder = self.excluder if self.excluder else None
        listed = []
        for entry in entries:
            if excluder is not None and excluder.excluded(os.fsdecode(entry.path)):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                if not quiet:
                    self._error(entry.path, exc)
                continue
            listed.append((entry, st))
        return listed

    def _start_compares(
        self,
        path: bytes,
        listed: list[tuple[os.DirEntry[bytes], os.stat_result]],
        reuse_nodes: dict[bytes, Node],
        root_dev: int,
    ) -> None:
        """Hand this folder's subfolders to the readers to compare with the parent's trees.

        Not below a folder a reader already answered for (the answer covers every depth).
        At the top of a source, the folders handed out are first split into their own
        subfolders (a few levels down) until there are enough to keep every reader busy:
        handing out a source's three top folders would leave readers idle behind the
        biggest one.
        """
        if not self._compare_subtrees or self._covered or not reuse_nodes:
            return
        if path in self._split:
            return  # its subfolders were handed out (or split) already
        subdirs = [
            (entry.path, old)
            for entry, st in listed
            if stat.S_ISDIR(st.st_mode)
            and not self._mount_point(st, root_dev)
            and (old := reuse_nodes.get(entry.name)) is not None
            and entry.path not in self._compares
        ]
        if self._depth == 0:
            subdirs = self._split_frontier(subdirs, root_dev)
        assert self._pool is not None
        for child_path, old in subdirs:
            if old.kind != NodeKind.DIR or old.subtree is None:
                continue
            later: Later[dict[bytes, Counts]] = Later(self._ready)
            job = SubtreeJob(child_path, old.subtree, self._reuse_start_ns, root_dev)
            self._pool.compare(job, _settle(later))
            self._compares[child_path] = later

    def _split_frontier(
        self, frontier: list[tuple[bytes, Node]], root_dev: int
    ) -> list[tuple[bytes, Node]]:
        """Replace folders by their subfolders until there are 8 per reader (or 3 levels);
        the walker lists the folders split here itself (they are few)."""
        want = 8 * max(1, self.options.workers)
        for _ in range(3):
            if len(frontier) >= want:
                break
            deeper: list[tuple[bytes, Node]] = []
            split = False
            for path, old in frontier:
                below = self._subfolders(path, old, root_dev)
                if below is None:
                    deeper.append((path, old))  # a leaf, or unreadable: hand it out whole
                else:
                    deeper.extend(below)
                    self._split.add(path)
                    split = True
            if not split:
                break
            frontier = deeper
        return frontier

    def _subfolders(self, path: bytes, old: Node, root_dev: int) -> list[tuple[bytes, Node]] | None:
        """``path``'s subfolders that the parent has too, as the walker will list them;
        None when it has none (or cannot be listed): then it is handed out whole."""
        if old.kind != NodeKind.DIR or old.subtree is None:
            return None
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
            olds = {n.name: n for n in self.repo.load_tree(old.subtree)}
        except (OSError, CasError):
            return None
        out = [
            (entry.path, sub)
            for entry, st in self._stat_entries(entries, quiet=True)
            if stat.S_ISDIR(st.st_mode)
            and not self._mount_point(st, root_dev)
            and (sub := olds.get(entry.name)) is not None
        ]
        return out or None

    def _compared(self, path: bytes, st: os.stat_result, old: Node) -> tuple[bool, Node | None]:
        """(whether a reader answered for the folder, its node when found unchanged)."""
        later = self._compares.pop(path, None)
        if later is not None:
            self._verdicts.update(later.result())
        counts = self._verdicts.pop(path, None)
        if counts is None or old.subtree is None:
            return later is not None, None
        self._count_kept(*counts)
        return True, self._dir_node(path, path.rsplit(b"/", 1)[-1], st, old.subtree, old)

    def _count_kept(self, files: int, size: int, dirs: int = 0) -> None:
        """Count files (and folders) kept from the parent without reading them."""
        with self._count_lock:
            c = self.counters
            c.files_unchanged += files
            c.files_total += files
            c.bytes_total += size
            c.dirs += dirs
        self._progress.files_done += files
        self._progress.bytes_done += size  # processed, though not read

    def _kept_file(self, path: bytes, name: bytes, st: os.stat_result, old: Node) -> Node:
        """The node of a file kept from the parent: the parent's own object when nothing
        about the file changed, so its folder's tree can be reused as it is."""
        if self._same_meta(old, st):
            return old
        return node_from_stat(name, st, self._uid_names, self._gid_names, old.content,
                              old.content_hash, xattrs=self._xattrs(path))  # fmt: skip

    def _confirm_kept(
        self,
        kept: list[tuple[int, bytes, os.stat_result, Node | None]],
        children: list[Node | Later[Node | None]],
    ) -> None:
        """Count the folder's kept files, or read those whose chunks are gone from the index."""
        nodes = [children[i] for i, _, _, _ in kept]
        if not self.repo.has_blobs([c for n in nodes for c in n.content]):  # type: ignore[union-attr]
            for (i, path, st, ref), node in zip(kept, nodes, strict=True):
                if not self.repo.has_blobs(node.content):  # type: ignore[union-attr]
                    # A chunk was lost (repaired away): read the file again.
                    children[i] = self._archive_file(path, node.name, st, ref, None)  # type: ignore[union-attr]
            kept = [k for k, n in zip(kept, nodes, strict=True) if children[k[0]] is n]
        self._count_kept(len(kept), sum(st.st_size for _, _, st, _ in kept))

    def _finish_dirs(self, *, keep: int) -> None:
        """Write the trees of queued folders whose entries are all ready, oldest first.

        Children are queued before their parents (post-order), so when a folder is
        finished every sub-folder it holds has been finished already. Waits only while
        more than ``keep`` folders are queued (``keep=0`` finishes everything).
        """
        self._send_batch()  # nothing may wait on files that were never handed out
        while self._pending_dirs:
            pending = self._pending_dirs[0]
            block = len(self._pending_dirs) > keep
            if not block and not all(c.done() for c in pending.children if isinstance(c, Later)):
                return
            self._pending_dirs.popleft()
            try:
                pending.done.set_result(self._finish_dir(pending))
            except BaseException as exc:
                pending.done.set_exception(exc)
                raise

    def _finish_dir(self, pending: _PendingDir) -> Node:
        nodes = []
        for child in pending.children:
            result = child.result() if isinstance(child, Later) else child
            if result is not None:
                nodes.append(result)
        with self._count_lock:
            self.counters.dirs += 1
        old, old_nodes = pending.reuse, pending.reuse_nodes
        if (
            old is not None
            and old.subtree is not None
            and old_nodes is not None
            and len(nodes) == len(old_nodes)
            and all(map(operator.is_, nodes, old_nodes))
            and (self.options.dry_run or self.repo.has_blobs((old.subtree,)))
        ):
            # Every entry is the parent's own node: this folder's tree is the parent's,
            # byte for byte. Skip encoding, hashing and looking it up again.
            return self._dir_node(pending.path, pending.name, pending.st, old.subtree, old)
        return self._dir_node(pending.path, pending.name, pending.st, self._save_tree(nodes), old)

    # ------------------------------------------------------------------ files
    def _archive_file(
        self, path: bytes, name: bytes, st: os.stat_result, ref: Node | None, reuse: Node | None
    ) -> Node | Later[Node | None]:
        if reuse is not None and self._unchanged(reuse, st):
            self._count_kept(1, st.st_size)
            return self._kept_file(path, name, st, reuse)
        meta = self._meta(path, name, st)
        key = meta.hardlink_key
        if key is not None:
            earlier = self._hardlinks.get(key)
            if earlier is not None:
                return self._link_to(earlier, meta, ref)
        future: Later[Node | None] = Later(self._ready)
        if not self._slots.acquire(blocking=False):
            self._send_batch()  # the files we would wait for may be in the unsent batch
            self._slots.acquire()
        self._batch.append((path, st.st_size, _Reading(self, future, path, meta, ref)))
        self._batch_bytes += st.st_size
        if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
            self._send_batch()
        if key is not None:
            self._hardlinks[key] = future
        return future

    def _send_batch(self) -> None:
        if self._batch:
            assert self._pool is not None
            batch, self._batch, self._batch_bytes = self._batch, [], 0
            self._pool.submit(batch)

    def _file_node(self, path: bytes, meta: Node, result: FileOutcome) -> Node:
        with self._count_lock:
            self.counters.bytes_read += result.size
        if result.changed is not None:
            # Stored as read, so not an error; the older mtime makes the next backup read it again.
            self._notice(f"{os.fsdecode(path)}: file changed while it was read; stored as read")
            after_meta = node_from_stat(meta.name, result.changed, self._uid_names,
                                        self._gid_names, xattrs=meta.xattrs)  # fmt: skip
            meta = replace(
                after_meta, mtime_ns=min(result.changed.st_mtime_ns, result.first_mtime_ns)
            )
        content = tuple(BlobId(i) for i in result.ids)
        return replace(meta, size=result.size, content=content, content_hash=result.digest)

    def _link_to(
        self, earlier: Later[Node | None] | Node, meta: Node, ref: Node | None
    ) -> Node | Later[Node | None]:
        """A second name for an inode already read in this backup: share its content, read nothing."""

        def finish(first: Node | None) -> Node | None:
            if first is None:
                return None
            node = replace(
                meta, content=first.content, content_hash=first.content_hash, size=first.size
            )
            self._count_file(node, ref)
            return node

        if isinstance(earlier, Node):
            return finish(earlier)  # type: ignore[return-value]
        linked: Later[Node | None] = Later(self._ready)
        earlier.add_done_callback(lambda f: _chain(f, linked, finish))
        return linked

    def _unchanged(self, old: Node, st: os.stat_result) -> bool:
        return self._unchanged_meta(old, st) and self.repo.has_blobs(old.content)

    def _unchanged_meta(self, old: Node, st: os.stat_result) -> bool:
        return file_unchanged(old, st, self._reuse_start_ns)

    def _count_file(self, node: Node, ref: Node | None) -> None:
        """Classify a file that was read (or shares a read inode) against the reference."""
        with self._count_lock:
            c = self.counters
            c.files_total += 1
            c.bytes_total += node.size
            if ref is None or ref.kind != NodeKind.FILE:
                c.files_new += 1
            elif ref.content_hash == node.content_hash and ref.size == node.size:
                c.files_unchanged += 1
            else:
                c.files_changed += 1

    def _store_stream(self, reader: Any, chunker: Chunker) -> tuple[tuple[BlobId, ...], bytes, int]:
        """Store a stream (a database dump) from this process."""
        hasher = blake3.blake3()
        ids: list[BlobId] = []
        size = 0
        pieces = chunker.stream(reader)
        for piece in pieces:
            if self._cancelled.is_set():
                raise KeyboardInterrupt
            hasher.update(piece)
            size += len(piece)
            if self.options.dry_run:
                ids.append(self.repo.blob_id(piece))
            else:
                ids.append(self.repo.save_blob(Kind.DATA, piece)[0])
            self._progress.bytes_done += len(piece)
        with self._count_lock:
            self.counters.bytes_read += size
        return tuple(ids), hasher.digest(), size

    # ------------------------------------------------------------------ streams
    def _archive_streams(self, records: list[DatabaseRecord]) -> Node:
        """Store each database dump as /.databases/<file>; any failure fails the backup."""
        _, now_ns = now_utc()
        nodes = []
        for spec in self.options.streams:
            self.reporter.info(f"dumping database {spec.name} ({spec.engine})")
            source = spec.open()
            try:
                content, digest, size = self._store_stream(source, self.dump_chunker)
                info = source.finish()
            finally:
                source.close()
            name = os.fsencode(spec.filename)
            nodes.append(
                Node(name=name, kind=NodeKind.FILE, mode=0o600, uid=os.getuid(), gid=os.getgid(),
                     mtime_ns=now_ns, ctime_ns=now_ns, size=size, content=content, content_hash=digest)
            )  # fmt: skip
            if not spec.record:
                continue
            records.append(
                DatabaseRecord(
                    name=spec.name, engine=info.engine, format=info.format, server_version=info.server_version,
                    path="/" + DATABASES_DIR.decode() + "/" + spec.filename, size=size,
                    row_counts=dict(info.row_counts), properties=dict(info.properties),
                )
            )  # fmt: skip
        nodes.sort(key=lambda n: n.name)
        return Node(
            name=DATABASES_DIR, kind=NodeKind.DIR, mode=0o700, uid=os.getuid(), gid=os.getgid(),
            mtime_ns=now_ns, ctime_ns=now_ns, subtree=self._save_tree(nodes),
        )  # fmt: skip

    # ------------------------------------------------------------------ reporting
    def _error(self, path: bytes, exc: OSError) -> None:
        self._problem(f"{os.fsdecode(path)}: {exc.strerror or exc}")

    def _problem(self, message: str) -> None:
        """Something was not stored: the backup is partial (exit 3)."""
        with self._count_lock:
            self.counters.errors += 1
            self.warnings.append(message)
        self._progress.errors += 1
        self.reporter.warning(message)

    def _notice(self, message: str) -> None:
        """Everything was stored, but the user should know (no effect on the exit code)."""
        with self._count_lock:
            if len(self.notes) < MAX_RECORDED_ERRORS:
                self.notes.append(message)
        self.reporter.warning(message)


@dataclass
class _PendingDir:
    """A folder whose entries are listed, waiting for its files to be read."""

    done: Later[Node | None]
    path: bytes
    name: bytes
    st: os.stat_result
    children: list[Node | Later[Node | None]]
    reuse: Node | None  # the folder in the snapshot files are reused from
    reuse_nodes: list[Node] | None  # that folder's entries, in order


class _Reading:
    """One file handed to a reader: turns its outcome into the file's node.

    Called on a receiver thread, with the outcome or the error that failed the read.
    """

    __slots__ = ("backup", "future", "path", "meta", "ref")

    def __init__(
        self,
        backup: Backup,
        future: Later[Node | None],
        path: bytes,
        meta: Node,
        ref: Node | None,
    ) -> None:
        self.backup, self.future, self.path, self.meta, self.ref = backup, future, path, meta, ref

    def __call__(self, result: FileOutcome | None, error: BaseException | None) -> None:
        b = self.backup
        b._slots.release()
        node: Node | None = None
        try:
            if error is not None:
                raise error
            assert result is not None
            if result.error is not None:
                b._error(self.path, OSError(*result.error))
            elif not result.cancelled:
                node = b._file_node(self.path, self.meta, result)
                b._count_file(node, self.ref)
                b._progress.files_done += 1
                b._report_progress()
        except BaseException as exc:  # noqa: BLE001 - hand it to whoever waits for the file
            self.future.set_exception(exc)
            return
        self.future.set_result(node)


def _settle(later: Later[Any]) -> Callable[[Any, BaseException | None], None]:
    """A reader callback that resolves ``later`` with the result or the error."""

    def done(result: Any, error: BaseException | None) -> None:
        if error is not None:
            later.set_exception(error)
        else:
            later.set_result(result)

    return done


def _chain(
    src: Later[Node | None], dst: Later[Node | None], fn: Callable[[Node | None], Node | None]
) -> None:
    try:
        dst.set_result(fn(src.result()))
    except BaseException as exc:  # noqa: BLE001 - propagate whatever the first read raised
        dst.set_exception(exc)


def _database_files(options: BackupOptions) -> frozenset[str]:
    """Every path the walk leaves out for ``options.database_files``: each database file
    and the companions SQLite keeps beside it."""
    return frozenset(
        os.path.abspath(path) + suffix
        for path in options.database_files
        for suffix in DATABASE_COMPANIONS
    )


def _inside(path: str, sources: tuple[str, ...]) -> bool:
    """Whether ``path`` is one of ``sources`` or below one (absolute paths, no I/O)."""
    path = os.path.abspath(path)
    return any(path == s or path.startswith(s.rstrip("/") + "/") for s in sources)


def _encode(nodes: list[Node]) -> bytes:
    from casbackup.repo.tree import encode_tree

    return encode_tree(nodes)


def run_backup(
    repo: Repository, options: BackupOptions, reporter: Reporter = NULL_REPORTER
) -> BackupResult:
    return Backup(repo, options, reporter).run()
