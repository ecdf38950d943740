"""Stop signals reach the main thread only: every thread casbackup starts blocks them.

The kernel delivers a process-directed SIGINT, SIGTERM or SIGHUP to any thread that does not
block it. Python runs handlers only in the main thread, and a main thread blocked in a wait
(``time.sleep``, a lock, ``Event.wait``, a pool's ``result.get()``) is woken by EINTR only when
the signal is delivered to it. A signal that lands on a helper thread (lock refresher, uploader,
receivers, read-ahead, a pool's handler threads) would leave the stop waiting until the main
thread's wait ends by itself. So every thread we start blocks them first (``block_stop_signals``
as its first call or as a ``ThreadPoolExecutor`` initializer), and threads started by code we
do not control (``multiprocessing.Pool``'s handlers) are started under ``stop_signals_blocked``
so that they inherit the blocked mask.

A process forked from a thread inherits that thread's mask: helper processes unblock the stop
signals again (``unblock_stop_signals`` in ``procs.become_helper`` and after every fork), so a
pool's ``terminate()`` still kills them. Threads that start programs (``subprocess``) must not
block them: an exec'd program keeps the mask, and would then ignore SIGTERM. That is why the
service's job threads (server/jobs.py, which run ``casbackup`` children), its scheduler thread
(which starts job threads) and the notify threads (which may run a command) stay as they are:
the service's main thread is uvicorn's loop, which wakes every 0.1 s to check for a stop anyway.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})


def block_stop_signals() -> None:
    """Block SIGINT, SIGTERM and SIGHUP in the calling thread (none elsewhere).

    Call first thing in a thread casbackup starts; a no-op where ``pthread_sigmask`` is missing.
    """
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def unblock_stop_signals() -> None:
    """Unblock SIGINT, SIGTERM and SIGHUP in the calling thread (a forked helper's first step)."""
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


@contextlib.contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block the stop signals in the calling thread for the duration, then restore its mask.

    For starting threads we do not create ourselves (``multiprocessing.Pool``'s handler
    threads), which inherit the mask of the thread that starts them. A stop signal sent
    meanwhile stays pending and is delivered when the mask is restored.
    """
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def quiet_thread(
    target: Callable[..., Any],
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    *,
    name: str | None = None,
    daemon: bool = True,
) -> threading.Thread:
    """A (not yet started) thread that runs ``target(*args, **kwargs)`` with the stop signals
    blocked, so that they go to the main thread (see the module's docstring)."""

    def run() -> None:
        block_stop_signals()
        target(*args, **(kwargs or {}))

    return threading.Thread(target=run, name=name, daemon=daemon)
