"""Human-readable sizes and counts, shared by the CLI, reports and warnings (below every layer
that prints)."""

from __future__ import annotations

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
