"""What the dashboard's pages show, assembled from the same service and library calls the API
uses (``list_applications``, the job manager, verification records, lock listings). No
repository logic lives here beyond reading those results and summarising them for a page.

Times are aware datetimes (UTC inside); what a person reads is in the service's zone (the
schedules' and retention's, ``Service.zone``). ``now`` is passed in so tests can fix it.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from casbackup.errors import CasError
from casbackup.repo.lock import list_locks
from casbackup.repo.snapshot import Snapshot
from casbackup.server.auth import Principal
from casbackup.server.dashboard.format import local_time
from casbackup.server.repos import RepoHandle
from casbackup.server.service import Service
from casbackup.timezones import in_zone
from casbackup.verify.records import VerificationRecord

STRIP_DAYS = 30


@dataclass
class AppCard:
    """One application on the overview."""

    name: str
    description: str
    repository: str
    snapshots: int
    last_snapshot: Snapshot | None
    last_job: dict[str, Any] | None  # the newest backup job, any outcome
    verification: VerificationRecord | None  # the newest verification of any of its snapshots
    schedule: str | None
    next_run: str | None
    overdue: str | None  # why it is overdue, or None
    protected_bytes: int  # logical size of the newest snapshot
    stored_bytes: int  # what its snapshots added to the repository, summed
    strip: list[tuple[str, str]] = field(default_factory=list)  # (day, ok|failed|none)
    # (the repository's newest check job, how many of this application's snapshots it found
    # damaged) when that check failed on some of them; None otherwise
    damage: tuple[int, int] | None = None
    # a repair job (its id) that succeeded on the repository after that check: the damage
    # may be gone, which only the next check can tell
    repaired_since: int | None = None
    # the newest verify job when it did not finish (cancelled, interrupted, past its maximum
    # run time) after the newest verification: the badge is from before it (drill_cut_short)
    drill_cut: dict[str, Any] | None = None


@dataclass
class RepoHealth:
    key: str
    location: str | None
    reachable: bool
    error: str | None
    locks: list[str]
    last_check: dict[str, Any] | None
    size_bytes: int | None  # every file in the repository (None: unknown, or not shown)
    stored_bytes: int
    growth_30d: int
    snapshots: int
    alerts: list[str]  # rollback / tampering warnings (Repository.alerts)


@dataclass
class Overview:
    apps: list[AppCard]
    repos: list[RepoHealth]
    warnings: list[str]
    running: int
    queued: int


def parse_time(text: str | None) -> dt.datetime | None:
    """An ISO 8601 time as an aware UTC datetime (None for None or garbage)."""
    if not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def repo_snapshots(handle: RepoHandle, warnings: list[str]) -> list[Snapshot]:
    """Every readable snapshot of a repository, oldest first ([] when it cannot be opened)."""
    if not handle.location:
        return []
    try:
        return handle.snapshots(warnings)
    except CasError as exc:
        warnings.append(f"repository {handle.key}: {exc}")
        return []


def repo_records(handle: RepoHandle, warnings: list[str]) -> list[VerificationRecord]:
    """Every readable verification record of a repository (the handle's cache, as the API's)."""
    if not handle.location:
        return []
    try:
        records = handle.records()
    except CasError as exc:
        warnings.append(f"repository {handle.key}: {exc}")
        return []
    warnings.extend(records.warnings)
    return list(records.records)


def day_strip(
    ok_times: list[dt.datetime],
    failed_times: list[dt.datetime],
    now: dt.datetime,
    tz: dt.tzinfo = dt.UTC,
) -> list[tuple[str, str]]:
    """The last ``STRIP_DAYS`` days of zone ``tz`` (the service's: a nightly run at 00:30
    local belongs to its local day), oldest first: ``ok`` when a backup succeeded that day,
    ``failed`` when only failures happened, ``none`` when nothing ran."""
    today = in_zone(now, tz).date()
    days = [today - dt.timedelta(days=i) for i in range(STRIP_DAYS - 1, -1, -1)]
    ok = {in_zone(t, tz).date() for t in ok_times}  # in_zone: a year-9999 snapshot too
    failed = {in_zone(t, tz).date() for t in failed_times}
    return [(d.isoformat(), "ok" if d in ok else "failed" if d in failed else "none") for d in days]


def overview(service: Service, principal: Principal, apps: list[Any], warnings: list[str],
             now: dt.datetime) -> Overview:  # fmt: skip
    """The overview page: ``apps`` are the API's application rows (``list_applications``)."""
    registry = service.registry
    snaps_by_repo: dict[str, list[Snapshot]] = {}
    records_by_app: dict[str, VerificationRecord] = {}
    for key, handle in registry.handles.items():
        snaps_by_repo[key] = repo_snapshots(handle, warnings)
        for record in repo_records(handle, warnings):  # oldest first: later ones win
            if record.app:
                records_by_app[record.app] = record
    since = now - dt.timedelta(days=STRIP_DAYS)
    try:
        tz = service.zone()
    except CasError:  # a zone this machine no longer knows: the page still shows, in UTC
        tz = dt.UTC
    # Per repository: its newest finished check, and the snapshots it found damaged.
    checks = {key: last_check(service, key) for key in registry.handles}
    damaged = {
        key: set(((job or {}).get("result") or {}).get("affected") or ())
        for key, job in checks.items()
        if job is not None and job["state"] == "failed"
    }
    repairs = {key: last_repair_after(service, key, job) for key, job in checks.items()}
    schedules: dict[str, dict[str, Any]] = {}
    if service.scheduler is not None:
        schedules = {e["app"]: e for e in service.scheduler.overview() if e["kind"] == "backup"}
    cards: list[AppCard] = []
    for row in apps:
        snaps = [s for s in snaps_by_repo.get(row.repository, []) if s.app == row.name]
        jobs = service.jobs.list(kind="backup", app=row.name, limit=1, apps=None)
        last_job = jobs[0] if jobs else None
        failed = failed_backups(service, row.name, since)
        last = snaps[-1] if snaps else None
        hit = sum(bool({s.id, s.identity} & damaged.get(row.repository, set())) for s in snaps)
        check = checks.get(row.repository)
        cards.append(AppCard(
            name=row.name, description=row.description, repository=row.repository,
            snapshots=len(snaps), last_snapshot=last, last_job=last_job,
            verification=records_by_app.get(row.name), schedule=row.schedule,
            next_run=row.next_run,
            # a snapshot dated after now (taken while the clock ran ahead) proves no run
            overdue=overdue_reason(schedules.get(row.name),
                                   next((s for s in reversed(snaps) if s.datetime <= now), None),
                                   now, tz),
            protected_bytes=last.protected_bytes if last else 0,
            stored_bytes=sum(s.summary.bytes_stored for s in snaps),
            strip=day_strip([s.datetime for s in snaps if s.datetime >= since], failed, now, tz),
            damage=(check["id"], hit) if hit and check is not None else None,
            repaired_since=repairs.get(row.repository) if hit else None,
            drill_cut=drill_cut_short(service, row.name, records_by_app.get(row.name)),
        ))  # fmt: skip
    repos = [
        repo_health(service, key, handle, snaps_by_repo.get(key, []), principal, now)
        for key, handle in registry.handles.items()
        if handle.location and _repo_visible(service, key, principal)
    ]
    counts = service.jobs.counts()
    return Overview(cards, repos, warnings, counts.get("running", 0), counts.get("queued", 0))


def drill_cut_short(
    service: Service, app: str, record: VerificationRecord | None
) -> dict[str, Any] | None:
    """The newest verify job of ``app`` (its API document) when it ended without a result
    (cancelled, interrupted, or failed before recording one: past its maximum run time) and
    after ``record`` (the newest verification): the overview showed the older pass as if no
    drill had been due. None otherwise."""
    jobs = service.jobs.list(kind="verify", app=app, limit=1, apps=None)
    job = jobs[0] if jobs else None
    if job is None or job["state"] not in ("cancelled", "interrupted", "failed"):
        return None
    if job["state"] == "failed" and "maximum run time" not in (job["error"] or ""):
        return None  # it ran to its end: the verification it recorded says how
    ended = job["finished_at"] or job["created_at"] or ""
    return job if record is None or ended > record.time else None


def failed_backups(service: Service, app: str, since: dt.datetime) -> list[dt.datetime]:
    """When the failed backups of ``app`` since ``since`` ran, for the day strip: all of
    them, however many backups ran since (a backup every 15 minutes is 2,880 in 30 days;
    the newest 500 jobs hid the failures of all but the last five days). On the day it
    ran: an interrupted job "finished" when the service came back."""
    rows = service.db.query(
        "SELECT COALESCE(started_at, created_at) FROM jobs WHERE kind='backup' AND app=?"
        " AND state IN ('failed','interrupted') AND COALESCE(started_at, created_at) >= ?",
        (app, since.timestamp()),
    )
    return [dt.datetime.fromtimestamp(r[0], dt.UTC) for r in rows]


def _repo_visible(service: Service, key: str, principal: Principal) -> bool:
    if principal.apps is None:
        return True
    return any(k == key and principal.sees(a) for a, k in service.registry.app_repo.items())


OVERDUE_GRACE = dt.timedelta(minutes=30)  # a fired backup may be queued behind another


def overdue_reason(schedule: dict[str, Any] | None, last: Snapshot | None,
                   now: dt.datetime, tz: dt.tzinfo = dt.UTC) -> str | None:  # fmt: skip
    """Why an application's scheduled backup is overdue, or None.

    ``schedule`` is its entry of ``Scheduler.overview()`` (``last_run``: when the scheduler
    last fired it; ``next_run``). Overdue: the last firing is over ``OVERDUE_GRACE`` old and no
    snapshot was started at or after it (the run failed, was cancelled, or never got a turn),
    or the next firing is over ``OVERDUE_GRACE`` late (the service was not running then).
    """
    if schedule is None:
        return None
    fired, due = parse_time(schedule.get("last_run")), parse_time(schedule.get("next_run"))
    # the snapshot's time is when its backup started, a moment after the firing
    if (
        fired is not None
        and now - fired > OVERDUE_GRACE
        and (last is None or last.datetime < fired - dt.timedelta(minutes=1))
    ):
        return f"the run scheduled at {local_time(fired, tz)} did not succeed"
    if due is not None and now - due > OVERDUE_GRACE:
        return f"the run due at {local_time(due, tz)} did not start"
    return None


def last_check(service: Service, key: str) -> dict[str, Any] | None:
    """The newest finished check job of repository ``key`` (its result included), or None."""
    for job in service.jobs.list(kind="check", limit=200, apps=None):
        if job["repository"] == key and job["state"] not in ("queued", "running"):
            return job
    return None


def last_repair_after(service: Service, key: str, check: dict[str, Any] | None) -> int | None:
    """The id of the newest repair job of repository ``key`` that changed something (not a
    dry run) and succeeded after ``check`` finished, or None."""
    if check is None or not check.get("finished_at"):
        return None
    for job in service.jobs.list(kind="repair", limit=50, apps=None):
        if (
            job["repository"] == key and job["state"] == "succeeded"
            and not (job.get("params") or {}).get("dry_run")
            and (job.get("finished_at") or "") > check["finished_at"]
        ):  # fmt: skip
            return int(job["id"])
    return None


def repo_health(service: Service, key: str, handle: RepoHandle, snaps: list[Snapshot],
                principal: Principal, now: dt.datetime) -> RepoHealth:  # fmt: skip
    """Reachability, locks held, the newest check job, stored size and 30-day growth."""
    error = None
    locks: list[str] = []
    size = None
    alerts: list[str] = []
    try:
        repo = handle.repo()
        alerts = handle.alerts()
        locks = [info.describe() for info in list_locks(repo)]
        # the whole repository's size is for unscoped callers only, as in /metrics
        if principal.apps is None and service.metrics is not None:
            size = service.metrics.repo_size(key, handle, frozenset(s.id for s in snaps))
    except CasError as exc:
        error = str(exc)
    since = now - dt.timedelta(days=STRIP_DAYS)
    visible = [s for s in snaps if principal.apps is None or principal.sees(s.app)]
    return RepoHealth(
        key=key, location=handle.location if principal.apps is None else None,
        reachable=error is None, error=error, locks=locks,
        last_check=last_check(service, key), size_bytes=size,
        stored_bytes=sum(s.summary.bytes_stored for s in visible),
        growth_30d=sum(s.summary.bytes_stored for s in visible if s.datetime >= since),
        snapshots=len(visible), alerts=alerts,
    )  # fmt: skip


def path_query(path: str, path_b64: str | None = None) -> str:
    """The query naming a snapshot path for the browser and the API: ``path=...``, or
    ``path_b64=...`` when the path is not valid UTF-8 (the API's entries give ``path_b64``
    then; their ``path`` shows U+FFFD and names nothing)."""
    if path_b64:
        return "path_b64=" + quote(path_b64, safe="")
    return "path=" + quote(path, safe="/")  # once per entry of a 1,000-entry page: kept cheap


def raw_path(path: str, path_b64: str | None) -> bytes:
    """The exact bytes of a path given as the API gives it (``path_b64`` wins)."""
    if path_b64:
        return base64.urlsafe_b64decode(path_b64.encode("ascii"))
    return path.encode("utf-8", "surrogateescape")


def crumbs(raw: bytes) -> list[tuple[str, str]]:
    """``b"/a/b"`` -> [("/", "path=/"), ("a", "path=/a"), ("b", "path=/a/b")]: the
    breadcrumb's names and queries (a part that is not UTF-8 shows U+FFFD; its links go by
    ``path_b64``)."""
    out = [("/", path_query("/"))]
    acc = b""
    for part in [p for p in raw.split(b"/") if p]:
        acc += b"/" + part
        try:
            query = path_query(acc.decode("utf-8"))
        except UnicodeDecodeError:
            query = path_query("", base64.urlsafe_b64encode(acc).decode())
        out.append((part.decode("utf-8", "replace"), query))
    return out


DIFF_LIMIT = 1000  # changes shown on a page; the CLI's ``diff`` lists them all


@dataclass
class DiffView:
    other: Snapshot
    changes: list[tuple[str, str]]  # (code, path)
    counts: dict[str, int]
    truncated: bool


def snapshot_diff(handle: RepoHandle, other: Snapshot, snapshot_id: str, path: str) -> DiffView:
    """What changed from ``other`` to this snapshot below ``path`` (the library's
    ``diff_snapshots``, which skips equal subtrees); at most ``DIFF_LIMIT`` changes listed."""
    from casbackup.maintenance.diff import diff_snapshots

    repo = handle.repo()
    this = repo.resolve_snapshot(snapshot_id)
    _differ, changes = diff_snapshots(repo, other.root, this.root, path)
    shown: list[tuple[str, str]] = []
    counts: dict[str, int] = {}
    truncated = False
    for change in changes:
        counts[change.code] = counts.get(change.code, 0) + 1
        if len(shown) < DIFF_LIMIT:
            text = change.path.decode("utf-8", "replace") + ("/" if change.is_dir else "")
            shown.append((change.code, text))
        else:
            truncated = True
    return DiffView(other, shown, counts, truncated)
