"""Retention policy: calendar edges, tie-breaks, reasons, and properties that must always hold."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casbackup.errors import UsageError
from casbackup.maintenance.retention import (
    FUTURE_REASON,
    NEWEST_REASON,
    REMOVE_REASON,
    Decision,
    GroupKey,
    RetentionPolicy,
    apply_policy,
    format_duration,
    group_snapshots,
    parse_duration,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


@dataclass(frozen=True)
class Snap:
    """Stands in for the repository's snapshot record (frozen, like the real one)."""

    id: str
    time: datetime
    tags: tuple[str, ...] = ()
    app: str | None = None
    host: str = "h1"
    paths: tuple[str, ...] = ("/data",)


def at(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    assert value.tzinfo is not None, "test times carry their UTC offset"
    return value


def snaps(*times: str) -> list[Snap]:
    """Snapshots named s0, s1, ... in the order given (the order does not matter to the policy)."""
    return [Snap(f"s{i}", at(t)) for i, t in enumerate(times)]


def verdicts(decisions: list[Decision]) -> dict[str, tuple[str, ...]]:
    """id -> reasons for kept snapshots, () for removed ones."""
    return {d.snapshot_id: d.reasons if d.keep else () for d in decisions}


FAR_FUTURE = at("2100-01-01T00:00+00:00")

# (name, times, policy, zone, expected reasons per snapshot; () = removed)
CALENDAR_CASES: list[tuple[str, list[str], RetentionPolicy, tzinfo, dict[str, tuple[str, ...]]]] = [
    (
        "year boundary, daily",
        ["2025-12-31T23:30+01:00", "2026-01-01T00:30+01:00"],
        RetentionPolicy(keep_daily=2),
        BERLIN,
        {"s1": ("daily snapshot 2026-01-01",), "s0": ("daily snapshot 2025-12-31",)},
    ),
    (
        "year boundary, yearly",
        ["2025-12-31T23:30+01:00", "2026-01-01T00:30+01:00"],
        RetentionPolicy(keep_yearly=2),
        BERLIN,
        {"s1": ("yearly snapshot 2026",), "s0": ("yearly snapshot 2025",)},
    ),
    (
        "year boundary, one monthly",
        ["2025-12-31T23:30+01:00", "2026-01-01T00:30+01:00"],
        RetentionPolicy(keep_monthly=1),
        BERLIN,
        {"s1": ("monthly snapshot 2026-01",), "s0": ()},
    ),
    (
        # The same instants are both on 2025-12-31 in UTC: the zone decides the day.
        "year boundary, evaluated in UTC",
        ["2025-12-31T23:30+01:00", "2026-01-01T00:30+01:00", "2025-12-30T12:00+00:00"],
        RetentionPolicy(keep_daily=2),
        UTC,
        {"s1": ("daily snapshot 2025-12-31",), "s0": (), "s2": ("daily snapshot 2025-12-30",)},
    ),
    (
        "month boundaries",
        [
            "2026-01-31T12:00+01:00",
            "2026-02-01T12:00+01:00",
            "2026-02-28T12:00+01:00",
            "2026-03-01T00:00+01:00",
        ],
        RetentionPolicy(keep_monthly=3),
        BERLIN,
        {
            "s3": ("monthly snapshot 2026-03",),
            "s2": ("monthly snapshot 2026-02",),
            "s1": (),
            "s0": ("monthly snapshot 2026-01",),
        },
    ),
    (
        "leap day is a day of its own",
        ["2024-02-28T10:00+01:00", "2024-02-29T10:00+01:00", "2024-03-01T10:00+01:00"],
        RetentionPolicy(keep_daily=3),
        BERLIN,
        {
            "s2": ("daily snapshot 2024-03-01",),
            "s1": ("daily snapshot 2024-02-29",),
            "s0": ("daily snapshot 2024-02-28",),
        },
    ),
    (
        "leap day is the newest of February",
        ["2024-02-28T10:00+01:00", "2024-02-29T10:00+01:00", "2024-03-01T10:00+01:00"],
        RetentionPolicy(keep_monthly=2),
        BERLIN,
        {"s2": ("monthly snapshot 2024-03",), "s1": ("monthly snapshot 2024-02",), "s0": ()},
    ),
    (
        # 1y is 365 days (documented): from 2025-02-28 that reaches exactly 2024-02-29,
        # and the boundary is inclusive.
        "keep-within 1y across a leap day",
        ["2024-02-28T10:00+01:00", "2024-02-29T10:00+01:00", "2025-02-28T10:00+01:00"],
        RetentionPolicy(keep_within=timedelta(days=365)),
        BERLIN,
        {"s2": ("within 365d",), "s1": ("within 365d",), "s0": ()},
    ),
    (
        # 2026-12-31 (Thu) and 2027-01-01 (Fri) are both in ISO week 2026-W53.
        "ISO week across the year boundary",
        ["2026-12-31T12:00+01:00", "2027-01-01T12:00+01:00", "2027-01-04T12:00+01:00"],
        RetentionPolicy(keep_weekly=2),
        BERLIN,
        {"s2": ("weekly snapshot 2027-W01",), "s1": ("weekly snapshot 2026-W53",), "s0": ()},
    ),
    (
        "Berlin spring forward: 01:30 CET and 03:30 CEST are one hour apart, two hours",
        ["2026-03-29T01:30+01:00", "2026-03-29T03:30+02:00"],
        RetentionPolicy(keep_hourly=2),
        BERLIN,
        {
            "s1": ("hourly snapshot 2026-03-29 03:00+02:00",),
            "s0": ("hourly snapshot 2026-03-29 01:00+01:00",),
        },
    ),
    (
        "Berlin spring forward: the 23-hour day is one day",
        ["2026-03-29T00:00+01:00", "2026-03-29T23:59+02:00", "2026-03-28T12:00+01:00"],
        RetentionPolicy(keep_daily=2),
        BERLIN,
        {"s1": ("daily snapshot 2026-03-29",), "s0": (), "s2": ("daily snapshot 2026-03-28",)},
    ),
    (
        # With a fixed CET offset (what datetime.now().astimezone() gives in winter) both
        # would be 2026-03-29 and one would be lost.
        "Berlin after spring forward: midnight is in summer time",
        ["2026-03-29T23:30+02:00", "2026-03-30T00:30+02:00"],
        RetentionPolicy(keep_daily=2),
        BERLIN,
        {"s1": ("daily snapshot 2026-03-30",), "s0": ("daily snapshot 2026-03-29",)},
    ),
    (
        "Berlin fall back: the repeated 02:00 hour is two hourly buckets",
        ["2026-10-25T02:30+02:00", "2026-10-25T02:30+01:00"],
        RetentionPolicy(keep_hourly=2),
        BERLIN,
        {
            "s1": ("hourly snapshot 2026-10-25 02:00+01:00",),
            "s0": ("hourly snapshot 2026-10-25 02:00+02:00",),
        },
    ),
    (
        "Berlin fall back: but one day",
        ["2026-10-24T23:30+02:00", "2026-10-25T02:30+02:00", "2026-10-25T02:30+01:00"],
        RetentionPolicy(keep_daily=2),
        BERLIN,
        {"s2": ("daily snapshot 2026-10-25",), "s1": (), "s0": ("daily snapshot 2026-10-24",)},
    ),
    (
        "Berlin fall back: the 25-hour day is one day",
        ["2026-10-25T00:00+02:00", "2026-10-25T23:59+01:00", "2026-10-24T12:00+02:00"],
        RetentionPolicy(keep_daily=2),
        BERLIN,
        {"s1": ("daily snapshot 2026-10-25",), "s0": (), "s2": ("daily snapshot 2026-10-24",)},
    ),
    (
        "New York spring forward",
        ["2026-03-08T01:30-05:00", "2026-03-08T03:30-04:00"],
        RetentionPolicy(keep_hourly=2, keep_daily=1),
        NEW_YORK,
        {
            "s1": ("hourly snapshot 2026-03-08 03:00-04:00", "daily snapshot 2026-03-08"),
            "s0": ("hourly snapshot 2026-03-08 01:00-05:00",),
        },
    ),
    (
        "New York fall back: the repeated 01:00 hour",
        ["2026-11-01T01:30-04:00", "2026-11-01T01:30-05:00"],
        RetentionPolicy(keep_hourly=2, keep_daily=1),
        NEW_YORK,
        {
            "s1": ("hourly snapshot 2026-11-01 01:00-05:00", "daily snapshot 2026-11-01"),
            "s0": ("hourly snapshot 2026-11-01 01:00-04:00",),
        },
    ),
    (
        "New York: days end at local midnight",
        ["2026-11-01T23:30-05:00", "2026-11-02T00:30-05:00"],
        RetentionPolicy(keep_daily=2),
        NEW_YORK,
        {"s1": ("daily snapshot 2026-11-02",), "s0": ("daily snapshot 2026-11-01",)},
    ),
    (
        "New York instants evaluated in UTC fall on one day",
        ["2026-11-01T23:30-05:00", "2026-11-02T00:30-05:00", "2026-11-01T12:00-05:00"],
        RetentionPolicy(keep_daily=2),
        UTC,
        {"s1": ("daily snapshot 2026-11-02",), "s0": (), "s2": ("daily snapshot 2026-11-01",)},
    ),
    (
        # keep-daily 7 with two days of history: the oldest snapshot is kept too, so the
        # longest history survives until the rule fills up (restic's behaviour).
        "rule not full: the oldest snapshot is kept as well",
        ["2026-11-02T10:00+00:00", "2026-11-02T20:00+00:00", "2026-11-03T10:00+00:00"],
        RetentionPolicy(keep_daily=7, keep_monthly=1),
        UTC,
        {
            "s2": ("daily snapshot 2026-11-03", "monthly snapshot 2026-11"),
            "s1": ("daily snapshot 2026-11-02",),
            "s0": ("oldest daily snapshot 2026-11-02",),
        },
    ),
]


@pytest.mark.parametrize(
    ("times", "policy", "zone", "expected"),
    [case[1:] for case in CALENDAR_CASES],
    ids=[case[0] for case in CALENDAR_CASES],
)
def test_calendar_edges(
    times: list[str],
    policy: RetentionPolicy,
    zone: tzinfo,
    expected: dict[str, tuple[str, ...]],
) -> None:
    decisions = apply_policy(snaps(*times), policy, FAR_FUTURE, tz=zone)
    assert verdicts(decisions) == expected
    # Newest first.
    assert [d.snapshot_id for d in decisions] == sorted(
        expected, key=lambda i: at(times[int(i[1:])]), reverse=True
    )


def test_combination_of_rules_gives_every_reason() -> None:
    days = [f"2026-11-{d:02d}T03:00+00:00" for d in range(11, 21)]
    history = [Snap("oct31", at("2026-10-31T03:00+00:00"))]
    history += [Snap(f"nov{t[8:10]}", at(t), ("release",) if t[8:10] == "12" else ()) for t in days]
    history.append(Snap("nov20pm", at("2026-11-20T15:00+00:00")))
    policy = RetentionPolicy(
        keep_last=2,
        keep_daily=3,
        keep_weekly=2,
        keep_monthly=2,
        keep_within=timedelta(days=2),
        keep_tags=frozenset({"release"}),
    )
    decisions = apply_policy(history, policy, at("2026-11-21T00:00+00:00"), tz=UTC)
    assert [(d.snapshot_id, d.keep, d.reasons) for d in decisions] == [
        (
            "nov20pm",
            True,
            (
                "last snapshot",
                "daily snapshot 2026-11-20",
                "weekly snapshot 2026-W47",
                "monthly snapshot 2026-11",
                "within 2d",
            ),
        ),
        ("nov20", True, ("last snapshot", "within 2d")),
        ("nov19", True, ("daily snapshot 2026-11-19", "within 2d")),
        ("nov18", True, ("daily snapshot 2026-11-18",)),
        ("nov17", False, (REMOVE_REASON,)),
        ("nov16", False, (REMOVE_REASON,)),
        ("nov15", True, ("weekly snapshot 2026-W46",)),
        ("nov14", False, (REMOVE_REASON,)),
        ("nov13", False, (REMOVE_REASON,)),
        ("nov12", True, ("tag 'release'",)),
        ("nov11", False, (REMOVE_REASON,)),
        ("oct31", True, ("monthly snapshot 2026-10",)),
    ]


def test_equal_timestamps_are_decided_by_id_whatever_the_input_order() -> None:
    same = at("2026-05-01T12:00+00:00")
    group = [Snap("b", same), Snap("a", same), Snap("c", same)]
    for order in itertools.permutations(group):
        decisions = apply_policy(list(order), RetentionPolicy(keep_last=1), FAR_FUTURE)
        assert [(d.snapshot_id, d.keep) for d in decisions] == [
            ("c", True),
            ("b", False),
            ("a", False),
        ]
        daily = apply_policy(list(order), RetentionPolicy(keep_daily=1), FAR_FUTURE, tz=UTC)
        assert [d.snapshot_id for d in daily if d.keep] == ["c"]


def test_equal_instants_in_different_zones_are_equal_timestamps() -> None:
    group = [Snap("x", at("2026-05-01T14:00+02:00")), Snap("y", at("2026-05-01T12:00+00:00"))]
    decisions = apply_policy(group, RetentionPolicy(keep_last=1), FAR_FUTURE)
    assert [(d.snapshot_id, d.keep) for d in decisions] == [("y", True), ("x", False)]


def test_keep_within_is_measured_from_the_newest_snapshot_not_now() -> None:
    # Backups stopped three months ago; keep-within 7d must not remove all of them.
    group = snaps("2026-01-01T00:00+00:00", "2026-01-20T00:00+00:00", "2026-01-25T00:00+00:00")
    now = at("2026-04-25T00:00+00:00")
    decisions = apply_policy(group, RetentionPolicy(keep_within=parse_duration("7d")), now)
    assert verdicts(decisions) == {"s2": ("within 7d",), "s1": ("within 7d",), "s0": ()}


def test_keep_within_zero_keeps_only_the_newest_instant() -> None:
    same = at("2026-01-25T00:00+00:00")
    group = [Snap("a", same), Snap("b", same), Snap("c", same - timedelta(seconds=1))]
    decisions = apply_policy(group, RetentionPolicy(keep_within=timedelta(0)), FAR_FUTURE)
    assert verdicts(decisions) == {"b": ("within 0h",), "a": ("within 0h",), "c": ()}


def test_tags_keep_tagged_snapshots_and_the_newest_survives() -> None:
    group = [
        Snap("old", at("2026-01-01T00:00+00:00"), ("release", "manual")),
        Snap("mid", at("2026-01-02T00:00+00:00"), ("nightly",)),
        Snap("new", at("2026-01-03T00:00+00:00"), ()),
    ]
    policy = RetentionPolicy(keep_tags=frozenset({"release", "manual"}))
    decisions = apply_policy(group, policy, FAR_FUTURE)
    assert verdicts(decisions) == {
        "new": (NEWEST_REASON,),
        "mid": (),
        "old": ("tag 'manual'", "tag 'release'"),
    }


def test_snapshots_from_the_future_are_kept_and_do_not_anchor_rules() -> None:
    # A client with its clock in 2040 must not push every real snapshot out of the window.
    group = snaps(
        "2026-01-01T00:00+00:00",
        "2026-01-09T00:00+00:00",
        "2026-01-10T00:00+00:00",
        "2040-01-01T00:00+00:00",
    )
    now = at("2026-01-10T12:00+00:00")
    policy = RetentionPolicy(keep_last=1, keep_within=timedelta(days=3))
    assert verdicts(apply_policy(group, policy, now)) == {
        "s3": (FUTURE_REASON,),
        "s2": ("last snapshot", "within 3d"),
        "s1": ("within 3d",),
        "s0": (),
    }


def test_empty_policy_is_refused() -> None:
    with pytest.raises(UsageError, match="no keep rule"):
        apply_policy(snaps("2026-01-01T00:00+00:00"), RetentionPolicy(), FAR_FUTURE)
    assert RetentionPolicy().is_empty()
    assert not RetentionPolicy(keep_within=timedelta(0)).is_empty()
    assert not RetentionPolicy(keep_tags=frozenset({"x"})).is_empty()


def test_no_snapshots_gives_no_decisions() -> None:
    assert apply_policy([], RetentionPolicy(keep_last=1), FAR_FUTURE) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"keep_last": -1},
        {"keep_daily": 1.5},
        {"keep_weekly": True},
        {"keep_within": timedelta(days=-1)},
        {"keep_tags": "release"},
        {"keep_tags": frozenset({""})},
    ],
)
def test_invalid_policies_are_usage_errors(kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        RetentionPolicy(**kwargs)  # type: ignore[arg-type]


def test_keep_tags_accepts_any_iterable() -> None:
    assert RetentionPolicy(keep_tags=["a", "b"]).keep_tags == frozenset({"a", "b"})  # type: ignore[arg-type]


def test_naive_times_and_duplicate_ids_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        apply_policy([Snap("a", datetime(2026, 1, 1))], RetentionPolicy(keep_last=1), FAR_FUTURE)
    with pytest.raises(ValueError, match="timezone-aware"):
        apply_policy([], RetentionPolicy(keep_last=1), datetime(2026, 1, 1))
    twice = snaps("2026-01-01T00:00+00:00") * 2
    with pytest.raises(ValueError, match="listed twice"):
        apply_policy(twice, RetentionPolicy(keep_last=1), FAR_FUTURE)


def test_default_zone_is_the_system_local_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    group = snaps("2026-03-29T23:30+02:00", "2026-03-30T00:30+02:00")
    policy = RetentionPolicy(keep_daily=1)
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        # 2026-03-29 17:30 and 18:30 in New York: one day.
        assert [d.keep for d in apply_policy(group, policy, FAR_FUTURE)] == [True, False]
        assert apply_policy(group, policy, FAR_FUTURE) == apply_policy(
            group, policy, FAR_FUTURE, tz=NEW_YORK
        )
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", timedelta(days=7)),
        ("2w", timedelta(days=14)),
        ("12h", timedelta(hours=12)),
        ("1m", timedelta(days=30)),
        ("1y", timedelta(days=365)),
        ("1y2m3d4h", timedelta(days=365 + 60 + 3, hours=4)),
        ("3d1w", timedelta(days=10)),
        (" 0d ", timedelta(0)),
        ("007d", timedelta(days=7)),
    ],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "7", "d", "7x", "7D", "1.5d", "-1d", "7d 2h", "1d1d", "7 d", "1s", "99999999999999y"],
)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="invalid duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(days=7), "7d"),
        (timedelta(days=430, hours=4), "430d4h"),
        (timedelta(hours=5), "5h"),
        (timedelta(0), "0h"),
        (timedelta(minutes=90), "1:30:00"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


def test_group_snapshots_by_app_then_host_and_sorted_paths() -> None:
    t = at("2026-01-01T00:00+00:00")
    items = [
        Snap("1", t, app="shop", host="a", paths=("/x",)),
        Snap("2", t, host="a", paths=("/b", "/a")),
        Snap("3", t, app="shop", host="b", paths=("/y",)),
        Snap("4", t, host="a", paths=("/a", "/b")),
        Snap("5", t, host="b", paths=("/a", "/b")),
    ]
    groups = group_snapshots(items)
    assert {key: [s.id for s in members] for key, members in groups.items()} == {
        GroupKey("shop", None, ()): ["1", "3"],
        GroupKey(None, "a", ("/a", "/b")): ["2", "4"],
        GroupKey(None, "b", ("/a", "/b")): ["5"],
    }
    assert [str(k) for k in groups] == ["app shop", "host a, paths /a, /b", "host b, paths /a, /b"]
    by_host = group_snapshots(items, key=lambda s: s.host)
    assert {k: len(v) for k, v in by_host.items()} == {"a": 3, "b": 2}


# ---- properties -----------------------------------------------------------------------

ZONES = [UTC, BERLIN, NEW_YORK, ZoneInfo("Australia/Lord_Howe"), ZoneInfo("America/Sao_Paulo")]
BASE = datetime(2023, 1, 1, tzinfo=UTC)

# Minutes over ~3 years, with a small pool of repeated instants so ties are common.
instants = st.one_of(
    st.integers(0, 3 * 365 * 24 * 60),
    st.sampled_from([0, 60, 24 * 60, 500_000]),
).map(lambda m: BASE + timedelta(minutes=m))
snapshot_lists = st.lists(
    st.tuples(instants, st.lists(st.sampled_from(["a", "b", "c"]), max_size=2)),
    max_size=40,
).map(lambda rows: [Snap(f"{i:03d}", when, tuple(tags)) for i, (when, tags) in enumerate(rows)])
counts = st.integers(0, 6)
policies = st.builds(
    RetentionPolicy,
    keep_last=counts,
    keep_hourly=counts,
    keep_daily=counts,
    keep_weekly=counts,
    keep_monthly=counts,
    keep_yearly=counts,
    keep_within=st.none() | st.integers(0, 400 * 24).map(lambda h: timedelta(hours=h)),
    keep_tags=st.frozensets(st.sampled_from(["a", "b"])),
).filter(lambda p: not p.is_empty())


def kept_ids(decisions: list[Decision]) -> set[str]:
    return {d.snapshot_id for d in decisions if d.keep}


@settings(max_examples=300, deadline=None)
@given(group=snapshot_lists, policy=policies, zone=st.sampled_from(ZONES), data=st.data())
def test_policy_properties(
    group: list[Snap], policy: RetentionPolicy, zone: tzinfo, data: st.DataObject
) -> None:
    # Usually after every snapshot; sometimes in the middle, so some are "from the future".
    now = data.draw(st.sampled_from([FAR_FUTURE, BASE + timedelta(days=500)]))
    decisions = apply_policy(group, policy, now, tz=zone)
    ids = [d.snapshot_id for d in decisions]

    assert sorted(ids) == sorted(s.id for s in group)  # kept ∪ removed = all, no duplicates
    assert len(set(ids)) == len(ids)
    for d in decisions:
        assert d.reasons, "every decision says why"
        assert d.keep == (d.reasons != (REMOVE_REASON,))

    kept = kept_ids(decisions)
    present = sorted((s for s in group if s.time <= now), key=lambda s: (s.time, s.id))
    if group:
        assert max(group, key=lambda s: (s.time, s.id)).id in kept  # newest always kept
    if present:
        assert present[-1].id in kept  # and the newest real one too
    assert {s.id for s in group if s.time > now} <= kept
    assert len(kept) >= min(policy.keep_last, len(group))

    # Newest first, deterministic under reordering of the input.
    order = sorted(group, key=lambda s: (s.time, s.id), reverse=True)
    assert ids == [s.id for s in order]
    assert apply_policy(list(reversed(group)), policy, now, tz=zone) == decisions

    # Asking for more never keeps less.
    for field in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly"):
        bigger = replace(policy, **{field: getattr(policy, field) + 1})
        assert kept <= kept_ids(apply_policy(group, bigger, now, tz=zone))


@settings(max_examples=200, deadline=None)
@given(group=snapshot_lists, n=st.integers(1, 8), zone=st.sampled_from(ZONES))
def test_daily_keeps_the_newest_snapshot_of_the_newest_days(
    group: list[Snap], n: int, zone: tzinfo
) -> None:
    def day(s: Snap) -> date:
        return s.time.astimezone(zone).date()

    def order(s: Snap) -> tuple[datetime, str]:
        return (s.time, s.id)

    decisions = apply_policy(group, RetentionPolicy(keep_daily=n), FAR_FUTURE, tz=zone)
    days = sorted({day(s) for s in group}, reverse=True)
    expected = {max((s for s in group if day(s) == d), key=order).id for d in days[:n]}
    if group and len(days) < n:
        expected.add(min(group, key=order).id)  # the rule is not full: oldest kept too
    assert kept_ids(decisions) == expected


def test_snapshots_at_the_ends_of_the_calendar_do_not_crash_the_policy() -> None:
    # Found with the real CLI: a snapshot dated 0001-01-01 00:30 UTC (a client whose clock
    # was far off) made forget crash with OverflowError in a zone whose offset at that date
    # steps before the year 1 (Pacific/Kiritimati's was -10:29). Such a time is bucketed by
    # its UTC calendar.
    zone = ZoneInfo("Pacific/Kiritimati")
    group = snaps(
        "0001-01-01T00:30:00+00:00", "2026-11-20T10:00:00+00:00", "2026-11-21T10:00:00+00:00"
    )
    now = at("2026-11-26T12:00:00+00:00")
    kept = verdicts(apply_policy(group, RetentionPolicy(keep_daily=5, keep_yearly=5), now, tz=zone))
    assert kept["s0"] == ("daily snapshot 0001-01-01", "yearly snapshot 0001")
    assert kept["s1"] and kept["s2"]


def test_keep_within_daily_counts_calendar_days_back_from_the_newest() -> None:
    """restic's --keep-within-daily: one a day for the last D, however many days had no
    backup, where keep_daily=N reaches back N days that had one."""
    group = snaps(
        "2026-11-30T22:00:00+00:00",
        "2026-11-30T08:00:00+00:00",  # newest day: one kept
        "2026-11-20T08:00:00+00:00",  # 10 days back: within 15d
        "2026-11-15T22:00:00+00:00",  # exactly 15 days back: inclusive
        "2026-11-10T08:00:00+00:00",
        "2026-10-31T08:00:00+00:00",  # beyond
    )
    within = verdicts(apply_policy(group, RetentionPolicy(keep_within_daily=timedelta(days=15)),
                                   at("2026-12-01T00:00:00+00:00"), tz=UTC))  # fmt: skip
    assert within == {
        "s0": ("daily snapshot 2026-11-30 within 15d",), "s1": (),
        "s2": ("daily snapshot 2026-11-20 within 15d",),
        "s3": ("daily snapshot 2026-11-15 within 15d",), "s4": (), "s5": (),
    }  # fmt: skip
    counted = verdicts(apply_policy(group, RetentionPolicy(keep_daily=15),
                                    at("2026-12-01T00:00:00+00:00"), tz=UTC))  # fmt: skip
    assert all(counted[s] for s in ("s0", "s2", "s3", "s4", "s5"))  # 15 backup days reach all


def test_keep_within_buckets_use_the_zone_and_combine_with_other_rules() -> None:
    group = snaps("2026-03-01T23:30:00+00:00", "2026-03-01T22:30:00+00:00",
                  "2026-02-27T12:00:00+00:00", "2025-12-31T23:30:00+00:00")  # fmt: skip
    policy = RetentionPolicy(keep_within_monthly=timedelta(days=70), keep_last=1,
                             keep_within_weekly=timedelta(days=1))  # fmt: skip
    got = verdicts(apply_policy(group, policy, at("2026-03-02T00:00:00+00:00"), tz=BERLIN))
    # 23:30 UTC is 00:30 on 2 March in Berlin: its own week (W10) and month (March)
    assert got["s0"] == ("last snapshot", "weekly snapshot 2026-W10 within 1d",
                         "monthly snapshot 2026-03 within 70d")  # fmt: skip
    assert got["s1"] == ("weekly snapshot 2026-W09 within 1d",)  # 23:30 on 1 March: March taken
    assert got["s2"] == ("monthly snapshot 2026-02 within 70d",)
    assert got["s3"] == ("monthly snapshot 2026-01 within 70d",)  # Berlin: 1 January


def test_keep_within_buckets_are_rules_and_are_checked() -> None:
    assert not RetentionPolicy(keep_within_yearly=timedelta(0)).is_empty()
    with pytest.raises(UsageError, match="keep_within_daily"):
        RetentionPolicy(keep_within_daily=timedelta(days=-1))
    with pytest.raises(UsageError, match="keep_within_hourly"):
        RetentionPolicy(keep_within_hourly="7d")  # type: ignore[arg-type]
