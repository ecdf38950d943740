"""Reader threads that a stop never waits for: the read-ahead pools of the planned readers.

The readers that read stored files ahead through the read plan (readcheck.read_files and
PlannedReads, maintenance/copy.py) keep several gets in flight on an object store. With a
``ThreadPoolExecutor``, a get that hangs (a store that stops answering mid-response) held
every way out: Ctrl-C raised KeyboardInterrupt in the main thread, then the pool's
``shutdown(wait=True)`` waited for the hung get, and the interpreter's exit joins every
executor thread too, so `dump` and `copy` stayed for the store's timeout times the retries
(measured: still running 11 minutes after SIGINT on SeaweedFS behind a proxy that stops
answering). Here the threads are daemon threads that block the stop signals
(``threadsig.quiet_thread``); ``shutdown(wait=False)`` (the way out on an error or a stop)
cancels what has not started and returns at once: a get still running finishes, or dies
with the process, and its result is dropped. ``shutdown(wait=True)`` (a reader done
normally) waits for the running reads, as an executor does.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any

from casbackup.store import stopping
from casbackup.threadsig import quiet_thread

_Work = tuple[Future[Any], Callable[..., Any], tuple[Any, ...]]


class ReaderPool(Executor):
    """At most ``threads`` daemon threads named ``name-N``, one started per submit until
    there are that many (an executor's way, without its exit-time join)."""

    def __init__(self, threads: int, name: str) -> None:
        self._size = max(1, threads)
        self._name = name
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        self._running: set[Future[Any]] = set()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run ``fn(*args)`` on a reader thread; its Future. RuntimeError once shut down."""
        if kwargs:
            raise TypeError("ReaderPool.submit takes positional arguments only")
        future: Future[Any] = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the reader pool is shut down")
            self._work.put((future, fn, args))
            if len(self._threads) < self._size:
                thread = quiet_thread(self._run, name=f"{self._name}-{len(self._threads)}")
                self._threads.append(thread)
                thread.start()
        return future

    def _run(self) -> None:
        while True:
            work = self._work.get()
            if work is None:
                stopping.forget()  # this thread's ident may be reused by another
                return
            future, fn, args = work
            with self._lock:
                if not future.set_running_or_notify_cancel():
                    continue
                self._running.add(future)
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to whoever waits on it
                self._settle(future, exc, failed=True)
            else:
                self._settle(future, result, failed=False)

    def _settle(self, future: Future[Any], outcome: Any, *, failed: bool) -> None:
        with self._lock:
            if future not in self._running:
                return  # ``stop`` failed it already: this late answer is dropped
            self._running.discard(future)
        if failed:
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def stop(self, error: BaseException) -> None:
        """Shut down without waiting, cancel what has not started, and fail the reads
        running with ``error`` at once, so that a thread waiting on one (a restore's
        writer waiting for its next range) wakes now rather than when a get that hangs
        returns; a running read's answer, when it comes, is dropped."""
        self.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            running, self._running = list(self._running), set()
        for future in running:
            future.set_exception(error)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop taking work; cancel what has not started when ``cancel_futures``; with
        ``wait``, wait for the reads running (a second call does not wait again)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    work = self._work.get_nowait()
                except queue.Empty:
                    break
                if work is not None:
                    work[0].cancel()
        for _ in threads:
            self._work.put(None)
        if not wait:
            # No one waits for a read still running: a get that hung is not retried after
            # the store's timeout (store/retry.py), so its thread ends then.
            stopping.abandon([thread.ident for thread in threads])
        if wait:
            for thread in threads:
                thread.join()
