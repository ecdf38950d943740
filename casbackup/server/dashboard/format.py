"""Jinja filters for the dashboard: ages, sizes, durations, and the login page's safe ``next``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from jinja2 import Environment, pass_context
from jinja2.runtime import Context

from casbackup.text import storable
from casbackup.timezones import local_time
from casbackup.units import human_bytes


def _time(value: Any) -> dt.datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, dt.datetime):
        t = value
    elif isinstance(value, int | float):
        try:
            t = dt.datetime.fromtimestamp(value, dt.UTC)
        except (ValueError, OverflowError, OSError):  # past year 9999 (a stored expiry)
            return None
    else:
        try:
            t = dt.datetime.fromisoformat(str(value))
        except ValueError:
            return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def age(value: Any, now: dt.datetime | None = None) -> str:
    """ "2 h ago", "3 d ago", "in 5 min" (for a future time); "never" for None."""
    t = _time(value)
    if t is None:
        return "never"
    now = now or dt.datetime.now(dt.UTC)
    seconds = (now - t).total_seconds()
    future = seconds < 0
    s = abs(seconds)
    if s < 60:
        text = "just now" if not future else "in under a minute"
        return text
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            n = int(s // size)
            return f"in {n} {unit}" if future else f"{n} {unit} ago"
    return "just now"


def when(value: Any, tz: dt.tzinfo = dt.UTC) -> str:
    """A time as ``YYYY-MM-DD HH:MM`` in zone ``tz`` with the zone's abbreviation of that
    moment (``2026-03-29 03:30 CEST``); "—" for None or garbage."""
    t = _time(value)
    return "—" if t is None else local_time(t, tz)


@pass_context
def _when_in_page_zone(ctx: Context, value: Any) -> str:
    """``when`` in the zone the page was rendered for (``tz``: the service's, the zone of
    its schedules and retention, so a run scheduled at 02:00 shows as 02:00)."""
    return when(value, ctx.get("tz") or dt.UTC)


def size(value: Any) -> str:
    if value is None:
        return "—"
    return human_bytes(float(value))


def duration(value: Any) -> str:
    if value is None:
        return "—"
    s = float(value)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"


def count_of(n: Any, noun: str) -> str:
    """``1 pack``, ``2 packs``, ``0 packs`` (English plural: the noun plus s)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def percent(done: Any, total: Any) -> int:
    try:
        return max(0, min(100, int(float(done) * 100 / float(total)))) if total else 0
    except (TypeError, ValueError):
        return 0


def mode(value: Any) -> str:
    """Permission bits as the API sends them (``0o755``) shown as ``755``."""
    text = str(value)
    return text[2:] if text.startswith("0o") else text


def report_text(doc: Any) -> str:
    """A recovery report as the library renders it for people (the Markdown written beside
    the recovered files); the JSON itself if it is not in the shape that renderer expects."""
    import json

    from casbackup.recovery.report import render_markdown

    try:
        return render_markdown(doc)
    except (KeyError, TypeError, ValueError, AttributeError):
        return json.dumps(doc, indent=2, sort_keys=True)


def safe_next(target: str) -> str:
    """Where to go after logging in: a path on this site only (no ``//host`` or scheme: an
    open redirect would let a link to our login page forward a user anywhere)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(c) < 32 for c in target):
        return "/"
    return target


def _finalize(value: Any) -> Any:
    """Every ``{{ ... }}`` of a page: text that is not UTF-8 (a stored name in an error
    message) shown as ``storable`` shows it; a page that held it answered 500."""
    if not isinstance(value, str):
        return value
    fixed = storable(value)
    return value if fixed is value else type(value)(fixed)  # Markup stays Markup


def install_filters(env: Environment) -> None:
    env.finalize = _finalize
    env.filters.update(
        age=age,
        when=_when_in_page_zone,
        size=size,
        duration=duration,
        mode=mode,
        report_text=report_text,
        count_of=count_of,
        text=storable,  # a file name that is not UTF-8 (a snapshot's errors)
    )
    from casbackup.server.dashboard.views import path_query

    env.globals.update(percent=percent, path_query=path_query)
