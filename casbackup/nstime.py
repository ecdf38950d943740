"""Node times as text, exactly: integer nanoseconds since the epoch, never through a float.

Trees store a time as signed 64-bit seconds plus nanoseconds (repo_format.md), so a time can
lie before 1970 or after 2262 (where 64-bit nanoseconds end). ``ns / 1e9`` keeps only about
16 significant digits: it loses nanoseconds today and can round 12:00:00.9999999 up to
12:00:01. Here the seconds and nanoseconds are split with integer arithmetic (``divmod``
floors, so a time before 1970 keeps a non-negative fraction) and the date comes from
``datetime`` arithmetic, which covers years 1 to 9999; outside them the text is
``@<seconds>.<nanoseconds>`` (seconds since the epoch), never a wrong date.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

NS_PER_S = 1_000_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def split_ns(ns: int) -> tuple[int, int]:
    """``ns`` (nanoseconds since the epoch) as (whole seconds, 0 <= nanoseconds < 10**9)."""
    return divmod(int(ns), NS_PER_S)


def to_datetime(ns: int, *, local: bool = True) -> datetime | None:
    """The second ``ns`` falls in, as an aware datetime (local time zone, or UTC), without
    the fraction; None when the year is outside 1..9999."""
    seconds, _ = split_ns(ns)
    try:
        when = _EPOCH + timedelta(seconds=seconds)
    except OverflowError:
        return None
    if not local:
        return when
    try:
        return when.astimezone()
    except (OverflowError, OSError, ValueError):  # the C library's localtime could not say
        return when


def _raw(ns: int) -> str:
    seconds, frac = split_ns(ns)
    return f"@{seconds}.{frac:09d}"


def _date_time(when: datetime, sep: str) -> str:
    # Not strftime: %Y does not pad years before 1000 on every platform.
    return (
        f"{when.year:04d}-{when.month:02d}-{when.day:02d}{sep}"
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}"
    )


def iso_seconds(t: float | None, timespec: str = "auto") -> str | None:
    """A POSIX time in seconds (a state database's REAL column) as ISO 8601 in UTC, or
    ``@<seconds>`` outside what datetime holds (years 1..9999: a stored token expiry of
    99999999999d made every listing of tokens fail); None stays None."""
    if t is None:
        return None
    try:
        return datetime.fromtimestamp(t, UTC).isoformat(timespec=timespec)
    except (ValueError, OverflowError, OSError):
        return f"@{t:.0f}"


def iso_ns(ns: int, *, local: bool = True) -> str:
    """ISO 8601 with all nine digits of the fraction and the offset:
    ``2300-01-01T00:00:00.000000001+01:00`` (``Z``-less ``+00:00`` for UTC), or
    ``@<seconds>.<nanoseconds>`` outside years 1..9999."""
    when = to_datetime(ns, local=local)
    if when is None:
        return _raw(ns)
    offset = when.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    _, frac = split_ns(ns)
    return f"{_date_time(when, 'T')}.{frac:09d}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def display_ns(ns: int, *, local: bool = True) -> str:
    """``YYYY-MM-DD HH:MM:SS`` (the second the time falls in: never rounded up), or
    ``@<seconds>.<nanoseconds>`` outside years 1..9999."""
    when = to_datetime(ns, local=local)
    return _raw(ns) if when is None else _date_time(when, " ")
