"""MySQL/MariaDB helpers for counts taken in the dump's own snapshot (see mysql.py).

`TableLock` is a `mariadb`/`mysql` client session kept open, fed statements one batch at a
time, that holds what it took (`LOCK TABLES ... READ`, an open consistent snapshot) until
`close()` (closing its stdin ends the session; the server releases everything with it). `MarkerDumpStream` is the dump tool's stdout that
calls back once the output shows one of the given markers: the moment the lock may go.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from casbackup.engines.process import (
    ProcessDumpStream,
    StderrDrain,
    child_env,
    describe_exit,
    summarize,
)
from casbackup.errors import DatabaseError

_END = "__casbackup_end__"
_CLOSE_WAIT = 10.0  # seconds the client may take to exit after its stdin closed


class TableLock:
    """A client session for `query()` until `close()`."""

    def __init__(self, argv: Sequence[str], *, pass_fds: Sequence[int], what: str) -> None:
        self._what = what
        self._closed = False
        try:
            self._proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=child_env(),
                pass_fds=tuple(pass_fds),
            )
        except FileNotFoundError as e:
            raise DatabaseError(f"{what}: {argv[0]} not found: install the client tools") from e
        self._drain = StderrDrain(self._proc.stderr)  # type: ignore[arg-type]

    def query(self, sql: str) -> list[str]:
        """Run `sql` (one or more statements); its output lines. DatabaseError when the
        client exits (batch mode stops at the first error), with the server's message."""
        assert self._proc.stdin is not None and self._proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.write(f"{sql}\nSELECT '{_END}';\n".encode())
            self._proc.stdin.flush()
        lines: list[str] = []
        while True:
            raw = self._proc.stdout.readline()
            if not raw:
                code = self._proc.wait()
                self.close()
                raise DatabaseError(
                    f"{self._what}: {describe_exit('client', code)}: "
                    f"{summarize(self._drain.text())}"
                )
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line == _END:
                return lines
            lines.append(line)

    def close(self) -> None:
        """End the session (releasing its locks); idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(OSError, ValueError):
            if self._proc.stdin is not None:
                self._proc.stdin.close()
        try:
            self._proc.wait(timeout=_CLOSE_WAIT)
        except subprocess.TimeoutExpired:
            self._proc.kill()  # the server drops the locks with the connection
            self._proc.wait()
        self._drain.text()
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()


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
