"""The backup pipeline: walk sources, reuse or read files, write trees and a snapshot.

Processes: the caller's thread walks directories (stat is cheap and ordered) and
keeps everything that needs one writer (packs, index, trees). File contents are
read, chunked, hashed, compressed, encrypted and verified in reader processes
(archiver/workers.py), small files in batches, so Python's per-file work runs on
every core. A bounded number of files is in flight, so memory stays bounded
whatever the tree.

Change detection (incremental/differential): a file is reused from the parent's
tree when size, mtime, ctime and inode match, every chunk is still indexed, and
neither time is within RACE_MARGIN_NS of the parent's start, or of its file-system
snapshots' if taken earlier (archiver/compare.py ``race_start_ns``; borg's guard: a
file written while the parent ran may have been read half-changed and would then look
unchanged forever).
"""

from __future__ import annotations

import getpass
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

from casbackup import __version__
from casbackup.archiver.backup_options import (
    DATABASE_COMPANIONS,
    BackupOptions,
    BackupResult,
    Counters,
    DumpSource,
    StreamSpec,
    choose_parent,
    database_paths,
    exclude_renames,
    inside,
    own_folders,
    reachable_sources,
    troubled_paths,
    with_link_targets,
)
from casbackup.archiver.base_copies import stream_key
from casbackup.archiver.compare import Counts, race_start_ns
from casbackup.archiver.delta_bases import BaseFinder, Stopped, store_chunks
from casbackup.archiver.excludes import Excluder
from casbackup.archiver.later import Later
from casbackup.archiver.reading import FileReading, InFlight
from casbackup.archiver.walk import MAX_PENDING_DIRS, PendingDir, Walker
from casbackup.archiver.workers import BATCH_FILES, CancelFlag, ReaderPool
from casbackup.chunking.chunker import PAGE_IMAGE_CHUNK, Chunker, FixedChunker
from casbackup.engines.base import is_page_image
from casbackup.errors import (
    CasError,
    DatabaseError,
    Interrupted,
    NotFound,
    SnapshotProviderError,
    UsageError,
)
from casbackup.repo.ids import BlobId
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import BACKUP_TYPES, DatabaseRecord, Snapshot, Summary, now_utc
from casbackup.repo.tree import Node, NodeKind
from casbackup.reporter import NULL_REPORTER, Progress, Reporter, Throttle
from casbackup.stopsig import set_stop_handler
from casbackup.store.stopping import note_stop
from casbackup.threadsig import quiet_thread

# Importable from here as before the split (callers and tests use this module's names).
__all__ = [
    "DATABASE_COMPANIONS",
    "MAX_PENDING_DIRS",
    "Backup",
    "BackupOptions",
    "BackupResult",
    "DumpSource",
    "StreamSpec",
    "choose_parent",
    "run_backup",
]

MAX_RECORDED_ERRORS = 1000
DATABASES_DIR = b".databases"


class Backup(Walker, FileReading):
    """One backup run: ``run()`` walks the sources (``Walker``), hands files to the
    readers (``FileReading``), stores database dumps, and saves the snapshot."""

    def __init__(
        self, repo: Repository, options: BackupOptions, reporter: Reporter = NULL_REPORTER
    ) -> None:
        if options.type not in BACKUP_TYPES:
            raise UsageError(f"backup type must be one of {', '.join(BACKUP_TYPES)}")
        self.repo = repo
        self.options = options
        self.reporter = reporter
        self._own = own_folders(repo, options.paths)
        self._database_files = database_paths(options) | self._own
        self.excluder = Excluder(
            list(options.excludes),
            exact=self._database_files,
            rename=exclude_renames(options.read_from),
            if_present=options.exclude_if_present,
            larger_than=options.exclude_larger_than,
        )
        self._read_from = {
            os.fsencode(os.path.abspath(a)): os.fsencode(b) for a, b in options.read_from
        }
        self.chunker = Chunker(repo.config.chunker, repo.key.chunker_seed)
        self.dump_chunker = Chunker(repo.config.dump_chunker, repo.key.chunker_seed)
        self.page_chunker = FixedChunker(PAGE_IMAGE_CHUNK)
        self.counters = Counters()
        self.warnings: list[str] = []
        self.notes: list[str] = []
        self._keep_meta = True  # parent nodes may stand as they are (same --no-xattrs)
        self._progress = Progress(phase="backup")
        self._report_progress = Throttle(reporter, self._progress)
        self._count_lock = threading.Lock()
        self._pending_dirs: deque[PendingDir] = deque()
        self._hardlinks: dict[tuple[int, int], Later[Node | None] | Node] = {}
        self._uid_names: dict[int, str] = {}
        self._gid_names: dict[int, str] = {}
        self._ready = threading.Condition()  # shared by every Later of this backup
        self._cancelled = CancelFlag()
        self._pool: ReaderPool | None = None
        self._deltas = None  # typed on FileReading: started on the first --delta-files file
        # --delta-files: only where DELTA blobs can be written (format 3 on, not a dry run).
        self._delta_threshold = (
            options.delta_files if repo.deltas_allowed and not options.dry_run else 0
        )
        # Files in flight: two batches per reader keeps every reader fed.
        self._slots = InFlight(2 * BATCH_FILES * max(1, options.workers))
        self._batch = []  # typed on FileReading
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
        self._root_dev: int | None = None
        self._troubled: frozenset[bytes] = frozenset()
        self._troubled_dirs: frozenset[bytes] = frozenset()

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
        # One spelling per source ('/x', '/x/', '/x/../x' are one): the paths are the
        # group that retention and the next parent go by.
        paths = tuple(dict.fromkeys(os.path.abspath(p) for p in opts.paths))
        walked, missing = reachable_sources(paths)
        if not walked and not opts.streams:
            # Nothing at all to store (restic's rule too): a typo, or the wrong machine.
            raise NotFound("; ".join(_source_problem(p, why) for p, why in missing))
        for path, why in missing:
            # The other sources are stored: one source gone (a mount not there tonight, a
            # folder this user may not enter) no longer costs the night's backup of the
            # rest. The snapshot keeps every source in its paths, so the next backup, with
            # the source back, has the same group and parent and reads it again.
            self._problem(f"{path}: {_source_problem('', why).strip()}")
        walked, link_notes = with_link_targets(walked)
        paths = paths + tuple(p for p in walked if p not in paths)
        root = getattr(self.repo.backend, "root", None)
        if root is not None and root in self._own:
            link_notes.append(f"the repository {root} is inside the sources: it is left out")
        for note in link_notes:
            self.notes.append(note)
            self.reporter.info(note)
        opts = replace(opts, paths=paths)
        self.options = opts
        passed_over: list[str] = []
        reference, reuse = choose_parent(self.repo, opts, passed_over)
        for line in passed_over:
            self._notice(line)  # stored all the same: a warning line, not a partial backup
        if opts.on_parent_chosen is not None:
            opts.on_parent_chosen(reuse is not None)
        notes = self.notes
        if opts.type != "full" and reuse is None:
            notes.append(
                f"no {'full ' if opts.type == 'differential' else ''}parent snapshot: reading every file"
            )
            self.reporter.info(notes[-1])
        excluded_dbs = tuple(sorted(p for p in opts.database_files if inside(p, paths)))
        if excluded_dbs:
            notes.append(
                "left out of the file walk, stored as database dumps instead (with their -wal, "
                "-shm and -journal files): " + ", ".join(excluded_dbs)
            )
            self.reporter.info(notes[-1])
        if opts.delta_files and not self.repo.deltas_allowed:
            notes.append(
                f"--delta-files needs repository format 3 or later (this one is "
                f"{self.repo.config.version}; 'casbackup migrate' upgrades it): files stored whole"
            )
            self.reporter.info(notes[-1])
        self._reference = reference
        self._reuse = reuse
        # A parent recorded without extended attributes (--no-xattrs, or made before they
        # were recorded) cannot lend its nodes to a backup that records them, nor the
        # reverse: ctime says the attributes are unchanged, not that they were recorded.
        # Nor can a parent made by another user (a service account, root): its nodes hold
        # what that user could see (no trusted.* attributes for one that is not root).
        user = getpass.getuser()
        self._keep_meta = reuse is None or (reuse.xattrs == opts.xattrs and reuse.user == user)
        # Files seen before the start (sources frozen by file-system snapshots) are
        # guarded from when they were seen.
        self._reuse_start_ns = race_start_ns(reuse) if reuse else 0
        if reuse is not None:
            self._troubled, self._troubled_dirs = troubled_paths(reuse.errors)
        if reference is not None:
            # The previous snapshot's size is a good estimate of this one's: it gives the
            # progress line an ETA without a separate scan of the sources.
            self._progress.files_total = reference.summary.files_total
            self._progress.bytes_total = reference.summary.bytes_total
        db_records: list[DatabaseRecord] = []
        self._pool = self._start_readers()
        try:
            with self._deferred_sigint():
                root = self._archive_roots(walked, reference, db_records)
                if self._cancelled.is_set():  # files skipped after the request: no snapshot
                    raise KeyboardInterrupt
            self._report_progress(force=True)
        except KeyboardInterrupt:
            failure = self._pool.failure if self._pool is not None else None
            self._cancelled.set()
            self._shutdown()
            self._keep_committed()
            if failure is not None and not isinstance(failure, Interrupted):
                raise failure from None  # a reader failed and stopped the others: say why
            raise Interrupted(
                "backup interrupted; the chunks stored so far are kept for the next run"
            ) from None
        except BaseException as exc:
            stopped = self._cancelled.is_set()  # a stop was asked for before this failed
            self._cancelled.set()
            self._shutdown()
            self._keep_committed()
            if stopped and isinstance(exc, DatabaseError | SnapshotProviderError | Interrupted):
                # Ctrl-C reaches the whole process group: the dump tool (or snapshot
                # command) was stopped too, and its failure is the interruption, not a
                # fault of the database (exit 130, not 27); a pack refused after the stop
                # (repo/uploader.py) is said the one way too.
                raise Interrupted(
                    "backup interrupted; the chunks stored so far are kept for the next run"
                ) from None
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
            time=time_text, start_ns=start_ns, host=socket.gethostname(), user=user,
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
        """Turn Ctrl-C into a request that the pipeline honours at a safe point, within
        ``STOP_GRACE_S``.

        An exception raised asynchronously could land between storing a pack and recording
        it, leaving a pack no index names. Instead the first SIGINT sets the cancel flag,
        which the walker and the workers check between files and chunks, and notes the stop
        (store/stopping.py), which bounds every store wait on the way out. A main thread
        that has not reached a safe point ``STOP_GRACE_S`` later (it waits on readers that
        wait on a pack upload the store does not answer) gets KeyboardInterrupt where it
        waits: at worst a pack no index names, garbage for prune, never damage. A second
        Ctrl-C exits at once, like a kill (the repository stays consistent).
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        left = threading.Event()  # the main thread is out of this block
        hold = threading.Lock()  # _hurry's check-and-signal against leaving the block
        overdue = [False]  # the stop was not honoured within STOP_GRACE_S: SIGINT sent

        def request_stop(signum: int, _frame: object) -> None:
            if overdue[0]:
                overdue[0] = False
                raise KeyboardInterrupt
            if self._cancelled.is_set():
                # Second Ctrl-C (or SIGTERM, SIGHUP: cli/signals.py passes their number): leave
                # now, as a kill would, with 128 + that signal's number as a shell reports it.
                # Crash safety keeps the repository consistent; an exception here could strike
                # inside a lock and hang.
                name = signal.Signals(signum).name
                os.write(
                    2, f"error: interrupted twice ({name} received); stopped at once\n".encode()
                )
                os._exit(128 + signum)
            self._cancelled.set()
            note_stop()
            quiet_thread(_hurry, (left, hold, overdue, signum), name="stop-deadline").start()

        previous = set_stop_handler(request_stop)
        try:
            yield
        finally:
            try:
                with hold:
                    left.set()
                while overdue[0]:
                    # Sent just before the block was left and not run yet: taken here, as
                    # the stop it is, not by the handler in force on the way out.
                    time.sleep(0.005)
            finally:
                set_stop_handler(previous)

    def _keep_committed(self) -> None:
        """After an abort, index what was stored so the next run does not store it again."""
        if self.options.dry_run:
            return
        try:
            self.repo.flush()
        except (CasError, OSError):
            pass

    def _store_stream(
        self, reader: Any, chunker: Chunker | FixedChunker, bases: BaseFinder | None, copy_key: str
    ) -> tuple[tuple[BlobId, ...], bytes, int]:
        """Store a stream (a database dump) from this process; with ``bases`` (the parent's
        version of the stream), a new chunk is stored as a delta of its counterpart there;
        ``copy_key`` names its local copy (archiver/base_copies.py)."""

        def on_bytes(n: int) -> None:
            self._progress.bytes_done += n

        try:
            ids, digest, size = store_chunks(
                self.repo, chunker.stream(reader), bases, dry_run=self.options.dry_run,
                stopped=self._cancelled.is_set, on_bytes=on_bytes, copy_key=copy_key,
            )  # fmt: skip
        except Stopped:
            raise KeyboardInterrupt from None
        with self._count_lock:
            self.counters.bytes_read += size
        return ids, digest, size

    # ------------------------------------------------------------------ streams
    def _archive_streams(self, records: list[DatabaseRecord]) -> Node:
        """Store each database dump as /.databases/<file>; any failure fails the backup."""
        _, now_ns = now_utc()
        nodes = []
        for spec in self.options.streams:
            # A database can give several streams (PostgreSQL: its cluster globals first):
            # each line says which one, or the log shows the same line twice.
            what = "database" if spec.record else "server globals for database"
            self.reporter.info(f"dumping {what} {spec.name} ({spec.engine})")
            before = self._parent_stream(spec.filename)
            bases = None
            key = stream_key("dump", self.options.app or "", spec.filename)
            # A page image (SQLite) keeps changed rows where they were: cut at fixed offsets,
            # each changed chunk is as long as its parent's and is stored as the byte runs
            # that differ (an aligned delta), at less CPU than storing it whole. A repository
            # without aligned deltas (format 5 and older, until ``migrate``) would store each
            # changed MiB whole or as a zstd delta: there the cut stays content-defined.
            page_image = is_page_image(spec.engine) and self.repo.aligned_deltas_allowed
            chunker = self.page_chunker if page_image else self.dump_chunker
            if before is not None and self.repo.deltas_allowed:
                fixed = self.page_chunker.size if page_image else None
                bases = BaseFinder.for_content(self.repo, before.content, key, fixed)
            source = spec.open()
            try:
                content, digest, size = self._store_stream(source, chunker, bases, key)
                info = source.finish()
            finally:
                source.close()
            if bases is not None and bases.copy_refuted:
                # Stored all the same (those chunks whole): the damage is in older snapshots.
                self._notice(
                    f"database {spec.name}: a chunk of the last backup's dump could not be read "
                    "back from the repository as it was written; run 'casbackup check "
                    "--read-data'"
                )
            name = os.fsencode(spec.filename)
            # An identical dump keeps the parent's times: its node, and the folder's tree of
            # dump nodes (a 100 MB dump's lists 1,600 chunk ids, ~50 kB), then dedup whole.
            same = before is not None and (before.content, before.content_hash) == (content, digest)
            mtime = before.mtime_ns if same else now_ns  # type: ignore[union-attr]
            ctime = before.ctime_ns if same else now_ns  # type: ignore[union-attr]
            nodes.append(
                Node(name=name, kind=NodeKind.FILE, mode=0o600, uid=os.getuid(), gid=os.getgid(),
                     mtime_ns=mtime, ctime_ns=ctime, size=size, content=content, content_hash=digest)
            )  # fmt: skip
            if not spec.record:
                if info.properties.get("accounts") is False:
                    # Said now, not only by the file in the snapshot and a restore years later.
                    why = info.properties.get("why") or "see the file in the snapshot"
                    self._notice(f"database {spec.name}: the server's accounts are not kept: {why}")
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
            mtime_ns=now_ns, ctime_ns=now_ns, subtree=self._save_tree(nodes, self._parent_streams()),
        )  # fmt: skip

    def _parent_streams(self) -> BlobId | None:
        """The parent snapshot's tree of /.databases (the base of this one's), or None."""
        parent = self._reference
        if parent is None or self.options.dry_run:
            return None
        try:
            node = self.repo.find_node(parent.root, b"/" + DATABASES_DIR)
        except CasError:
            return None
        return node.subtree if node is not None and node.kind == NodeKind.DIR else None

    def _parent_stream(self, filename: str) -> Node | None:
        """The parent snapshot's node of /.databases/<filename> (delta bases, and the times
        an identical dump keeps), or None."""
        parent = self._reference
        if parent is None or self.options.dry_run:
            return None
        try:
            node = self.repo.find_node(
                parent.root, b"/" + DATABASES_DIR + b"/" + os.fsencode(filename)
            )
        except CasError:
            return None  # a new database, or a parent tree that cannot be read: full chunks
        if node is None or node.kind != NodeKind.FILE:
            return None
        return node

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


#: Seconds the walker may take to reach a safe point after the first Ctrl-C (see
#: ``Backup._deferred_sigint``): the walker checks between files, so it is there at once
#: unless it waits on readers, which may wait on a store that does not answer.
STOP_GRACE_S = 1.0


def _hurry(left: threading.Event, hold: threading.Lock, overdue: list[bool], signum: int) -> None:
    """After the first Ctrl-C (or SIGTERM, SIGHUP: ``signum``): unless the main thread left
    the deferred block within ``STOP_GRACE_S``, interrupt it where it waits (that signal again,
    to the main thread: a blocked wait returns only for a signal; not SIGINT, which may be
    ignored, casbackup/stopsig.py), and the block's handler raises."""
    if left.wait(STOP_GRACE_S):
        return
    with hold:
        if left.is_set():
            return
        overdue[0] = True
        signal.pthread_kill(threading.main_thread().ident or 0, signum)


def _source_problem(path: str, why: str) -> str:
    """'source /x does not exist', or 'cannot read source /x: <why>' (``path`` '': unnamed)."""
    if why == "does not exist":
        return f"source {path} does not exist".replace("  ", " ")
    return f"cannot read source {path}: {why}".replace(" :", ":")


def run_backup(
    repo: Repository, options: BackupOptions, reporter: Reporter = NULL_REPORTER
) -> BackupResult:
    return Backup(repo, options, reporter).run()
