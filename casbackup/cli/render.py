"""Output: human text (rich) on a terminal, JSON lines for scripts, progress bars on stderr."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from casbackup.reporter import Progress, Reporter
from casbackup.units import human_bytes  # the commands import it from here too


def shown(text: str) -> str:
    """``text`` safe for a terminal: each control or format character (C0 but newline, DEL,
    C1, bidi overrides) as ``\\xNN`` / ``\\uNNNN``, and each byte that was not UTF-8
    (a surrogate from ``os.fsdecode``) as ``\\xNN``.

    File names come from source trees and repositories that others control; printed raw,
    an escape sequence in one retitles or rewrites the user's terminal (issue 12, kind 8).
    JSON output needs none of this: ``json.dumps`` escapes them itself.
    """
    if text.isprintable():
        return text
    out = []
    for c in text:
        o = ord(c)
        if c.isprintable() or c == "\n":
            out.append(c)
        elif 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o <= 0xFF:
            out.append(f"\\x{o:02x}")
        else:
            out.append(f"\\u{o:04x}")
    return "".join(out)


def shown_name(text: str) -> str:
    """``shown`` for one name or path: a newline in it is escaped too (no forged lines)."""
    return shown(text).replace("\n", "\\n")


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, sort_keys=True, default=str))


def warn(message: str) -> None:
    click.echo(f"warning: {shown(message)}", err=True)


class CliReporter(Reporter):
    """Progress on stderr: a live line on a terminal, JSON lines with --json, nothing when quiet."""

    def __init__(self, *, json_mode: bool, quiet: bool, show_progress: bool) -> None:
        self.json_mode = json_mode
        self.quiet = quiet
        self.live = show_progress and not quiet and not json_mode and sys.stderr.isatty()
        self._started = time.monotonic()
        self._last_json = 0.0
        self._width = 0

    def progress(self, progress: Progress) -> None:
        elapsed = max(time.monotonic() - self._started, 1e-6)
        if self.json_mode and not self.quiet:
            now = time.monotonic()
            if now - self._last_json >= 1.0:
                self._last_json = now
                emit_json({
                    "message_type": "status", "phase": progress.phase, "files_done": progress.files_done,
                    "files_total": progress.files_total, "bytes_done": progress.bytes_done,
                    "bytes_total": progress.bytes_total, "seconds_elapsed": round(elapsed, 1),
                    "errors": progress.errors,
                })  # fmt: skip
            return
        if not self.live:
            return
        rate = progress.bytes_done / elapsed
        text = f"[{elapsed:6.1f}s] {progress.phase}: {progress.files_done} files, {human_bytes(progress.bytes_done)}"
        if progress.bytes_total and progress.bytes_done <= progress.bytes_total:
            pct = 100.0 * progress.bytes_done / max(progress.bytes_total, 1)
            left = (progress.bytes_total - progress.bytes_done) / rate if rate > 0 else 0
            text += f" / {human_bytes(progress.bytes_total)} ({pct:.0f}%, ETA {left:.0f}s)"
        text += f", {human_bytes(rate)}/s"
        if progress.errors:
            text += f", {progress.errors} errors"
        pad = max(0, self._width - len(text))
        self._width = len(text)
        sys.stderr.write("\r" + text + " " * pad)
        sys.stderr.flush()

    def done(self) -> None:
        if self.live and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
            sys.stderr.flush()

    def warning(self, message: str) -> None:
        if self.json_mode:
            click.echo(json.dumps({"message_type": "warning", "message": message}), err=True)
        elif not self.quiet:
            self.done()
            warn(message)

    def info(self, message: str) -> None:
        if not self.quiet and not self.json_mode:
            self.done()
            click.echo(message, err=True)


def reporter_for(ctx: click.Context) -> CliReporter:
    from casbackup.cli.context import global_options

    opts = global_options(ctx)
    return CliReporter(json_mode=opts.json, quiet=opts.quiet, show_progress=opts.progress)
