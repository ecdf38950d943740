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
