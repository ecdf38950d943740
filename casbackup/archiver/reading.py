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
from typing import TYPE_CHECKING

from casbackup.archiver.backup_options import exclude_renames
from casbackup.archiver.later import Later
from casbackup.archiver.metadata import node_from_stat
from casbackup.archiver.workers import (
    BATCH_BYTES,
    BATCH_FILES,
    CancelFlag,
    FileOutcome,
    ReaderPool,
    WorkerSetup,
)
from casbackup.repo.ids import BlobId
from casbackup.repo.repository import Repository
from casbackup.repo.tree import Node, NodeKind
from casbackup.store.local import LocalBackend

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
    _slots: threading.BoundedSemaphore
    _batch: list[tuple[bytes, int, _Reading]]
    _batch_bytes: int
    _database_files: frozenset[str]
    _compare_subtrees: bool

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


def _chain(
    src: Later[Node | None], dst: Later[Node | None], fn: Callable[[Node | None], Node | None]
) -> None:
    try:
        dst.set_result(fn(src.result()))
    except BaseException as exc:  # noqa: BLE001 - propagate whatever the first read raised
        dst.set_exception(exc)
