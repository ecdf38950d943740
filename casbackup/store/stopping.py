"""A stop (Ctrl-C, SIGTERM, SIGHUP) never waits on a store request that does not answer.

Why: obstore's requests block in native code, and a main thread inside one runs no signal
handler until it returns. Every command reads its trees, snapshots, index files, keys and
config from its main thread, so a store that accepts a request and then stops answering
held Ctrl-C for the store's timeout (120 s) times the retries (measured before this
module: ``casbackup snapshots`` against SeaweedFS behind a proxy that hangs was still
running 10 s after SIGINT, and would have run for minutes).

How: ``call(fn, owner)`` runs ``fn`` on a daemon thread (``threadsig.quiet_thread``,
reused from call to call) when the caller is the main thread, which waits on it in a way
a signal interrupts. Other threads call ``fn`` directly: they never take stop signals,
and whoever waits on them waits interruptibly already (archiver/readpool.py). While the
main thread waits, SIGINT's handler is wrapped so that the stop is noted (``stopped``)
before the handler in force runs:

- a handler that raises (Python's KeyboardInterrupt, the CLI's SIGTERM mapping) ends the
  wait at once; the request runs on, or dies with the process, and its answer is dropped;
- a handler that only asks for a stop at a safe point (backup's first Ctrl-C) lets the
  request finish if it does within ``GRACE_S``; one still running then raises
  KeyboardInterrupt, which such a caller treats as its stop.

After a stop, the way out (releasing the lock, committing what was stored) still talks to
the store: each such request from the main thread waits at most ``GRACE_S``, and once one
did not answer in time (or the request interrupted by the stop did not), the store is
judged hung and every later request to it from the main thread fails at once with a
one-line ``StorageError``. A lock left behind that way is this process's, which the next
run on this host recognises as stale (repo/lock.py); nothing stored is lost, since a
stopped run commits nothing it has not stored.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from types import FrameType
from typing import Any, TypeVar

from casbackup.errors import StorageError
from casbackup.stopsig import set_stop_handler, stop_handler
from casbackup.threadsig import quiet_thread

T = TypeVar("T")

#: Seconds a store request may still take once a stop arrived (see the module docstring).
GRACE_S = 1.0

_stopped_at: list[float] = []  # time.monotonic() of the first stop this process received


def note_stop() -> None:
    """Record that a stop arrived (the first one counts); called by the signal handlers."""
    if not _stopped_at:
        _stopped_at.append(time.monotonic())


def stopped() -> float | None:
    """``time.monotonic()`` of the first stop this process received, or None."""
    return _stopped_at[0] if _stopped_at else None


# Threads whose store requests no one waits for any more (a reader pool stopped without
# waiting, archiver/readpool.py): a request there that fails is not tried again
# (store/retry.py), so a get that hung ends with the store's timeout, not the timeout
# times the attempts. (A main-thread request abandoned by ``call`` needs no mark: its
# retries run in the main thread, which the stop has taken elsewhere.)
_abandoned: set[int] = set()
_abandoned_lock = threading.Lock()


def abandon(idents: list[int | None]) -> None:
    """Mark the threads ``idents`` (``Thread.ident``) as abandoned until they ``forget``."""
    with _abandoned_lock:
        _abandoned.update(i for i in idents if i is not None)


def forget() -> None:
    """The calling thread is done with what it was abandoned in (it ends, or starts
    another request for someone who waits): its ident may be reused."""
    with _abandoned_lock:
        _abandoned.discard(threading.get_ident())


def abandoned() -> bool:
    """Whether no one waits any more for the calling thread's store requests."""
    return threading.get_ident() in _abandoned


_hung: list[Any] = []  # stores judged hung after a stop (a request outlived GRACE_S)


def judged_hung() -> bool:
    """Whether a store of this process was judged hung after the stop (see ``call``)."""
    return bool(_hung)


def acquire(lock: threading.Lock) -> bool:
    """Take ``lock`` (held by another thread, perhaps in a store request): True once taken;
    False when a stop arrived, ``GRACE_S`` passed since and ``LOCK_SLICE_S`` since the call,
    without it being released: the request that holds it may never end."""
    start = time.monotonic()
    while not lock.acquire(timeout=LOCK_SLICE_S):
        stop = stopped()
        if stop is not None and time.monotonic() >= max(stop + GRACE_S, start + LOCK_SLICE_S):
            return False
    return True


#: Seconds between looks at a stop while waiting for a lock (``acquire``), and the least
#: such a wait lasts after a stop (a thread that holds it briefly gets to finish).
LOCK_SLICE_S = 0.25


# How a stop that Python's handlers never see is noticed (``watch_stop``), or empty.
_stop_source: list[Callable[[], bool]] = []


@contextlib.contextmanager
def watch_stop(ended: Callable[[], bool]) -> Iterator[None]:
    """While C code handles the stop signals itself (libfuse's loop in the main thread:
    Python's handlers do not run), ``ended()`` tells whether a stop came: store requests
    of other threads are then waited for as ``call`` waits in the main thread, in slices
    of ``LOCK_SLICE_S``, and one still running ``GRACE_S`` after ``ended()`` turned true
    fails with StorageError (the thread that waited for it, a FUSE worker that libfuse
    joins before it unmounts, goes on)."""
    _stop_source.append(ended)
    try:
        yield
    finally:
        _stop_source.remove(ended)


def _call_watched(fn: Callable[[], T], owner: Any, what: str, ended: Callable[[], bool]) -> T:
    start = time.monotonic()
    future = _runner.submit(fn)
    try:
        while not wait([future], LOCK_SLICE_S).done:
            if stopped() is None and ended():
                note_stop()
            stop = stopped()
            if stop is not None and time.monotonic() >= max(stop + GRACE_S, start + LOCK_SLICE_S):
                raise _hung_error(owner, what)
    finally:
        future.cancel()
    return future.result()


def _forget_after_fork() -> None:
    # A forked child (the test suite's zygote forks one per command) starts with no stop
    # of its own and no caller threads (those of the parent do not exist in it).
    _stopped_at.clear()
    _abandoned.clear()
    _hung.clear()
    _stop_source.clear()
    global _runner
    _runner = _Runner()


class _StopDeferred(Exception):
    """Raised by the wrapped handler inside ``call``'s wait: a stop arrived and the handler
    in force did not end the wait itself (it asked for a stop at a safe point)."""


class _Runner:
    """Daemon threads that run main-thread store requests: an idle one is reused, a new one
    started when every thread is busy (or hung in a request no one waits for any more)."""

    def __init__(self) -> None:
        self._work: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._idle = 0
        self._started = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            # Every queued request has a thread that will take it: an idle one, or a new one.
            if self._idle:
                self._idle -= 1
                start = False
            else:
                self._started += 1
                start = True
        self._work.put((future, fn))
        if start:
            quiet_thread(self._serve, name=f"store-call-{self._started}").start()
        return future

    def _serve(self) -> None:
        while True:
            future, fn = self._work.get()
            if future.set_running_or_notify_cancel():
                try:
                    result = fn()
                except BaseException as exc:  # handed to the waiting main thread
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, fn  # a large answer is not kept alive while idle
            with self._lock:
                self._idle += 1


_runner = _Runner()
os.register_at_fork(after_in_child=_forget_after_fork)


def _hung_error(owner: Any, what: str) -> StorageError:
    where = getattr(owner, "location", "the store")
    return StorageError(
        f"{what}: {where} did not answer within {GRACE_S:g} s after the stop; left unfinished"
    )


def call(fn: Callable[[], T], owner: Any, what: str) -> T:
    """``fn()`` (one store request of ``owner``, a backend, described by ``what`` for an
    error), waited for so that a stop is never held by it (module docstring).

    Raises what ``fn`` raises; KeyboardInterrupt when a stop arrived during the wait and
    the handler in force raised it, or the request outlived ``GRACE_S`` after the stop;
    StorageError for a request made after a stop that did not answer within ``GRACE_S``,
    or made to a store already judged hung."""
    if threading.current_thread() is not threading.main_thread():
        ended = _stop_source[0] if _stop_source else None
        return fn() if ended is None else _call_watched(fn, owner, what, ended)
    if stopped() is not None and getattr(owner, "_hung_after_stop", False):
        raise _hung_error(owner, what)
    previous = stop_handler()
    waiting = [False]

    def on_stop(signum: int, frame: FrameType | None) -> None:
        if previous == signal.SIG_IGN:
            return
        note_stop()
        if callable(previous):
            previous(signum, frame)  # may raise (KeyboardInterrupt) or exit
        else:  # SIG_DFL, or a handler set outside Python: as Python's default does
            raise KeyboardInterrupt
        if waiting[0]:
            raise _StopDeferred

    start = time.monotonic()
    future = _runner.submit(fn)
    set_stop_handler(on_stop)
    try:
        waiting[0] = True
        while True:
            # The whole step sits in the try: the wrapped handler may raise _StopDeferred
            # between any two of its instructions while ``waiting`` is set.
            try:
                if future.done():
                    break
                stop = stopped()
                timeout = None if stop is None else max(stop, start) + GRACE_S - time.monotonic()
                if timeout is not None and timeout <= 0:
                    owner._hung_after_stop = True
                    _hung.append(owner)
                    if stop >= start:
                        raise KeyboardInterrupt  # the stop came while this request ran
                    raise _hung_error(owner, what)
                wait([future], timeout)
            except _StopDeferred:
                pass
    finally:
        waiting[0] = False
        set_stop_handler(previous)
        future.cancel()  # not started yet: it never will be
    return future.result()
