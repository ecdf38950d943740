"""Helper processes: how casbackup starts them and keeps them from outliving their parent.

Used by the backup's file readers (archiver/workers.py) and by ``check --read-data``.
"""

from __future__ import annotations

import multiprocessing
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
    ids.single_threaded_hashing()
    prctl = libc.function("prctl")
    if prctl is not None:  # Linux; elsewhere the parent check below
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
