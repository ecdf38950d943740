"""SIGTERM and SIGHUP stop a command the way Ctrl-C does (see README, "Exit codes")."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from types import FrameType

from casbackup.errors import EXIT_INTERRUPTED
from casbackup.stopsig import ignored, keep_ignored, set_stop_handler, stop_handler
from casbackup.store.stopping import note_stop
from casbackup.threadsig import unblock_stop_signals

# SIGTERM (systemd, docker stop, timeout) and SIGHUP (a closed terminal) stop a command the way
# Ctrl-C does: through whatever SIGINT handler is in force (the backup's deferred cancel, or
# KeyboardInterrupt), so what was stored is kept and indexed and the lock is released. The exit
# code is 128 + the signal's number, as a shell reports a process killed by it: 130 for SIGINT,
# 143 for SIGTERM, 129 for SIGHUP (README "Exit codes").
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_stopped_by: list[int] = []
_main_pid = 0


def _stop_like_ctrl_c(signum: int, frame: FrameType | None) -> None:
    if os.getpid() != _main_pid:
        # A forked helper inherited this handler: it must die of the signal as before (a
        # pool's terminate() relies on that), never turn it into a cancel of its own.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    if not _stopped_by:
        _stopped_by.append(signum)
    note_stop()
    handler = stop_handler()
    if callable(handler):
        # The signal's own number, so that a handler that gives up at once (a backup's second
        # stop) exits 128 + this signal's number: 143 for a second SIGTERM, not 130.
        handler(signum, frame)
    elif handler != signal.SIG_IGN:
        raise KeyboardInterrupt


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C: Python's KeyboardInterrupt, after noting the stop, so that the way out
    waits on a store that stopped answering for no longer than store/stopping.py allows."""
    note_stop()
    raise KeyboardInterrupt


def _defaults_in_child() -> None:
    for signum in STOP_SIGNALS:
        if not ignored(signum):
            signal.signal(signum, signal.SIG_DFL)
    # A child forked by a thread that blocks the stop signals (casbackup/threadsig.py) would
    # keep them blocked: give it the mask the main thread has.
    unblock_stop_signals()


def install_stop_signals() -> None:
    """Make SIGTERM and SIGHUP behave like SIGINT in this process (see STOP_SIGNALS).

    A stop signal this process inherited as ignored (``nohup``'s SIGHUP, the SIGINT of a
    shell's ``cmd &``) stays ignored, here and in the programs it starts (casbackup/stopsig.py).
    Forked helpers get the default actions back at once (``register_at_fork``): a pool's
    ``terminate()`` must kill them even while they are busy in C code, where a Python handler
    would not run.
    """
    global _main_pid
    if not _main_pid:
        os.register_at_fork(after_in_child=_defaults_in_child)
    _main_pid = os.getpid()
    keep_ignored((signal.SIGINT, *STOP_SIGNALS))
    for signum in STOP_SIGNALS:
        if not ignored(signum):
            signal.signal(signum, _stop_like_ctrl_c)
    if stop_handler() is signal.default_int_handler:
        set_stop_handler(_interrupt)


def interrupted_exit_code() -> int:
    """128 + the number of the signal that stopped the command (130 when it was Ctrl-C)."""
    return 128 + _stopped_by[0] if _stopped_by else EXIT_INTERRUPTED


def stopped_by() -> int | None:
    """The stop signal received (SIGTERM, SIGHUP), or None (none, or only Ctrl-C)."""
    return _stopped_by[0] if _stopped_by else None


@contextlib.contextmanager
def native_stop_signals() -> Iterator[None]:
    """Default actions for SIGTERM and SIGHUP for the duration, for C code that handles them
    itself: libfuse installs its handlers (which unmount) only over default ones, and a
    Python handler cannot run while the main thread is inside libfuse's loop."""
    previous = {
        signum: signal.signal(signum, signal.SIG_DFL)
        for signum in STOP_SIGNALS
        if signal.getsignal(signum) != signal.SIG_IGN  # libfuse leaves an ignored one alone
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
