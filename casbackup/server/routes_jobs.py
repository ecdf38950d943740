"""Jobs: the seed's POST /api/backup and /api/disaster-recovery, the webhook trigger, job
listing, detail, log and cancel, and the server-sent event stream."""

from __future__ import annotations

import asyncio
import os
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from casbackup.errors import UsageError
from casbackup.recovery.connection import split_assignment
from casbackup.recovery.layout import IN_PLACE
from casbackup.server.auth import Principal, require, service_of
from casbackup.server.body import Body

router = APIRouter(tags=["jobs"])

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "interrupted"]
KEEPALIVE_S = 15.0
JobId = Annotated[int, Path(ge=1, le=2**62, description="a job's id")]  # SQLite's INTEGER range


class Job(BaseModel):
    id: int
    kind: str
    app: str | None
    repository: str
    state: JobState
    params: dict[str, Any]
    created_by: str | None
    trigger: str = Field(description="api | webhook | scheduler")
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    duration_s: float | None = Field(
        None,
        description="seconds it ran; null while queued, and for an interrupted job (its end is unknown)",
    )
    progress: dict[str, Any] | None = Field(
        description="the last progress: phase, files_done, bytes_done, ..."
    )
    result: dict[str, Any] | None = Field(description="what the job produced (kind-specific)")
    error: str | None
    exit_code: int | None = Field(description="the CLI's exit code for the same outcome")
    snapshot_id: str | None = Field(description="the snapshot a backup job made")


class JobStarted(BaseModel):
    message: str
    job_id: int
    status: JobState
    job: Job


class LogLine(BaseModel):
    id: int
    time: str | None
    level: str
    message: str


class BackupRequest(Body):
    """The seed's request shape."""

    backup_type: Literal["full", "incremental", "differential"] = "full"
    app_name: str = Field("default", min_length=1, max_length=100)


class DisasterRecoveryRequest(Body):
    app_name: str = Field("default", min_length=1, max_length=100)
    dry_run: bool = Field(True, description="only plan (the default): say what would be restored")
    snapshot: str | None = Field(
        None, max_length=64, description="id, prefix or 'latest'; default: newest verified"
    )
    target: str | None = Field(
        None, max_length=200,
        description="folder name inside the configured recovery directory (default: the app's name)",
    )  # fmt: skip
    databases: bool = True
    allow_unverified: bool = False
    overwrite_databases: bool = Field(
        False,
        description="replace a server database that holds data (as recover --overwrite-databases); "
        "without it such a database is refused before anything is restored",
    )
    db_into: list[str] = Field(
        [], max_length=50,
        description="NAME=CONNECTION each (as recover --db-into): database NAME goes into another "
        "database on the config's server (a bare name), a server that needs no password "
        "(postgresql://user@host:port/db), or for SQLite a file inside the target folder; "
        "never password_env or password_file (the service reads only its config's)",
    )  # fmt: skip
    globals: bool = Field(
        True, description="create the roles (PostgreSQL) or accounts (MariaDB) kept with the "
        "dumps where the server lacks them (false: as recover --no-globals)",
    )  # fmt: skip
    in_place: bool = Field(
        False, description="put each source the config lists back at its own path (as recover "
        "--in-place; it writes outside the recovery directory); the report then goes to target",
    )  # fmt: skip


def job_started(doc: dict[str, Any], message: str) -> JobStarted:
    return JobStarted(message=message, job_id=doc["id"], status=doc["state"], job=Job(**doc))


def visible_job(request: Request, principal: Principal, job_id: int) -> dict[str, Any]:
    service = service_of(request)
    doc = service.jobs.get(job_id)
    if principal.apps is not None and doc["app"] not in principal.apps:
        raise HTTPException(404, f"no job {job_id}")
    request.state.audit_app = doc["app"]
    return doc


def require_configured_app(request: Request, principal: Principal, app: str) -> None:
    principal.check_app(app)
    request.state.audit_app = app
    if service_of(request).registry.app(app) is None:
        raise HTTPException(404, f"no application {app!r} in the config")


def start_backup(request: Request, principal: Principal, app: str, backup_type: str | None,
                 trigger: str) -> JobStarted:  # fmt: skip
    require_configured_app(request, principal, app)
    service = service_of(request)
    cfg = service.registry.app(app)
    assert cfg is not None
    doc, new = service.jobs.submit_once(
        "backup", app=app, params={"backup_type": backup_type or cfg.default_backup_type},
        created_by=principal.actor, user_id=principal.user_id, trigger=trigger,
    )  # fmt: skip
    what = f"{doc['params']['backup_type']} backup of {app}"
    message = f"{what} queued" if new else f"{what} is already waiting to run (job {doc['id']})"
    return JobStarted(message=message, job_id=doc["id"], status=doc["state"], job=Job(**doc))


@router.post(
    "/api/backup", response_model=JobStarted, status_code=202, summary="Start a backup (seed)"
)
def backup(
    request: Request,
    body: BackupRequest | None = None,
    principal: Principal = Depends(require("backup")),
) -> JobStarted:
    """Queue a backup of ``app_name``; follow it with GET /api/jobs/{id} or /api/events.

    As in the seed, the body is optional (a full backup of ``default``). ``default`` names the
    config's only application when there is exactly one and none is called ``default``."""
    body = body or BackupRequest()
    return start_backup(
        request, principal, seed_app(request, body.app_name), body.backup_type, "api"
    )


def seed_app(request: Request, name: str) -> str:
    """The seed's ``default`` application: the config's only one, when it has exactly one."""
    apps = service_of(request).registry.config.applications
    if name == "default" and len(apps) == 1 and apps[0].name != "default":
        return apps[0].name
    return name


@router.post(
    "/api/hooks/backup/{app}", response_model=JobStarted, status_code=202,
    summary="Webhook: start an application's backup",
)  # fmt: skip
def backup_hook(
    app: str,
    request: Request,
    backup_type: Literal["full", "incremental", "differential"] | None = Query(None),
    principal: Principal = Depends(require("backup", app="app")),
) -> JobStarted:
    """For cron on another machine or a CI job: ``curl -X POST -H 'Authorization: Bearer
    TOKEN' .../api/hooks/backup/shop``. Use a token limited to the one application
    (``casbackup token create --user ci --app shop``). The app's default backup type unless
    ``backup_type`` is given."""
    return start_backup(request, principal, app, backup_type, "webhook")


def recovery_target(request: Request, app: str, name: str | None) -> str:
    """A folder inside the configured recovery directory; never anywhere else."""
    recovery_dir = service_of(request).registry.config.disaster_recovery.recovery_directory
    if not recovery_dir:
        raise HTTPException(409, "no disaster_recovery.recovery_directory in the config")
    name = name or app
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name or name.startswith("."):
        raise HTTPException(400, "target must be a plain folder name inside the recovery directory")
    return os.path.join(recovery_dir, name)


@router.post(
    "/api/disaster-recovery", response_model=JobStarted, status_code=202,
    summary="Recover an application (seed); a dry run returns the plan",
)  # fmt: skip
def disaster_recovery(request: Request, body: DisasterRecoveryRequest | None = None,
                      principal: Principal = Depends(require("recover"))) -> JobStarted:  # fmt: skip
    """Rebuild ``app_name`` from its newest verified snapshot into a folder of the configured
    recovery directory. ``dry_run`` (the default) plans only; the job's result holds the plan,
    and after a real run the recovery report. The body is optional, as in the seed."""
    body = body or DisasterRecoveryRequest()
    body.app_name = seed_app(request, body.app_name)
    require_configured_app(request, principal, body.app_name)
    folder = recovery_target(request, body.app_name, body.target)
    # In place, the report still goes into the recovery directory (never the service's
    # current folder, which the CLI would use).
    target, report = (
        (IN_PLACE, os.path.join(folder, "recovery-report")) if body.in_place else (folder, None)
    )
    try:
        db_into = dict(split_assignment(v, "db_into") for v in body.db_into)
    except UsageError as exc:
        raise HTTPException(400, str(exc)) from None
    doc = service_of(request).jobs.submit(
        "recover", app=body.app_name, created_by=principal.actor, user_id=principal.user_id,
        params={"target": target, "dry_run": body.dry_run, "snapshot": body.snapshot,
                "databases": body.databases, "allow_unverified": body.allow_unverified,
                "overwrite_databases": body.overwrite_databases, "db_into": db_into,
                "globals": body.globals, "report": report},
    )  # fmt: skip
    word = "plan" if body.dry_run else "recovery"
    return JobStarted(message=f"{word} of {body.app_name} queued", job_id=doc["id"], status=doc["state"],
                      job=Job(**doc))  # fmt: skip


@router.get("/api/jobs", response_model=list[Job])
def list_jobs(
    request: Request,
    state: JobState | None = Query(None),
    app: str | None = Query(None, max_length=100),
    kind: str | None = Query(None, max_length=20),
    limit: int = Query(100, ge=1, le=1000),
    before_id: int | None = Query(None, ge=0, le=2**62),
    principal: Principal = Depends(require("view")),
) -> list[Job]:
    """Newest first; page backwards with ``before_id``."""
    if app is not None and not principal.sees(app):
        return []
    docs = service_of(request).jobs.list(state=state, app=app, kind=kind, limit=limit, before_id=before_id,
                                         apps=principal.apps)  # fmt: skip
    return [Job(**d) for d in docs]


@router.get("/api/jobs/{job_id}", response_model=Job)
def get_job(
    job_id: JobId, request: Request, principal: Principal = Depends(require("view"))
) -> Job:
    return Job(**visible_job(request, principal, job_id))


@router.get("/api/jobs/{job_id}/log", response_model=list[LogLine])
def job_log(job_id: JobId, request: Request, after_id: int = Query(0, ge=0, le=2**62),
            principal: Principal = Depends(require("view"))) -> list[LogLine]:  # fmt: skip
    visible_job(request, principal, job_id)
    return [LogLine(**line) for line in service_of(request).jobs.log(job_id, after_id)]


@router.post("/api/jobs/{job_id}/cancel", response_model=Job)
def cancel_job(
    job_id: JobId, request: Request, principal: Principal = Depends(require("cancel"))
) -> Job:
    """Operators cancel their own jobs; admins any. A queued job is cancelled at once; a running
    one is asked to stop at a safe point (its state becomes ``cancelled`` when it has)."""
    service = service_of(request)
    visible_job(request, principal, job_id)  # 404 for a job of an application out of scope
    row = service.db.one("SELECT created_by_user FROM jobs WHERE id=?", (job_id,))
    if not principal.has("cancel_any") and (row is None or row[0] != principal.user_id):
        raise HTTPException(403, "operators may cancel only their own jobs")
    return Job(**service.jobs.cancel(job_id))


@router.get(
    "/api/events",
    summary="Server-sent events: job.created, job.started, job.progress, job.log, job.finished",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "an event stream"}},
)
async def events(
    request: Request,
    last_event_id: str | None = Header(None, max_length=20),
    principal: Principal = Depends(require("view")),
) -> StreamingResponse:
    """Each event's ``data`` is JSON (a job document, or ``{id, progress}`` for progress).
    Reconnect with ``Last-Event-ID`` to replay what was missed (the last 1000 events)."""
    service = service_of(request)
    after = int(last_event_id) if last_event_id and last_event_id.isdigit() else None
    listener, replay = service.events.subscribe(after)

    def visible(app: str | None) -> bool:
        return principal.apps is None or app in principal.apps

    async def stream() -> Any:
        try:
            yield ": connected\n\n"
            for event in replay:
                if visible(event.app):
                    yield event.encode()
            while True:
                try:
                    event = await asyncio.wait_for(listener.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield ": keepalive\n\n"
                    continue
                if event is None:
                    return
                if visible(event.app):
                    yield event.encode()
        finally:
            service.events.unsubscribe(listener)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})  # fmt: skip
