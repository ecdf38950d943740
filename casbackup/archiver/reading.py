"""Handing files to the reader processes (archiver/workers.py) and taking back their nodes.

The walk queues each file to read in a batch (up to ``BATCH_FILES`` files or
``BATCH_BYTES``); a bounded number of files is in flight, so memory stays bounded
whatever the tree. A reader's outcome becomes the file's node on a receiver thread
(``_Reading``); a second name of an inode read in this backup shares its content.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from casbackup.archiver.backup_options import exclude_renames
from casbackup.archiver.delta_files import DeltaFileReader, wants_delta
from casbackup.archiver.later import Later, settle_all
from casbackup.archiver.metadata import node_from_stat
from casbackup.archiver.workers import (
    BATCH_BYTES,
    BATCH_FILES,
    CancelFlag,
    FileOutcome,
    ReaderPool,
    WorkerSetup,
)
from casbackup.chunking.chunker import Chunker
from casbackup.repo.repository import Repository
from casbackup.repo.tree import Node, NodeKind
from casbackup.store.local import LocalBackend

_NEW = object.__new__

if TYPE_CHECKING:
    from casbackup.archiver.backup_options import BackupOptions, Counters
    from casbackup.reporter import Progress, Throttle


class FileReading:
    """The reader hand-off of ``Backup`` (archiver/backup.py), as a mixin: the state
    below is set up by ``Backup.__init__`` and ``Backup.run``."""

    repo: Repository
    options: BackupOptions
    counters: Counters
    _progress: Progress
    _report_progress: Throttle
    _count_lock: threading.Lock
    _hardlinks: dict[tuple[int, int], Later[Node | None] | Node]
    _uid_names: dict[int, str]
    _gid_names: dict[int, str]
    _ready: threading.Condition
    _cancelled: CancelFlag
    _pool: ReaderPool | None
    _slots: InFlight
    _batch: list[tuple[bytes, int, _Reading]]
    _batch_bytes: int
    _database_files: frozenset[str]
    _compare_subtrees: bool
    _deltas: DeltaFileReader | None
    _delta_threshold: int

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
            exclude_renames=exclude_renames(self.options.read_from),
            exclude_if_present=self.options.exclude_if_present,
            exclude_larger_than=self.options.exclude_larger_than,
            one_file_system=self.options.one_file_system,
            page_images=repo.aligned_deltas_allowed,
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
            return ReaderPool(
                setup, max(1, self.options.workers), store, on_read, self._cancelled,
                settle=settle_readings,
            )  # fmt: skip

    def _shutdown(self) -> None:
        if self._deltas is not None:
            self._deltas.close()
            self._deltas = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None

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
        reading = _Reading(self, future, path, meta, ref)
        if ref is not None and wants_delta(self._delta_threshold, st.st_size, st.st_mtime_ns, ref):
            self._slots.take(1)  # one file in flight, as a batch takes one per file
            self._delta_reader().submit(path, ref, reading)
        else:
            self._batch.append((path, st.st_size, reading))
            self._batch_bytes += st.st_size
            if len(self._batch) >= BATCH_FILES or self._batch_bytes >= BATCH_BYTES:
                self._send_batch()
        if key is not None:
            self._hardlinks[key] = future
        return future

    def _delta_reader(self) -> DeltaFileReader:
        """The thread that stores large changed files as deltas (``--delta-files``),
        started on the first such file."""
        if self._deltas is None:

            def on_bytes(n: int) -> None:
                self._progress.bytes_done += n

            chunker = Chunker(self.repo.config.chunker, self.repo.key.chunker_seed)
            self._deltas = DeltaFileReader(
                self.repo, chunker, self._cancelled, on_bytes, self._notice
            )
        return self._deltas

    def _send_batch(self) -> None:
        if self._batch:
            assert self._pool is not None
            batch, self._batch, self._batch_bytes = self._batch, [], 0
            self._slots.take(len(batch))  # waits while too many files are in flight
            self._pool.submit(batch)

    def _file_node(self, path: bytes, meta: Node, result: FileOutcome) -> Node:
        """The node of a file read: ``meta`` with the content the reader found."""
        if result.changed is not None:
            # Stored as read, so not an error; the older mtime makes the next backup read it again.
            self._notice(f"{os.fsdecode(path)}: file changed while it was read; stored as read")
            after_meta = node_from_stat(meta.name, result.changed, self._uid_names,
                                        self._gid_names, xattrs=meta.xattrs)  # fmt: skip
            meta = replace(
                after_meta, mtime_ns=min(result.changed.st_mtime_ns, result.first_mtime_ns)
            )
        # ``dataclasses.replace`` costs about 15 us a node (it goes through ``__init__``
        # and its frozen ``__setattr__``); copying the fields is what it would do.
        node: Node = _NEW(Node)
        fields = node.__dict__
        fields.update(meta.__dict__)
        fields["size"] = result.size
        fields["content"] = tuple(result.ids)  # BlobId is bytes (a NewType)
        fields["content_hash"] = result.digest
        return node

    def _settle_readings(self, readings: list[_Reading], outcomes: list[FileOutcome]) -> None:
        """Turn a reader's answer for a batch of files into their nodes (receiver thread).

        One slot release, one counters update, one progress report and one wake-up of
        the walker per batch: per file they were most of a receiver thread's time on
        small files, and the receivers share the walker's GIL.
        """
        self._slots.give(len(readings))
        settled: list[tuple[Later[Node | None], Node | None, BaseException | None]] = []
        files = size = read = new = changed = unchanged = 0
        for reading, result in zip(readings, outcomes, strict=True):
            node: Node | None = None
            try:
                if result.error is not None:
                    self._error(reading.path, OSError(*result.error))
                elif not result.cancelled:
                    node = self._file_node(reading.path, reading.meta, result)
                    read += result.size
                    files += 1
                    size += node.size
                    ref = reading.ref
                    if ref is None or ref.kind != NodeKind.FILE:
                        new += 1
                    elif ref.content_hash == node.content_hash and ref.size == node.size:
                        unchanged += 1
                    else:
                        changed += 1
            except BaseException as exc:  # noqa: BLE001 - hand it to whoever waits for the file
                settled.append((reading.future, None, exc))
                continue
            settled.append((reading.future, node, None))
        with self._count_lock:
            c = self.counters
            c.bytes_read += read
            c.files_total += files
            c.bytes_total += size
            c.files_new += new
            c.files_changed += changed
            c.files_unchanged += unchanged
            self._progress.files_done += files
        try:
            self._report_progress()
        except BaseException as exc:  # noqa: BLE001 - every file of the batch must be settled
            settled = [(later, None, error or exc) for later, _, error in settled]
        settle_all(self._ready, settled)

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


class InFlight:
    """How many files are handed to the readers and not answered yet, kept under a limit.

    Counted per batch, not per file: a ``threading.Semaphore`` costs a Python-level
    lock round per file on both sides, under the walker's GIL.
    """

    __slots__ = ("_cond", "_count", "limit")

    def __init__(self, limit: int) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._count = 0
        self.limit = limit

    def take(self, n: int) -> None:
        """Count ``n`` more files, first waiting while that would pass the limit (a batch
        bigger than the limit goes alone)."""
        with self._cond:
            while self._count and self._count + n > self.limit:
                self._cond.wait()
            self._count += n

    def give(self, n: int) -> None:
        """``n`` files were answered."""
        with self._cond:
            self._count -= n
            self._cond.notify()


class _Reading:
    """One file handed to a reader: turns its outcome into the file's node.

    Called on a receiver thread, with the outcome or the error that failed the read.
    """

    __slots__ = ("backup", "future", "path", "meta", "ref")

    def __init__(
        self,
        backup: FileReading,
        future: Later[Node | None],
        path: bytes,
        meta: Node,
        ref: Node | None,
    ) -> None:
        self.backup, self.future, self.path, self.meta, self.ref = backup, future, path, meta, ref

    def __call__(self, result: FileOutcome | None, error: BaseException | None) -> None:
        if error is None and result is not None:
            self.backup._settle_readings([self], [result])
            return
        self.backup._slots.give(1)
        self.future.set_exception(error or RuntimeError("a reader answered nothing"))


def settle_readings(readings: list[Any], outcomes: list[FileOutcome]) -> None:
    """``ReaderPool``'s batch hook: settle a reader's answer for files this module handed out."""
    if readings:
        readings[0].backup._settle_readings(readings, outcomes)


def _chain(
    src: Later[Node | None], dst: Later[Node | None], fn: Callable[[Node | None], Node | None]
) -> None:
    try:
        dst.set_result(fn(src.result()))
    except BaseException as exc:  # noqa: BLE001 - propagate whatever the first read raised
        dst.set_exception(exc)
