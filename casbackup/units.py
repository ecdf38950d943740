"""Human-readable sizes and counts, shared by the CLI, reports and warnings (below every layer
that prints)."""

from __future__ import annotations

import re

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


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A size as users write it, in bytes: '500M', '2G', '1.5GiB', '64k', '4096'.

    Binary units (K = 1024), case-insensitive, an optional 'B' or 'iB' after the unit.
    Raises ValueError (with a message that gives examples) for anything else.
    """
    m = _SIZE.fullmatch(text)
    if not m:
        raise ValueError(f"{text!r} is not a size (e.g. 500M, 2G)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])


_RUN_TIME_UNITS = {"d": 86400, "h": 3600, "m": 60, "min": 60, "s": 1}
_RUN_TIME_PART = re.compile(r"(\d+)\s*(d|h|min|m|s)", re.IGNORECASE)


def parse_run_time(value: int | str) -> int:
    """A run time as users write it, in whole seconds: '6h', '90min', '1h30m', '2d', '45s',
    or a number of seconds (an integer or digits). Units d, h, m or min (minutes), s; 0 is
    allowed (callers read it as "no limit"). Raises ValueError with examples for anything
    else, negative values included."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a run time (e.g. 6h, 90min, 1h30m)")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{value!r} is not a run time (e.g. 6h, 90min, 1h30m)")
        return value
    text = value.strip()
    if text.isdigit():
        return int(text)
    parts = _RUN_TIME_PART.findall(text)
    if not parts or _RUN_TIME_PART.sub("", text).strip():
        raise ValueError(f"{value!r} is not a run time (e.g. 6h, 90min, 1h30m)")
    return sum(int(n) * _RUN_TIME_UNITS[unit.lower()] for n, unit in parts)


def format_run_time(seconds: float) -> str:
    """Whole seconds as ``parse_run_time`` reads them back: 21600 -> '6h', 5400 -> '1h30m',
    45 -> '45s', 0 -> '0s'."""
    left, out = int(seconds), ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if left >= size:
            out += f"{left // size}{unit}"
            left %= size
    return out or "0s"
