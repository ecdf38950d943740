"""How long operations report progress without printing: a callback interface.

The CLI renders it as a progress bar or JSON lines; the web service as job progress.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Progress:
    phase: str = ""
    files_done: int = 0
    files_total: int | None = None
    bytes_done: int = 0
    bytes_total: int | None = None
    current: str = ""
    errors: int = 0
    # What files_done/files_total count, singular: most phases count files, but check's read
    # data and prune's phases count packs, stats and repair snapshots count snapshots.
    unit: str = "file"


class Reporter:
    """Base reporter: ignores everything. Subclasses override what they show."""

    def progress(self, progress: Progress) -> None:
        """Called often (throttled by the caller to a few times per second)."""

    def warning(self, message: str) -> None:
        """A problem that does not stop the operation (an unreadable file)."""

    def info(self, message: str) -> None:
        """A notable step ("no parent snapshot: doing a full backup")."""


NULL_REPORTER = Reporter()


class Throttle:
    """Passes progress to a reporter at most a few times per second (hot loops call it freely)."""

    def __init__(self, reporter: Reporter, progress: Progress, interval: float = 0.25) -> None:
        self.reporter = reporter
        self.progress = progress
        self.interval = interval
        self._last = 0.0

    def __call__(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last > self.interval:
            self._last = now
            self.reporter.progress(self.progress)
