"""Helper processes: how casbackup starts them and keeps them from outliving their parent.

Used by the backup's file readers (archiver/workers.py) and by ``check --read-data``.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import os
import signal
import threading
import time
from typing import Any

from casbackup import libc
from casbackup.repo import ids
from casbackup.store import stopping
from casbackup.threadsig import unblock_stop_signals

_PR_SET_PDEATHSIG = 1


def start_method() -> str:
    # fork: nothing is imported again and nothing is pickled but the work. Safe here
    # even with other threads (the lock refresher, a service's request threads): a child
    # runs only its own loop, which takes no lock another thread could have held at the
    # fork (its sealer, index cache, compressors and file handles are its own).
    if "fork" in multiprocessing.get_all_start_methods():
        return "fork"
    return "spawn"


def context() -> Any:
    return multiprocessing.get_context(start_method())


def reap(threads: list[threading.Thread], processes: list[Any]) -> None:
    """Wait for receiver threads, then for their processes (killing any that hang).

    After a stop (store/stopping.py) a receiver is waited for at most ``GRACE_S`` more: one
    stuck (in a write the store does not finish) must not hold the way out; it is a daemon
    thread, and what it was storing is one no index names yet."""
    start = time.monotonic()
    for t in threads:
        while t.is_alive():
            stop = stopping.stopped()
            if stop is not None and time.monotonic() >= max(stop, start) + stopping.GRACE_S:
                stopping.abandon([t.ident])
                break
            t.join(0.25)
    for proc in processes:
        # After a stop a reader is killed sooner: what it reads is read again next time.
        proc.join(timeout=10 if stopping.stopped() is None else 0.5)
        if proc.is_alive():
            proc.kill()
            proc.join()


def become_helper(parent: int) -> None:
    """First thing in a helper: leave Ctrl-C to the parent and die when it dies."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into a cancel
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # and a closed terminal too (cli/signals.py)
    # SIGTERM is how a parent ends its helpers (Pool.terminate): the kernel's default, not
    # the handler the parent had (the service worker's turns it into a cancel). With that
    # handler a helper waiting on the pool's queue lock, which terminate() holds, outlived
    # the SIGTERM and terminate() waited for it forever: a check job stuck at "1/2 packs".
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Forked from a thread that blocks the stop signals (a pool's handler, or the main thread
    # while it starts a pool): take them back, so that terminate()'s SIGTERM kills us.
    unblock_stop_signals()
    _send_results_whole()
    ids.single_threaded_hashing()
    prctl = libc.function("prctl")
    if prctl is not None:  # Linux; elsewhere the parent check below
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


class _StopDeferredWhileHeld:
    """A lock that holds SIGTERM back while it is held (see ``_send_results_whole``)."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock

    def __enter__(self) -> Any:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        return self._lock.__enter__()

    def __exit__(self, *exc: object) -> Any:
        try:
            return self._lock.__exit__(*exc)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # dies here if due

    def __getattr__(self, name: str) -> Any:
        return getattr(self._lock, name)


def _send_results_whole() -> None:
    """In a ``multiprocessing.Pool`` helper: a SIGTERM (``Pool.terminate``) that comes
    while it sends a result back waits until the result queue's lock is released.

    Killed while holding that lock (a semaphore shared with the parent), a helper left it
    taken for good: the pool's task handler then waited for it for ever, and terminate()
    for the task handler (a stopped 'check --read-data' that never exited; once in 467
    stops at load 9). The lock is held for the write of one small pickled verdict, into a
    pipe the pool's result thread keeps draining while terminate() runs. (A helper has no
    threads of its own: the blocked signal cannot land in another thread.)"""
    proc = multiprocessing.current_process()
    args = getattr(proc, "_args", ())
    # Pool starts each helper as Process(target=pool.worker, args=(inqueue, outqueue, ...)).
    if getattr(proc, "_target", None) is not multiprocessing.pool.worker or len(args) < 2:
        return
    outqueue = args[1]
    lock = getattr(outqueue, "_wlock", None)
    if lock is not None and hasattr(signal, "pthread_sigmask"):
        outqueue._wlock = _StopDeferredWhileHeld(lock)
