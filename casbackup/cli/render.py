"""Output: human text (rich) on a terminal, JSON lines for scripts, progress bars on stderr."""

from __future__ import annotations

import json
import sys
import time
import unicodedata
from typing import Any

import click

from casbackup.reporter import Progress, Reporter
from casbackup.units import human_bytes, plural  # the commands import them from here too

# Characters that change what a terminal shows rather than being shown: line breaks, escape
# sequences (ESC, CSI), bidirectional overrides that reorder a line, and the like.
_BIDI = set("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (os.fsdecode's surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if ch in "\n\t\r":
        return {"\n": "\\n", "\t": "\\t", "\r": "\\r"}[ch]
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def _needs_escape(ch: str) -> bool:
    return ch in _BIDI or unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp")


def printable(value: str | bytes | object) -> str:
    """A name or message as a terminal should show it: one line, no control sequences.

    Bytes are decoded as UTF-8 with invalid bytes shown as ``\\xNN`` (as are the
    surrogate escapes ``os.fsdecode`` makes of them); control characters (``\\n``,
    ``\\x1b``, C1 codes), line separators and bidirectional overrides are shown escaped too,
    so a hostile file name cannot move the cursor, recolour or rewrite the terminal, or
    fake another line. Everything else, including non-ASCII letters, is shown as is.
    Text only: ``--json`` output carries names raw (JSON escapes them itself).
    """
    text = value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)
    if text.isprintable() and text.isascii():
        return text  # the common case, fast
    return "".join(_escape_char(ch) if _needs_escape(ch) else ch for ch in text)


def cell(value: str | bytes | object) -> str:
    """A table cell for rich: ``printable`` and with rich's markup (``[bold]``) escaped."""
    from rich.markup import escape

    return escape(printable(value))


def emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, sort_keys=True, default=str))


def emit_json_err(doc: Any) -> None:
    """A JSON line on stderr (messages that are not the command's result)."""
    click.echo(json.dumps(doc, sort_keys=True, default=str), err=True)


def json_mode() -> bool:
    """Whether the running command was given ``--json`` (False outside a command)."""
    ctx = click.get_current_context(silent=True)
    obj = ctx.find_root().obj if ctx is not None else None
    return bool(getattr(obj, "json", False))


def echo_paths(paths: list[str], limit: int = 20) -> None:
    """The first ``limit`` paths, indented, one a line (printable), then "... and N more"."""
    for path in paths[:limit]:
        click.echo(f"  {printable(path)}")
    if len(paths) > limit:
        click.echo(f"  ... and {len(paths) - limit} more")


def warn(message: str) -> None:
    """One line on stderr; names in ``message`` are escaped for the terminal (``printable``).

    Under ``--json`` the line is a JSON object instead (``{"message_type": "warning",
    "message": ...}``), so that stderr stays JSON for scripts."""
    if json_mode():
        emit_json_err({"message_type": "warning", "message": message})
        return
    click.echo(f"warning: {printable(message)}", err=True)


def error_item(message: str) -> None:
    """One of several errors a command lists before its final one-line failure: ``error: ...``
    on stderr, or a JSON line ``{"message_type": "error_item", "message": ...}`` under --json."""
    if json_mode():
        emit_json_err({"message_type": "error_item", "message": message})
        return
    click.echo(f"error: {printable(message)}", err=True)


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
                    "errors": progress.errors, "unit": progress.unit,
                })  # fmt: skip
            return
        if not self.live:
            return
        rate = progress.bytes_done / elapsed
        text = f"[{elapsed:6.1f}s] {progress.phase}: {plural(progress.files_done, progress.unit)}, {human_bytes(progress.bytes_done)}"
        if progress.bytes_total and progress.bytes_done <= progress.bytes_total:
            pct = 100.0 * progress.bytes_done / max(progress.bytes_total, 1)
            left = (progress.bytes_total - progress.bytes_done) / rate if rate > 0 else 0
            text += f" / {human_bytes(progress.bytes_total)} ({pct:.0f}%, ETA {left:.0f}s)"
        text += f", {human_bytes(rate)}/s"
        if progress.errors:
            text += f", {plural(progress.errors, 'error')}"
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
            emit_json_err({"message_type": "warning", "message": message})
        elif not self.quiet:
            self.done()
            warn(message)

    def info(self, message: str) -> None:
        if not self.quiet and not self.json_mode:
            self.done()
            click.echo(printable(message), err=True)


def reporter_for(ctx: click.Context) -> CliReporter:
    from casbackup.cli.context import global_options

    opts = global_options(ctx)
    return CliReporter(json_mode=opts.json, quiet=opts.quiet, show_progress=opts.progress)
