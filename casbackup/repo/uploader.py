"""Full packs stored by a background thread for remote stores, while the next ones fill.

Why: ``Repository.store_sealed`` is called by the thread that collects the reader
processes' sealed blobs; storing a full pack there meant that thread stopped collecting
for the whole PUT (about 0.5 s per 11 MiB pack on loopback SeaweedFS), and the readers
stalled behind it. Local folders keep storing in place (a write is a page-cache copy).

Bounds: one thread, at most ``depth`` full packs waiting (``submit`` blocks beyond it),
so memory stays at (depth + 2) packs. Order of writes is unchanged: ``wait`` (called by
``Repository.flush`` before it writes an index naming the packs) returns only when every
submitted pack is stored, and raises the first failure; a pack that failed is aborted by
the write function itself, and after a failure the packs still queued are aborted, never
stored, so no snapshot can name blobs of a pack that is missing.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from casbackup.errors import Interrupted, StorageError
from casbackup.store import stopping
from casbackup.threadsig import quiet_thread


class PackUploader:
    """Calls ``write(packer)`` for each submitted packer in one background thread."""

    def __init__(self, write: Callable[[Any], None], *, depth: int = 1) -> None:
        self._write = write
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._closing = False
        self._abandoned = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, packer: Any) -> None:
        """Queue a full pack (blocks while ``depth`` are waiting). Raises the failure of an
        earlier pack, if one failed, and Interrupted once a stop arrived (store/stopping.py:
        a wait behind an upload the store does not answer must not hold the way out); this
        packer is then aborted, not stored."""
        if self._error is not None:
            packer.abort()
            raise self._error
        with self._start_lock:
            if self._thread is None:
                self._thread = quiet_thread(self._run, name="pack-upload")
                self._thread.start()
        while True:
            if stopping.stopped() is not None:
                packer.abort()
                raise Interrupted("interrupted; a full pack was left unstored")
            try:
                # In slices: a stop noted meanwhile ends the wait.
                self._queue.put(packer, timeout=0.25)
                return
            except queue.Full:
                pass

    def _run(self) -> None:
        while True:
            packer = self._queue.get()
            try:
                if packer is None:
                    return
                if self._error is not None or self._closing or stopping.stopped() is not None:
                    # After a stop a pack not begun is not begun: the way out waits only
                    # for the one being stored (its blobs are read again by the next run).
                    packer.abort()
                    continue
                self._write(packer)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller by wait/submit
                self._error = exc
            finally:
                self._queue.task_done()

    def wait(self) -> None:
        """Return when every submitted pack is stored; raise the first failure. After a
        stop (store/stopping.py) it waits at most ``UPLOAD_GRACE_S`` more, then raises
        StorageError: a PUT the store left hanging must not hold the way out."""
        if self._thread is not None:
            start = time.monotonic()
            done = self._queue.all_tasks_done
            with done:
                while self._queue.unfinished_tasks:
                    limit = _limit(start)
                    if limit is not None and limit <= 0:
                        self._abandon()
                        raise StorageError(
                            "a pack upload did not finish after the stop; the packs it "
                            "had not stored are stored again by the next run"
                        )
                    # In slices: a stop noted meanwhile bounds the rest of the wait.
                    done.wait(0.5 if limit is None else min(limit, 0.5))
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop the thread; packs still waiting are aborted, not stored (a close without a
        flush means the command failed: no index will name them). After a stop, a PUT
        still running is waited for as long as ``wait`` would: its thread is a daemon and the
        pack, stored or not, is one no index names (garbage for prune, never damage)."""
        self._closing = True
        if self._thread is not None:
            start = time.monotonic()
            told = False  # the thread was handed its end (None)
            while self._thread.is_alive() and not self._abandoned:
                limit = _limit(start)
                if limit is not None and limit <= 0:
                    self._abandon()
                    break
                step = 0.5 if limit is None else min(limit, 0.5)
                if told:
                    self._thread.join(step)
                    continue
                try:
                    # The queue may be full behind a PUT that does not end: in slices too.
                    self._queue.put(None, timeout=step)
                    told = True
                except queue.Full:
                    pass
            self._thread = None

    def _abandon(self) -> None:
        """No one waits for the upload thread any more: its PUT is not retried (store/
        stopping.py), and ``close`` does not wait for it a second time."""
        assert self._thread is not None
        stopping.abandon([self._thread.ident])
        self._abandoned = True


#: Seconds a pack upload may still take after a stop (one Ctrl-C stops a command within
#: about a second, and a stopped run keeps only what is indexed: a pack cut short is read
#: and stored again by the next run, nothing committed is lost).
UPLOAD_GRACE_S = 1.0


def _limit(start: float) -> float | None:
    """Seconds a wait begun at ``start`` may still last: None (no bound) until a stop."""
    stop = stopping.stopped()
    if stop is None:
        return None
    return max(stop, start) + UPLOAD_GRACE_S - time.monotonic()
