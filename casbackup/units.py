"""Human-readable sizes and counts, shared by the CLI, reports and warnings (below every layer
that prints)."""

from __future__ import annotations

import re
from datetime import timedelta

from casbackup.errors import UsageError

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB', 3481 -> '3.4 KiB', 1023.7 -> '1.0 KiB', -2048 -> '-2.0 KiB'.

    Binary units; whole bytes below 1 KiB, one decimal above. A value is rounded before its
    unit is chosen, so nothing prints as '1024 B' or '1024.0 KiB'.
    """
    size = abs(float(n))
    sign = "-" if n < 0 and round(size) else ""
    if round(size) < 1024:
        return f"{sign}{round(size)} B"
    for unit in _UNITS:
        size /= 1024
        if round(size, 1) < 1024 or unit == _UNITS[-1]:
            return f"{sign}{size:.1f} {unit}"
    raise AssertionError("unreachable")  # pragma: no cover


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """``1 file``, ``2 files``, ``0 files``; ``plural_form`` for irregular words (``match``)."""
    if count == 1:
        return f"{count} {singular}"
    return f"{count} {plural_form or singular + 's'}"


# Sizes are file and pack offsets: a signed 64-bit integer holds every one of them.
MAX_SIZE = (1 << 63) - 1
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A size as users write it, in bytes: '500M', '2G', '1.5GiB', '64k', '4096'.

    Binary units (K = 1024), case-insensitive, an optional 'B' or 'iB' after the unit.
    Raises ValueError (with a message that gives examples) for anything else, and for sizes
    over ``MAX_SIZE``.
    """
    m = _SIZE.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not a size (e.g. 500M, 2G)")
    try:
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
    except OverflowError:  # digits past a float's range: inf
        size = MAX_SIZE + 1
    if size > MAX_SIZE:
        raise ValueError(f"{text!r} is too large (at most 8E)")
    return size


MAX_RUN_TIME = 3650 * 86400  # seconds: ten years
_RUN_TIME_UNITS = {"d": 86400, "h": 3600, "m": 60, "min": 60, "s": 1}
_RUN_TIME_PART = re.compile(r"(\d+)\s*(d|h|min|m|s)", re.IGNORECASE)


def parse_run_time(value: int | str) -> int:
    """A run time as users write it, in whole seconds: '6h', '90min', '1h30m', '2d', '45s',
    or a number of seconds (an integer or digits). Units d, h, m or min (minutes), s; 0 is
    allowed (callers read it as "no limit"). Raises ValueError with examples for anything
    else, negative values and more than ``MAX_RUN_TIME`` included."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a run time (e.g. 6h, 90min, 1h30m)")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is not a run time (e.g. 6h, 90min, 1h30m)")
        seconds = value
    elif (text := value.strip()).isdigit():
        seconds = int(text)
    else:
        parts = _RUN_TIME_PART.findall(text)
        if not parts or _RUN_TIME_PART.sub("", text).strip():
            raise ValueError(f"{value!r} is not a run time (e.g. 6h, 90min, 1h30m)")
        seconds = sum(int(n) * _RUN_TIME_UNITS[unit.lower()] for n, unit in parts)
    if seconds > MAX_RUN_TIME:
        # A timer cannot wait past ~292 years (threading.TIMEOUT_MAX): the service's job
        # limit would die with an OverflowError and leave the job unlimited.
        raise ValueError(f"{value!r} is too long (at most 3650d; 0 for no limit)")
    return seconds


def format_run_time(seconds: float) -> str:
    """Whole seconds as ``parse_run_time`` reads them back: 21600 -> '6h', 5400 -> '1h30m',
    45 -> '45s', 0 -> '0s'."""
    left, out = int(seconds), ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            out += f"{left // size}{unit}"
            left %= size
    return out or "0s"


# Fixed lengths, because a timedelta cannot be calendar-aware: "1m" is 30 days and "1y"
# 365 days whatever the month or leap year (restic adds calendar months and years instead;
# the difference is at most a day or two at the edge of a keep-within window).
_UNIT_LENGTHS = {
    "y": timedelta(days=365),
    "m": timedelta(days=30),
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
}
_DURATION = re.compile(r"(?:[0-9]+[ymwdh])+")
_PART = re.compile(r"([0-9]+)([ymwdh])")


def parse_duration(text: str) -> timedelta:
    """Parse ``7d``, ``2w``, ``1y2m3d4h`` into a timedelta.

    Units: y = 365 days, m = 30 days (months, not minutes), w = 7 days, d = 24 hours,
    h = 1 hour; each at most once, in any order. Raises UsageError on anything else.
    """
    cleaned = text.strip()
    hint = "use a number and a unit y (365 days), m (30 days), w, d or h, e.g. 7d, 2w or 1y2m3d4h"
    if not _DURATION.fullmatch(cleaned):
        raise UsageError(f"invalid duration {text!r}: {hint}")
    total = timedelta(0)
    units: set[str] = set()
    for number, unit in _PART.findall(cleaned):
        if unit in units:
            raise UsageError(f"invalid duration {text!r}: unit {unit!r} given twice")
        units.add(unit)
        try:
            total += int(number) * _UNIT_LENGTHS[unit]
        except OverflowError:
            raise UsageError(f"invalid duration {text!r}: too long") from None
    return total
