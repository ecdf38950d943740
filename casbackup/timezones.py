"""The time zone whose calendar the schedules and retention go by, resolved one way.

``casbackup serve`` fires schedules in it and its forget jobs count retention's hours, days,
weeks, months and years in it; ``casbackup forget`` counts in it too. It is the zone the user
configured (``serve --timezone``, else the config's top-level ``timezone``), else the
machine's: ``TZ`` when it names a zone, else ``/etc/localtime`` (a symlink into zoneinfo names
its zone; a copy or a bind mount, as containers often get it, is read as it is), else UTC.

Why not the C library's local time (``datetime.astimezone()``): it knows no configured zone,
and where ``TZ`` is a POSIX rule (``CET-1CEST,M3.5.0,M10.5.0/3``) or a name zoneinfo does not
know, it and zoneinfo disagree; one resolution used everywhere cannot.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Mapping
from zoneinfo import ZoneInfo

from casbackup.errors import UsageError

LOCALTIME = "/etc/localtime"

log = logging.getLogger("casbackup.timezones")
_warned: set[str] = set()


def machine_zone(env: Mapping[str, str] | None = None, localtime: str = LOCALTIME) -> dt.tzinfo:
    """The machine's zone (see the module docstring); never raises."""
    name = (os.environ if env is None else env).get("TZ")
    if name:
        try:
            return ZoneInfo(name.lstrip(":"))
        except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
            if name not in _warned:  # the C library may read it otherwise: say which is used
                _warned.add(name)
                log.warning("TZ=%s is not a time zone name; schedules and retention use the "
                            "zone of %s (give one: --timezone or the config's timezone)",
                            name, localtime)  # fmt: skip
    try:
        link = os.readlink(localtime)
        return ZoneInfo(link.split("zoneinfo/", 1)[1])
    except (OSError, IndexError, KeyError, ValueError):
        pass
    try:
        with open(localtime, "rb") as f:
            return ZoneInfo.from_file(f, key=localtime)
    except (OSError, ValueError):
        return dt.UTC


def check_zone(name: str) -> str:
    """``name`` if it is an IANA zone name zoneinfo knows; else UsageError."""
    try:
        ZoneInfo(name)
    except (KeyError, ValueError, OSError):
        raise UsageError(f"{name!r} is not a known time zone (e.g. Europe/Berlin, UTC)") from None
    return name


def zone(name: str | None) -> dt.tzinfo:
    """The zone named ``name`` (an IANA name), or the machine's when None. Raises UsageError
    for a name zoneinfo does not know."""
    return ZoneInfo(check_zone(name)) if name else machine_zone()


def in_zone(when: dt.datetime, tz: dt.tzinfo | None = None) -> dt.datetime:
    """The aware time ``when`` in ``tz`` (None: the C library's local zone, as
    ``astimezone()``); never raises. Within a day of the ends of datetime's range (years 1
    and 9999: a snapshot from a client whose clock was far off) the zone's offset can step
    outside it: then ``when`` in UTC, else ``when`` as it is."""
    for zone_ in (tz, dt.UTC):
        try:
            return when.astimezone(zone_)
        except (OverflowError, OSError, ValueError):  # OSError: the C library's localtime
            continue
    return when


def local_time(t: dt.datetime, tz: dt.tzinfo) -> str:
    """An aware time ``t`` as ``YYYY-MM-DD HH:MM ZONE`` in ``tz`` (the abbreviation, or the
    UTC offset where the zone has none): how a person reads a time, in the dashboard and in
    the service's notifications alike."""
    t = in_zone(t, tz)  # never raises, even for the year 9999
    name = t.tzname() or t.strftime("%z")
    return f"{t:%Y-%m-%d %H:%M} {name}"
