"""MySQL/MariaDB helpers for counts taken in the dump's own snapshot (see mysql.py).

`TableLock` is a `mariadb`/`mysql` client session kept open, fed statements one batch at a
time, that holds what it took (`LOCK TABLES ... READ`, an open consistent snapshot) until
`close()` (closing its stdin ends the session; the server releases everything with it). `MarkerDumpStream` is the dump tool's stdout that
calls back once the output shows one of the given markers: the moment the lock may go.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from casbackup.engines.process import (
    ClientSession,
    ProcessDumpStream,
)


class TableLock(ClientSession):
    """A `mariadb`/`mysql` client session for `query()` until `close()` (batch mode stops
    at the first error)."""

    def __init__(self, argv: Sequence[str], *, pass_fds: Sequence[int], what: str) -> None:
        super().__init__(
            argv, what=what, tool="client", end_sql="SELECT '{end}';", pass_fds=pass_fds
        )


class MarkerDumpStream(ProcessDumpStream):
    """A `ProcessDumpStream` that calls `on_marker()` once, the first time its output holds
    one of `markers` (found across read boundaries too). `released_at_marker` says whether
    that happened (rather than the stream ending or closing first)."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        markers: Sequence[bytes],
        on_marker: Callable[[], None] | None,
        **kwargs: Any,
    ) -> None:
        self._markers = tuple(markers)
        self._on_marker = on_marker
        self._keep = max(len(m) for m in self._markers) - 1
        self._carry = b""
        self.released_at_marker = False
        super().__init__(argv, **kwargs)

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = super().readinto(b)
        if n and self._on_marker is not None:
            window = self._carry + bytes(memoryview(b)[:n])
            if any(m in window for m in self._markers):
                callback, self._on_marker = self._on_marker, None
                callback()
                self.released_at_marker = True
                self._carry = b""
            else:
                self._carry = window[-self._keep :] if self._keep else b""
        return n
