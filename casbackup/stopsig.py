"""The stop handler: what Ctrl-C runs, kept apart from SIGINT when SIGINT must stay ignored.

A signal a process inherits as ignored must stay ignored: ``nohup`` ignores SIGHUP, a shell
without job control starts ``cmd &`` with SIGINT and SIGQUIT ignored (so that a Ctrl-C at the
script's terminal does not reach it), and systemd or cron users rely on the same. casbackup's
stops go through one handler: the backup's deferred cancel, the store's bounded waits and
SIGTERM/SIGHUP (cli/signals.py) all run "the SIGINT handler in force". When SIGINT was
inherited ignored, that handler lives here instead of in SIGINT's disposition, so SIGINT
stays ignored (and stays ignored in the programs we start: an ignored signal survives exec,
a handler does not) while SIGTERM still stops the command cleanly.

``keep_ignored`` is called once at the start of a command (the CLI's ``main``); elsewhere
(tests, the service's workers, whose SIGINT is the service's cancel) nothing is kept aside and
``set_stop_handler``/``stop_handler`` are plain ``signal.signal``/``signal.getsignal`` on SIGINT.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

_ignored: set[int] = set()  # signals this process inherited as ignored and keeps so
# The stop handler while SIGINT stays ignored: Python's own (KeyboardInterrupt) until a
# command sets its own.
_kept: list[Handler] = [signal.default_int_handler]


def keep_ignored(signums: Iterable[int]) -> None:
    """Note which of ``signums`` are ignored now (inherited so): they stay ignored.

    Call before anything installs a handler for them (main thread, start of a command)."""
    for signum in signums:
        if signal.getsignal(signum) == signal.SIG_IGN:
            _ignored.add(signum)
        else:
            _ignored.discard(signum)


def ignored(signum: int) -> bool:
    """Whether ``signum`` was inherited ignored and must stay so (see ``keep_ignored``)."""
    return signum in _ignored


def stop_handler() -> Handler:
    """The handler a stop runs: SIGINT's, or the one kept aside while SIGINT stays ignored."""
    if signal.SIGINT in _ignored:
        return _kept[0]
    return signal.getsignal(signal.SIGINT)


def set_stop_handler(handler: Handler) -> Handler:
    """Make ``handler`` the stop handler; returns the previous one (for restoring it).

    Main thread only, as ``signal.signal``."""
    if signal.SIGINT in _ignored:
        previous, _kept[0] = _kept[0], handler
        return previous
    return signal.signal(signal.SIGINT, handler)  # type: ignore[arg-type]


def forget_ignored() -> None:
    """Nothing kept ignored any more (tests; a process that takes SIGINT as its cancel)."""
    _ignored.clear()
    _kept[0] = signal.default_int_handler
