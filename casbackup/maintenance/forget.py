"""``forget``: apply retention policies to the repository's snapshots (plan, then execute).

The plan is pure data built by :func:`plan_forget` from the snapshot records and one
policy per group (from the command line, or each application's retention in the config);
:func:`execute_forget` deletes the snapshot records it marks for removal. Only snapshot
records are deleted here: the space their data used comes back with ``prune``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo

from casbackup.errors import NotFound
from casbackup.maintenance.retention import (
    Decision,
    GroupKey,
    RetentionPolicy,
    apply_policy,
    group_key,
    group_snapshots,
    parse_duration,
)
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot

NO_POLICY_REASON = "no retention policy for this group: kept"
VERIFIED_REASON = "newest verified snapshot (recover needs it)"


@dataclass(frozen=True)
class _PolicyView:
    """What the pure policy sees of a snapshot record (its time as an aware datetime)."""

    id: str
    time: datetime
    tags: tuple[str, ...]
    app: str | None
    host: str
    paths: tuple[str, ...]

    @classmethod
    def of(cls, snap: Snapshot) -> _PolicyView:
        return cls(snap.id, snap.datetime, snap.tags, snap.app, snap.host, snap.paths)


@dataclass(frozen=True)
class Verdict:
    snapshot: Snapshot
    keep: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class ForgetGroup:
    key: GroupKey
    policy: RetentionPolicy | None  # None: the group has no policy and is left alone
    verdicts: tuple[Verdict, ...]  # newest first


@dataclass(frozen=True)
class ForgetPlan:
    groups: tuple[ForgetGroup, ...]
    # Snapshot records that cannot be read (damaged), named by id on the command line:
    # removed as they are, since nothing else can remove them and while one is there prune
    # refuses to run. (id, why it is unreadable). Never filled by a policy.
    unreadable: tuple[tuple[str, str], ...] = ()

    @property
    def remove(self) -> tuple[Snapshot, ...]:
        return tuple(v.snapshot for g in self.groups for v in g.verdicts if not v.keep)

    @property
    def keep(self) -> tuple[Snapshot, ...]:
        return tuple(v.snapshot for g in self.groups for v in g.verdicts if v.keep)


def policy_from_retention(retention: object) -> RetentionPolicy:
    """A policy from a config ``RetentionConfig`` (duck-typed: maintenance sits below config)."""
    within = getattr(retention, "keep_within", None)
    return RetentionPolicy(
        keep_last=getattr(retention, "keep_last", 0),
        keep_hourly=getattr(retention, "keep_hourly", 0),
        keep_daily=getattr(retention, "keep_daily", 0),
        keep_weekly=getattr(retention, "keep_weekly", 0),
        keep_monthly=getattr(retention, "keep_monthly", 0),
        keep_yearly=getattr(retention, "keep_yearly", 0),
        keep_within=parse_duration(within) if within else None,
        keep_tags=frozenset(getattr(retention, "keep_tags", ())),
        **{
            f"keep_within_{b}": parse_duration(v)
            if (v := getattr(retention, f"keep_within_{b}", None))
            else None
            for b in ("hourly", "daily", "weekly", "monthly", "yearly")
        },
    )


def plan_forget(
    snapshots: Sequence[Snapshot],
    policy_for: Callable[[GroupKey], RetentionPolicy | None],
    now: datetime,
    *,
    tz: tzinfo | None = None,
    verified: Collection[str] = (),
) -> ForgetPlan:
    """Group the snapshots and decide each group with its policy. Pure; no repository access.

    ``policy_for`` returns None for a group that has no policy: all of it is kept.
    ``verified`` are ids of snapshots proven restorable: the newest of them in each group
    is always kept, because disaster recovery restores the latest verified snapshot.
    """
    by_id = {s.id: s for s in snapshots}
    # Verification records name a snapshot by its identity (its first id), which a tag
    # change keeps while the record's id changes.
    verified = {s.id for s in snapshots if s.identity in verified}
    groups = []
    views = group_snapshots([_PolicyView.of(s) for s in snapshots])
    for key in sorted(views, key=str):
        members = views[key]
        policy = policy_for(key)
        if policy is None:
            ordered = sorted(members, key=lambda v: (v.time, v.id), reverse=True)
            decisions = [Decision(v.id, True, (NO_POLICY_REASON,)) for v in ordered]
        else:
            decisions = apply_policy(members, policy, now, tz=tz)
            proven = [v for v in members if v.id in verified]
            if proven:
                newest = max(proven, key=lambda v: (v.time, v.id)).id
                decisions = [
                    Decision(
                        d.snapshot_id,
                        True,
                        (*d.reasons, VERIFIED_REASON) if d.keep else (VERIFIED_REASON,),
                    )
                    if d.snapshot_id == newest
                    else d
                    for d in decisions
                ]
        verdicts = tuple(Verdict(by_id[d.snapshot_id], d.keep, d.reasons) for d in decisions)
        groups.append(ForgetGroup(key, policy, verdicts))
    return ForgetPlan(tuple(groups))


@dataclass
class ForgetResult:
    removed: list[str]
    already_gone: list[str]


def execute_forget(repo: Repository, plan: ForgetPlan) -> ForgetResult:
    """Delete the snapshot records the plan removes. Each deletion is atomic on its own,
    so an interruption leaves a subset deleted, and running forget again finishes the job."""
    result = ForgetResult([], [])
    for snap in plan.remove:
        try:
            # Older records of it (an interrupted tag change) go too: the newest of them
            # would otherwise be listed as the snapshot again.
            repo.forget_snapshot(snap)
        except NotFound:
            result.already_gone.append(snap.id)
            continue
        result.removed.append(snap.id)
    for sid, _why in plan.unreadable:
        try:
            repo.delete_snapshot(sid)
        except NotFound:
            result.already_gone.append(sid)
            continue
        result.removed.append(sid)
    return result


__all__ = [
    "ForgetGroup",
    "ForgetPlan",
    "ForgetResult",
    "Verdict",
    "execute_forget",
    "group_key",
    "plan_forget",
    "policy_from_retention",
]
