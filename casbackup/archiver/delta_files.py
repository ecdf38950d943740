"""Large files stored as deltas of their previous version (``--delta-files SIZE``, issue 16).

A database file, a VM image or a mailbox that changes a little everywhere between
backups defeats chunk dedup: each ~1 MiB chunk holds some changed bytes, so every chunk
is new and the whole file is stored again (a 94 MB SQLite file with 1% of its rows
rewritten in place: 48.9 MB a night). Such a file, when it is at least the option's size
and the parent snapshot holds an earlier version at the same path, is read here instead
of in a reader process: each chunk that is not stored yet is stored as a DELTA blob
against the chunk at the same place in the earlier version (``delta_bases.BaseFinder``,
``BlobStore.save_data_delta``), which costs about what changed.

The reading happens on one thread of the backup process, because building a delta needs
the index and the base's plaintext (both here, not in the readers). One file at a time,
at most ``QUEUE_FILES`` waiting: the walk goes on meanwhile and blocks only when that
many large files wait. Memory: the chunker's buffer (the largest chunk plus 1 MiB), the
few base chunks ``BaseFinder`` keeps, and one offset and id per chunk of the earlier
version.
"""

from __future__ import annotations

import errno
import os
import queue
import stat
from collections.abc import Callable

from casbackup.archiver.base_copies import stream_key
from casbackup.archiver.delta_bases import COPY_REFUTED, BaseFinder, Stopped, store_chunks
from casbackup.archiver.workers import CancelFlag, FileOutcome, open_for_reading, read_outcome
from casbackup.chunking.chunker import (
    PAGE_IMAGE_CHUNK,
    Chunker,
    FixedChunker,
    StreamCutter,
    is_page_image_file,
)
from casbackup.repo.repository import Repository
from casbackup.repo.tree import Node, NodeKind
from casbackup.threadsig import quiet_thread

__all__ = ["DeltaFileReader", "wants_delta"]

QUEUE_FILES = 2

# Called with the file's outcome, or the error that must fail the backup (a file's
# ``reading._Reading`` is one).
Done = Callable[[FileOutcome | None, BaseException | None], None]


def wants_delta(threshold: int, size: int, mtime_ns: int, earlier: Node | None) -> bool:
    """Whether a file of ``size`` bytes modified at ``mtime_ns`` whose parent node is
    ``earlier`` is stored as deltas: the option is on (``threshold`` > 0), the file is at
    least that big, the parent's node at the same path is a file with content, and the
    file looks changed (its size or mtime moved). A file that looks unchanged but is read
    anyway (``--type full``, a ctime or inode that moved) goes to the readers, which read
    it in parallel with others and find its chunks stored."""
    return (
        threshold > 0
        and size >= threshold
        and earlier is not None
        and earlier.kind == NodeKind.FILE
        and bool(earlier.content)
        and (earlier.size, earlier.mtime_ns) != (size, mtime_ns)
    )


class DeltaFileReader:
    """The thread that reads and stores the files ``wants_delta`` picked.

    ``submit`` queues a file (blocks while ``QUEUE_FILES`` wait); ``done`` is called on
    this thread with the file's ``FileOutcome`` (an ``error`` when it could not be read,
    ``cancelled`` after a stop request) or with the exception that must fail the backup
    (a repository error). ``close`` stops the thread after the queued files."""

    def __init__(
        self,
        repo: Repository,
        chunker: Chunker,
        cancel: CancelFlag,
        on_bytes: Callable[[int], None],
        on_notice: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.repo = repo
        self.cancel = cancel
        self.on_bytes = on_bytes
        self.on_notice = on_notice  # a line the user should know (from this thread)
        self._cutter = StreamCutter(chunker)
        self._page_cutter = FixedChunker(PAGE_IMAGE_CHUNK)
        self._queue: queue.Queue[tuple[bytes, Node, Done] | None] = queue.Queue(QUEUE_FILES)
        self._thread = quiet_thread(self._run, name="delta-files")
        self._thread.start()

    def submit(self, path: bytes, earlier: Node, done: Done) -> None:
        """Read ``path`` and store it as deltas of ``earlier`` (its parent node)."""
        self._queue.put((path, earlier, done))

    def close(self) -> None:
        """Let the thread finish what is queued (quickly, once cancelled) and wait for it."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            path, earlier, done = job
            try:
                outcome = self._read(path, earlier)
            except BaseException as exc:  # noqa: BLE001 - the backup fails with it
                done(None, exc)
                continue
            done(outcome, None)

    def _read(self, path: bytes, earlier: Node) -> FileOutcome:
        if self.cancel.is_set():
            return FileOutcome(cancelled=True)
        try:
            fd = open_for_reading(path)
        except OSError as exc:  # either attempt: a file that cannot be read is the file's error
            return FileOutcome(error=(exc.errno or 0, exc.strerror or str(exc)))
        try:
            return self._store(fd, path, earlier)
        except Stopped:
            return FileOutcome(cancelled=True)
        except OSError as exc:
            return FileOutcome(error=(exc.errno or 0, exc.strerror or str(exc)))
        finally:
            os.close(fd)

    def _store(self, fd: int, path: bytes, earlier: Node) -> FileOutcome:
        """Chunk and store the open file; the same change check as the readers'
        (archiver/workers.py): size or times that moved while it was read."""
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise OSError(errno.EINVAL, "not a regular file any more")
        key = stream_key("file", path)
        # A SQLite database is cut at fixed offsets, as the readers cut it (workers.py).
        page_image = self.repo.aligned_deltas_allowed and is_page_image_file(fd)
        fixed = self._page_cutter.size if page_image else None
        bases = BaseFinder.for_content(self.repo, earlier.content, key, fixed)
        with open(fd, "rb", buffering=0, closefd=False) as f:
            pieces = self._page_cutter.stream(f) if page_image else self._cutter.chunks(f)
            ids, digest, size = store_chunks(
                self.repo, pieces, bases,
                stopped=self.cancel.is_set, on_bytes=self.on_bytes, copy_key=key,
            )  # fmt: skip
        if bases is not None and bases.copy_refuted:  # stored all the same (those chunks whole)
            self.on_notice(f"{os.fsdecode(path)}: {COPY_REFUTED}")
        return read_outcome(ids, digest, size, before, os.fstat(fd))
