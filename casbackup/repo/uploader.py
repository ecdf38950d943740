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
from collections.abc import Callable
from typing import Any

from casbackup.threadsig import quiet_thread


class PackUploader:
    """Calls ``write(packer)`` for each submitted packer in one background thread."""

    def __init__(self, write: Callable[[Any], None], *, depth: int = 1) -> None:
        self._write = write
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._error: BaseException | None = None
        self._closing = False
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, packer: Any) -> None:
        """Queue a full pack (blocks while ``depth`` are waiting). Raises the failure of an
        earlier pack, if one failed (this packer is then aborted, not stored)."""
        if self._error is not None:
            packer.abort()
            raise self._error
        with self._start_lock:
            if self._thread is None:
                self._thread = quiet_thread(self._run, name="pack-upload")
                self._thread.start()
        self._queue.put(packer)

    def _run(self) -> None:
        while True:
            packer = self._queue.get()
            try:
                if packer is None:
                    return
                if self._error is not None or self._closing:
                    packer.abort()
                    continue
                self._write(packer)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller by wait/submit
                self._error = exc
            finally:
                self._queue.task_done()

    def wait(self) -> None:
        """Return when every submitted pack is stored; raise the first failure."""
        if self._thread is not None:
            self._queue.join()
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Stop the thread; packs still waiting are aborted, not stored (a close without a
        flush means the command failed: no index will name them)."""
        self._closing = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
