"""A whole-exchange time limit for the network notifiers (webhook, healthchecks, email).

The libraries' ``timeout`` bounds each socket operation, not the exchange: a peer that sends
one byte every few seconds (a broken proxy, a hostile receiver) kept a webhook with
``timeout = 3`` reading for as long as it liked, and the backup (or the service's job) waited
with it. ``Deadline`` shuts the connection's socket down once the notifier's ``timeout`` has
passed since it started: the blocked read returns at once and the notifier fails with
``NotifierFailed`` (a warning, as every notifier failure is).
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Any

from casbackup.notify import NotifierFailed
from casbackup.threadsig import quiet_thread


class Deadline:
    """``with Deadline(seconds, what) as d:`` ... ``d.watch(sock)`` for each socket the
    exchange uses. An error that leaves the block after the deadline fired (the shut-down
    socket's) becomes NotifierFailed ("<what>: no complete answer within N s: stopped")."""

    def __init__(self, seconds: float, what: str) -> None:
        self.seconds, self.what = seconds, what
        self.expired = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._done = threading.Event()

    def watch(self, sock: Any) -> None:
        """Shut ``sock`` down too when the deadline passes (a closed one is left alone)."""
        with self._lock:
            self._sockets.append(sock)
            expired = self.expired
        if expired:
            _shut(sock)

    def _run(self) -> None:
        if self._done.wait(self.seconds):
            return
        with self._lock:
            if self._done.is_set():
                return
            self.expired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def __enter__(self) -> Deadline:
        quiet_thread(self._run, name="notify-deadline").start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with self._lock:
            self._done.set()
            expired = self.expired
        if expired and kind is not None and issubclass(kind, Exception):
            raise NotifierFailed(
                f"{self.what}: no complete answer within {self.seconds:g} s: stopped"
            ) from None


def _shut(sock: Any) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # closed already, or never connected
        pass
