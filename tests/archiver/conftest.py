"""Fixtures for backup tests: a controllable clock and a record of the files read."""

from __future__ import annotations

import os
import time

import pytest

from casbackup.archiver import backup as backup_module
from casbackup.archiver import workers as workers_module

STEP_NS = 100 * 1_000_000_000


class Clock:
    """Backup start times 100 s apart, in the future.

    Without it every file a test just wrote would sit inside the race guard's margin
    of the backup's start and be re-read every time; with it, tests decide which
    files are "racy" by giving them a start time as mtime.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.base = time.time_ns()

    def peek(self) -> int:
        """The start time the next backup will get."""
        return self.base + (self.calls + 1) * STEP_NS

    def now_utc(self) -> tuple[str, int]:
        ns = self.peek()
        self.calls += 1
        from datetime import UTC, datetime

        return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(), ns


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(backup_module, "now_utc", c.now_utc)
    return c


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every path whose contents a backup hands to its readers (in any order)."""
    seen: list[bytes] = []
    original = workers_module.ReaderPool.submit

    def counting(self, batch):  # type: ignore[no-untyped-def]
        seen.extend(os.path.basename(path) for path, _size, _done in batch)
        return original(self, batch)

    monkeypatch.setattr(workers_module.ReaderPool, "submit", counting)
    return seen
