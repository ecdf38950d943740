"""Repository maintenance as jobs: check, forget and prune (plan, then execute), unlock, repair; the
repositories list, verification records and config reload."""

from __future__ import annotations

import logging
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from pydantic import BaseModel, Field

from casbackup.errors import CasError, ConfigError
from casbackup.server.auth import Principal, require, service_of
from casbackup.server.body import Body
from casbackup.server.repos import DEFAULT, Registry
from casbackup.server.routes_jobs import JobStarted, job_started, require_configured_app

log = logging.getLogger("casbackup.server")
router = APIRouter(tags=["maintenance"])


class CheckRequest(Body):
    repository: str = Field(DEFAULT, max_length=120)
    read_data: bool = False
    read_data_subset: str | None = Field(None, max_length=20, description="e.g. 10%, 1/7, 2G")


class ForgetRequest(Body):
    app_name: str = Field(min_length=1, max_length=100)
    dry_run: bool = Field(True, description="plan only (the default); false: plan and execute")


class RepositoryRequest(Body):
    repository: str = Field(DEFAULT, max_length=120)
    dry_run: bool = Field(True, description="plan only (the default); false: plan and execute")


class PruneRequest(RepositoryRequest):
    max_unused: float = Field(
        0.05, ge=0, le=1, description="repack a pack when more than this share of it is "
        "unused (0: leave no unused byte, as after taking files out with rewrite)",
    )  # fmt: skip


class RepairRequest(Body):
    repository: str = Field(DEFAULT, max_length=120)
    what: Literal["packs", "snapshots"]
    packs: list[str] = Field(
        default_factory=list, max_length=1000,
        description="what: packs: pack ids or unique prefixes, as a failed check names them",
    )  # fmt: skip
    dry_run: bool = Field(True, description="report only (the default); false: repair")


class RewriteRequest(Body):
    app_name: str = Field(min_length=1, max_length=100)
    excludes: list[str] = Field(
        min_length=1, max_length=100,
        description="exclude patterns, as backup's (absolute paths in the snapshots: "
        "/srv/app/keys, *.pem); a matching folder goes with everything below it",
    )  # fmt: skip
    forget: bool = Field(False, description="delete each original once its rewrite is stored")
    dry_run: bool = Field(True, description="report only (the default); false: rewrite")


class UnlockRequest(Body):
    repository: str = Field(DEFAULT, max_length=120)


class RepositoryOut(BaseModel):
    key: str
    location: str | None
    applications: list[str]
    reachable: bool
    error: str | None = None
    alerts: list[str] = Field(
        default_factory=list,
        description="rollback and tampering warnings from this client's record of the "
        "repository (e.g. snapshots it forgot are back); empty when all is well",
    )


class VerificationOut(BaseModel):
    id: str
    snapshot_id: str
    app: str | None
    ok: bool
    time: str
    duration_s: float
    files_checked: int
    bytes_checked: int
    failures: list[dict[str, Any]]
    warnings: list[str]


def _repo_job(request: Request, principal: Principal, kind: str, repository: str,
              params: dict[str, Any], *, once: bool = False) -> JobStarted:  # fmt: skip
    """Queue a whole-repository job; with ``once``, an identical one still waiting to run is
    answered instead of a second (a read-only check: a second one would prove nothing more)."""
    service = service_of(request)
    if principal.apps is not None:
        # A whole-repository job touches every application in it: not for app-scoped callers.
        raise HTTPException(
            403, f"{kind} concerns a whole repository; your access is limited to some applications"
        )
    service.registry.handle(repository)
    doc, new = service.jobs.submit_once(kind, app=None, repo_key=repository, params=params,
                                        created_by=principal.actor, user_id=principal.user_id,
                                        reuse_queued=once)  # fmt: skip
    what = f"{kind} of repository {repository}"
    return job_started(doc, f"{what} queued" if new else
                       f"{what} is already waiting to run (job {doc['id']})")  # fmt: skip


@router.post("/api/check", response_model=JobStarted, status_code=202)
def check(
    body: CheckRequest, request: Request, principal: Principal = Depends(require("check"))
) -> JobStarted:
    """Check a repository's structure; with ``read_data``/``read_data_subset`` its data too."""
    if body.read_data_subset:
        from casbackup.verify.check import Subset

        Subset.parse(body.read_data_subset)  # a bad value is the caller's 400 now, not a failed job
    return _repo_job(request, principal, "check", body.repository,
                     {"read_data": body.read_data, "read_data_subset": body.read_data_subset},
                     once=True)  # fmt: skip


@router.post("/api/forget", response_model=JobStarted, status_code=202)
def forget(
    body: ForgetRequest, request: Request, principal: Principal = Depends(require("forget"))
) -> JobStarted:
    """Apply the application's retention from the config. ``dry_run`` (default) returns the plan
    in the job's result: each snapshot kept or removed, and why; run again with ``dry_run:
    false`` to execute (the plan is recomputed under the repository's exclusive lock)."""
    require_configured_app(request, principal, body.app_name)
    app = service_of(request).registry.app(body.app_name)
    if app is not None and app.retention.is_empty:  # the caller's 400 now, not a failed job
        raise HTTPException(
            400, f"application {body.app_name!r} has no retention in the config: nothing to forget"
        )
    doc = service_of(request).jobs.submit(
        "forget", app=body.app_name, params={"dry_run": body.dry_run}, created_by=principal.actor,
        user_id=principal.user_id,
    )  # fmt: skip
    return job_started(doc, f"forget {'plan ' if body.dry_run else ''}for {body.app_name} queued")


@router.post("/api/prune", response_model=JobStarted, status_code=202)
def prune(
    body: PruneRequest, request: Request, principal: Principal = Depends(require("prune"))
) -> JobStarted:
    """Reclaim space no snapshot needs. ``dry_run`` (default) returns the plan only."""
    return _repo_job(request, principal, "prune", body.repository,
                     {"dry_run": body.dry_run, "max_unused": body.max_unused})  # fmt: skip


@router.post("/api/unlock", response_model=JobStarted, status_code=202)
def unlock(
    body: UnlockRequest, request: Request, principal: Principal = Depends(require("unlock"))
) -> JobStarted:
    """Remove stale locks (dead processes on this host, or not refreshed for 30 minutes)."""
    return _repo_job(request, principal, "unlock", body.repository, {})


@router.post("/api/repair", response_model=JobStarted, status_code=202)
def repair(
    body: RepairRequest, request: Request, principal: Principal = Depends(require("repair"))
) -> JobStarted:
    """``what: packs``: keep the intact blobs of damaged packs and drop the damaged ones from
    the index, so that the next backup stores them again. ``what: snapshots``: rewrite the
    snapshots that name data the repository no longer has, leaving it out. ``dry_run``
    (default) reports only; the job's result lists what was (or would be) done."""
    if body.what == "packs":
        if not body.packs:
            raise HTTPException(
                400, "name the damaged packs to repair (as a failed check lists them)"
            )
        for name in body.packs:
            if len(name) < 4 or len(name) > 64 or any(c not in "0123456789abcdef" for c in name):
                raise HTTPException(400, f"{name[:70]!r} is not a pack id (4 to 64 hex digits)")
    params = {"what": body.what, "packs": body.packs, "dry_run": body.dry_run}
    return _repo_job(request, principal, "repair", body.repository, params)


@router.post("/api/rewrite", response_model=JobStarted, status_code=202)
def rewrite(
    body: RewriteRequest, request: Request, principal: Principal = Depends(require("rewrite"))
) -> JobStarted:
    """Take the paths the patterns match out of every snapshot of the application
    (`casbackup rewrite`): a file that must not be kept. ``dry_run`` (default) lists what
    would be taken out of which snapshot; then ``dry_run: false`` writes the rewritten
    snapshots (tagged ``rewritten``), and with ``forget`` deletes the originals. A prune
    with ``max_unused`` 0 (the CLI's) then deletes the data from the storage."""
    from casbackup.archiver.excludes import Excluder

    require_configured_app(request, principal, body.app_name)
    if any(len(p) > 4096 for p in body.excludes):
        raise HTTPException(400, "an exclude pattern is longer than 4096 characters")
    Excluder(body.excludes)  # a bad pattern is the caller's 400 now, not a failed job
    params = {"excludes": body.excludes, "forget": body.forget, "dry_run": body.dry_run}
    doc = service_of(request).jobs.submit(
        "rewrite", app=body.app_name, params=params, created_by=principal.actor,
        user_id=principal.user_id,
    )  # fmt: skip
    return job_started(doc, f"rewrite {'plan ' if body.dry_run else ''}of {body.app_name} queued")


@router.get("/api/repositories", response_model=list[RepositoryOut])
def repositories(
    request: Request, principal: Principal = Depends(require("view"))
) -> list[RepositoryOut]:
    registry = service_of(request).registry
    out = []
    for key, handle in registry.handles.items():
        apps = [a for a, k in registry.app_repo.items() if k == key and principal.sees(a)]
        if principal.apps is not None and not apps:
            continue
        try:
            out.append(RepositoryOut(key=key, location=handle.location, applications=apps,
                                     reachable=True, alerts=handle.alerts()))  # fmt: skip
        except CasError as exc:
            out.append(RepositoryOut(key=key, location=handle.location, applications=apps,
                                     reachable=False, error=str(exc)))  # fmt: skip
    return out


@router.get("/api/verifications", response_model=list[VerificationOut])
def verifications(request: Request, app: str | None = Query(None, max_length=100),
                  principal: Principal = Depends(require("view"))) -> list[dict[str, Any]]:  # fmt: skip
    """Verification records stored in the repositories, newest first."""
    out: list[dict[str, Any]] = []
    for handle in service_of(request).registry.handles.values():
        if not handle.location:
            continue
        for r in handle.records().records:
            if (
                (app is not None and r.app != app)
                or not principal.sees(r.app)
                or (principal.apps is not None and r.app is None)
            ):
                continue
            d = r.to_dict()
            out.append(d)
    out.sort(key=lambda d: d["time"], reverse=True)
    return out


class ScheduleOut(BaseModel):
    key: str
    kind: str
    app: str | None
    repository: str | None
    schedule: str
    timezone: str
    last_run: str | None
    next_run: str


@router.get("/api/schedules", response_model=list[ScheduleOut])
def schedules(
    request: Request, principal: Principal = Depends(require("view"))
) -> list[dict[str, Any]]:
    """Every schedule with its last and next run (empty when the scheduler is off)."""
    scheduler = service_of(request).scheduler
    if scheduler is None:
        return []
    return [
        s
        for s in scheduler.overview()
        if principal.sees(s["app"]) and (principal.apps is None or s["app"])
    ]


@router.post("/api/config/reload", status_code=204)
def reload_config(request: Request, _p: Principal = Depends(require("config"))) -> None:
    """Read the config file again (applications, schedules, repositories). Running jobs go on
    with what they started with. A file that cannot be read or is invalid changes nothing:
    400, its problems and "the running configuration is kept"."""
    service = service_of(request)
    try:
        fresh = Registry(service.settings)  # parse first: a broken file changes nothing
    except CasError as exc:  # and the caller hears that nothing changed
        kept = ConfigError(f"{exc}; the running configuration is kept")
        log.warning("config reload refused: %s", kept)
        raise kept from None
    fresh.adopt(service.registry)
    service.registry = fresh
    if service.scheduler is not None:
        service.scheduler.reload()
