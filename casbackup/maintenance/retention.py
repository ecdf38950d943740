"""Retention policies: which snapshots a policy keeps, which it removes, and why.

A policy is data (:class:`RetentionPolicy`); :func:`apply_policy` is a pure function of
the snapshots, the policy, the current time and a time zone. ``forget`` in the CLI and
the server's scheduled retention both call it, so they cannot disagree.

Semantics follow restic's ``forget``, with the differences marked *(differs)*:

- Snapshots are ordered newest first by ``(time, id)``, so equal timestamps always give the
  same answer whatever order the repository listed them in (the larger id counts as newer).
- ``keep_last=N`` keeps the N newest snapshots.
- ``keep_hourly/daily/weekly/monthly/yearly=N``: walking newest to oldest, the newest
  snapshot of each distinct calendar bucket is kept until N buckets have a kept snapshot.
  Buckets are calendar units of the time zone ``tz`` (default: the system's local zone), so
  a "day" is a calendar day there even when it is 23 or 25 hours long. Weeks are ISO weeks
  (Monday to Sunday, numbered like ``2026-W53``). In the repeated hour of a fall-back
  transition, the two real hours are separate hourly buckets *(differs: restic buckets by
  wall-clock hour in each snapshot's own recorded zone, so it merges them, and two
  snapshots of one instant taken in different zones can land in different days)*.
- ``keep_within=D`` keeps every snapshot at most D older than the *newest snapshot of the
  group*, not than ``now``: a group whose backups stopped a month ago keeps its last week
  of snapshots rather than losing all of them. The boundary is inclusive *(differs: restic
  keeps only strictly younger ones)*.
- ``keep_within_hourly/daily/weekly/monthly/yearly=D``: the newest snapshot of each
  calendar bucket among the snapshots at most D older than the group's newest snapshot
  (restic's ``--keep-within-daily`` and the like: "one a day for the last 30 days" however
  many days had no backup, where ``keep_daily=30`` reaches back 30 backup days).
  The boundary is inclusive, as for ``keep_within``.
- ``keep_tags`` keeps every snapshot that carries any of the tags *(differs: restic's
  ``--keep-tag a,b`` means "both a and b")*.
- When a bucket rule wants more buckets than the history has, the oldest snapshot is kept
  as well ("oldest daily snapshot 2026-11-02"), so the history kept is as long as possible
  until the rule fills up (restic does the same).
- A snapshot is kept if any rule keeps it; the decision lists every rule that did.

Safety rules, because a retention run is the only routine operation that deletes
backups on purpose:

- An empty policy is refused (:class:`~casbackup.errors.UsageError`) rather than read as
  "keep nothing". A caller that really means to remove every snapshot must do so
  explicitly (the CLI can offer a flag for that); it cannot happen by forgetting options.
- A non-empty policy always keeps the newest snapshot of the group, even when no rule
  matches it (for example ``keep_tags={"release"}`` and an untagged latest backup).
- Snapshots dated after ``now`` (a client with a wrong clock) are always kept and take no
  part in the rules: otherwise one snapshot from "2040" would take the ``keep_last`` and
  bucket slots, and the real recent backups could all be removed *(differs: restic only
  leaves them out when it finds the newest snapshot for keep-within)*.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Any, Protocol, TypeVar, overload

from casbackup.errors import UsageError
from casbackup.timezones import in_zone
from casbackup.units import parse_duration  # noqa: F401 - callers import it from here

_COUNT_FIELDS = (
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
)
# keep_within_<bucket>: one snapshot per calendar bucket, within a duration of the newest.
_WITHIN_FIELDS = (
    "keep_within_hourly",
    "keep_within_daily",
    "keep_within_weekly",
    "keep_within_monthly",
    "keep_within_yearly",
)


@dataclass(frozen=True)
class RetentionPolicy:
    """What to keep. All counts 0 and no other rule means an empty policy.

    ``keep_within`` is measured back from the newest snapshot of the group, not from now
    (see the module docstring). ``keep_tags`` accepts any iterable of tags and is stored
    as a frozenset.
    """

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: timedelta | None = None
    keep_tags: frozenset[str] = frozenset()
    keep_within_hourly: timedelta | None = None
    keep_within_daily: timedelta | None = None
    keep_within_weekly: timedelta | None = None
    keep_within_monthly: timedelta | None = None
    keep_within_yearly: timedelta | None = None

    def __post_init__(self) -> None:
        # Policies are built from user input (CLI flags, config files), so bad values are
        # usage errors here rather than surprises deep inside apply_policy.
        for name in _COUNT_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"{name} must be a whole number of 0 or more, not {value!r}")
        for name in ("keep_within", *_WITHIN_FIELDS):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, timedelta) or value < timedelta(0)):
                raise UsageError(f"{name} must be a duration of 0 or more, not {value!r}")
        if isinstance(self.keep_tags, str):
            # frozenset("release") would silently become {"r", "e", "l", ...}.
            raise UsageError(f"keep_tags must be a set of tags, not the string {self.keep_tags!r}")
        tags = frozenset(self.keep_tags)
        for tag in tags:
            if not isinstance(tag, str) or not tag:
                raise UsageError(f"keep_tags must hold non-empty strings, not {tag!r}")
        object.__setattr__(self, "keep_tags", tags)

    def is_empty(self) -> bool:
        """True when no rule is set. ``keep_within=timedelta(0)`` is a rule, not empty."""
        return (
            not any(getattr(self, name) for name in _COUNT_FIELDS)
            and self.keep_within is None
            and not self.keep_tags
            and all(getattr(self, name) is None for name in _WITHIN_FIELDS)
        )


class SnapshotLike(Protocol):
    """What a policy needs from a snapshot record.

    Read-only properties, so frozen dataclasses and NewType ids satisfy it.
    ``time`` must be timezone-aware.
    """

    @property
    def id(self) -> str: ...

    @property
    def time(self) -> datetime: ...

    @property
    def tags(self) -> Collection[str]: ...


class GroupableSnapshot(SnapshotLike, Protocol):
    """What the default grouping needs: the application, or else host and paths."""

    @property
    def app(self) -> str | None: ...

    @property
    def host(self) -> str: ...

    @property
    def paths(self) -> Collection[str]: ...


@dataclass(frozen=True)
class Decision:
    """The verdict on one snapshot.

    For a kept snapshot, ``reasons`` names every rule that keeps it, e.g.
    ``("last snapshot", "daily snapshot 2026-11-20", "tag 'release'", "within 7d")``.
    For a removed one it holds a single explanation.
    """

    snapshot_id: str
    keep: bool
    reasons: tuple[str, ...]


REMOVE_REASON = "matches no keep rule"
NEWEST_REASON = "newest snapshot (always kept)"
FUTURE_REASON = "dated after now (clock skew?): always kept"


def _hour_bucket(local: datetime) -> str:
    # The UTC offset is part of the bucket: in a fall-back transition the wall-clock hour
    # 02:00 happens twice, and those are two different real hours.
    offset = local.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{local.year:04d}-{local.month:02d}-{local.day:02d} {local.hour:02d}:00{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _day_bucket(local: datetime) -> str:
    return f"{local.year:04d}-{local.month:02d}-{local.day:02d}"


def _week_bucket(local: datetime) -> str:
    # ISO year, not calendar year: 2027-01-01 is a Friday of week 2026-W53.
    iso = local.isocalendar()
    return f"{iso.year:04d}-W{iso.week:02d}"


def _month_bucket(local: datetime) -> str:
    return f"{local.year:04d}-{local.month:02d}"


def _year_bucket(local: datetime) -> str:
    return f"{local.year:04d}"


# (policy field, word used in reasons, bucket of a local time). The bucket string is both
# the identity of the bucket and what the user reads in the reason.
_BUCKET_RULES: tuple[tuple[str, str, Callable[[datetime], str]], ...] = (
    ("keep_hourly", "hourly", _hour_bucket),
    ("keep_daily", "daily", _day_bucket),
    ("keep_weekly", "weekly", _week_bucket),
    ("keep_monthly", "monthly", _month_bucket),
    ("keep_yearly", "yearly", _year_bucket),
)


def _require_aware(value: datetime, what: str) -> None:
    # A naive datetime would be compared as if it were UTC or local depending on the
    # caller: a programming error, not a user error.
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, not {value!r}")


def apply_policy(
    snapshots: Sequence[SnapshotLike],
    policy: RetentionPolicy,
    now: datetime,
    *,
    tz: tzinfo | None = None,
) -> list[Decision]:
    """Decide, for one group of snapshots, which to keep and why. Pure; newest first.

    ``tz`` is the zone whose calendar defines hours, days, weeks, months and years; None
    means the system's local zone (then the result depends on the TZ environment: pass a
    zone explicitly where results must be reproducible). ``now`` only decides which
    snapshots are dated in the future (see the module docstring).

    Raises UsageError for an empty policy, ValueError for naive datetimes or duplicate ids.
    """
    if policy.is_empty():
        raise UsageError(
            "the retention policy has no keep rule, which would remove every snapshot; "
            "give at least one keep rule (last, hourly, daily, weekly, monthly, yearly, within, "
            "within-daily and the like, tag)"
        )
    _require_aware(now, "now")
    seen_ids: set[str] = set()
    for snap in snapshots:
        _require_aware(snap.time, f"time of snapshot {snap.id}")
        if snap.id in seen_ids:
            raise ValueError(f"snapshot {snap.id} is listed twice")
        seen_ids.add(snap.id)

    # Aware datetimes compare as instants, so mixed zones among snapshots sort correctly.
    ordered = sorted(snapshots, key=lambda s: (s.time, s.id), reverse=True)
    reasons: dict[str, list[str]] = {snap.id: [] for snap in ordered}
    present = []
    for snap in ordered:
        if snap.time > now:
            reasons[snap.id].append(FUTURE_REASON)
        else:
            present.append(snap)

    if present:
        newest = present[0].time
        last_left = policy.keep_last
        left = {field: getattr(policy, field) for field, _, _ in _BUCKET_RULES}
        # Sets, not "differs from the previous kept bucket" as in restic: in a zone that
        # falls back across midnight the local date can step backwards, and a calendar
        # day must still get only one kept snapshot.
        taken: dict[str, set[str]] = {field: set() for field, _, _ in _BUCKET_RULES}
        within_rules = [
            (limit, word, bucket_of, set[str]())
            for (_, word, bucket_of), name in zip(_BUCKET_RULES, _WITHIN_FIELDS, strict=True)
            if (limit := getattr(policy, name)) is not None
        ]
        oldest = present[-1]
        for snap in present:
            why = reasons[snap.id]
            if last_left > 0:
                last_left -= 1
                why.append("last snapshot")
            local = in_zone(snap.time, tz)  # never raises, even for the year 9999
            for field, word, bucket_of in _BUCKET_RULES:
                if left[field] > 0:
                    bucket = bucket_of(local)
                    if bucket not in taken[field]:
                        taken[field].add(bucket)
                        left[field] -= 1
                        why.append(f"{word} snapshot {bucket}")
                    elif snap is oldest:
                        # The rule wants more buckets than the history has: keep the oldest
                        # snapshot too, so the history kept is as long as possible (restic).
                        why.append(f"oldest {word} snapshot {bucket}")
            # A difference of two datetimes cannot overflow, unlike newest - keep_within.
            if policy.keep_within is not None and newest - snap.time <= policy.keep_within:
                why.append(f"within {format_duration(policy.keep_within)}")
            for limit, word, bucket_of, seen in within_rules:
                if newest - snap.time <= limit and (bucket := bucket_of(local)) not in seen:
                    seen.add(bucket)
                    why.append(f"{word} snapshot {bucket} within {format_duration(limit)}")
            why.extend(f"tag {tag!r}" for tag in sorted(policy.keep_tags) if tag in snap.tags)
        if not reasons[present[0].id]:
            reasons[present[0].id].append(NEWEST_REASON)

    return [
        Decision(snap.id, True, tuple(reasons[snap.id]))
        if reasons[snap.id]
        else Decision(snap.id, False, (REMOVE_REASON,))
        for snap in ordered
    ]


def format_duration(value: timedelta) -> str:
    """Days and hours (``7d``, ``430d4h``), the form reasons show; str(value) otherwise.

    Not the inverse of parse_duration for y/m/w: ``2w`` prints as ``14d``, which says
    exactly what was applied.
    """
    if value < timedelta(0) or value % timedelta(hours=1):
        return str(value)
    hours = value // timedelta(hours=1)
    days, hours = divmod(hours, 24)
    if days and hours:
        return f"{days}d{hours}h"
    return f"{days}d" if days else f"{hours}h"


@dataclass(frozen=True)
class GroupKey:
    """A retention group: one application, or (when there is none) one host and path set."""

    app: str | None
    host: str | None
    paths: tuple[str, ...]

    def __str__(self) -> str:
        if self.app is not None:
            return f"app {self.app}"
        return f"host {self.host}, paths {', '.join(self.paths)}"


def group_key(snapshot: GroupableSnapshot) -> GroupKey:
    """The default grouping: by application name, else by host and sorted paths."""
    if snapshot.app is not None:
        return GroupKey(snapshot.app, None, ())
    return GroupKey(None, snapshot.host, tuple(sorted(set(snapshot.paths))))


_S = TypeVar("_S", bound=SnapshotLike)
_G = TypeVar("_G", bound=GroupableSnapshot)
_K = TypeVar("_K", bound=Hashable)


@overload
def group_snapshots(snapshots: Iterable[_G]) -> dict[GroupKey, list[_G]]: ...


@overload
def group_snapshots(snapshots: Iterable[_S], key: Callable[[_S], _K]) -> dict[_K, list[_S]]: ...


def group_snapshots(
    snapshots: Iterable[Any], key: Callable[[Any], Hashable] | None = None
) -> dict[Any, list[Any]]:
    """Split snapshots into the groups a policy is applied to, one at a time.

    Groups appear in order of their first snapshot in the input, and each group keeps the
    input order (apply_policy sorts anyway).
    """
    # The overloads above carry the precise types; Any here only bridges the default key.
    key_of = key if key is not None else group_key
    groups: dict[Any, list[Any]] = {}
    for snap in snapshots:
        groups.setdefault(key_of(snap), []).append(snap)
    return groups
