"""Health, status and the applications list (the seed's GET endpoints)."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from casbackup import __version__
from casbackup.catalog import application_rows
from casbackup.errors import CasError
from casbackup.server.auth import Principal, require, service_of

router = APIRouter(tags=["system"])


class Health(BaseModel):
    status: str = Field(description="'ok' while the service answers")
    version: str


class LastSnapshot(BaseModel):
    id: str
    short_id: str
    time: str
    type: str


class Application(BaseModel):
    name: str
    description: str
    in_config: bool
    repository: str = Field(description="key of the repository its snapshots live in")
    databases: list[str]
    snapshots: int
    last_snapshot: LastSnapshot | None
    verification: str | None = Field(description="verified | failed | not verified")
    schedule: str | None = None
    next_run: str | None = Field(None, description="next scheduled backup (ISO 8601 UTC)")


class Applications(BaseModel):
    applications: list[Application]
    count: int
    warnings: list[str]


class RepositoryStatus(BaseModel):
    key: str
    location: str | None
    reachable: bool
    error: str | None = None
    alerts: list[str] = Field(
        default_factory=list,
        description="rollback and tampering warnings from this client's record of the "
        "repository (e.g. snapshots it forgot are back); empty when all is well",
    )


class SystemStatus(BaseModel):
    status: str
    version: str
    uptime_s: float
    applications: int
    repositories: list[RepositoryStatus]
    jobs: dict[str, int] = Field(description="job counts by state")
    scheduler: bool
    features: dict[str, bool]


@router.get("/healthz", response_model=Health, summary="Liveness (no authentication)")
def healthz() -> Health:
    return Health(status="ok", version=__version__)


def list_applications(request: Request, principal: Principal) -> Applications:
    service = service_of(request)
    registry = service.registry
    rows: list[dict[str, Any]] = []
    empty = registry.nothing_to_serve()
    warnings: list[str] = [empty] if empty else []
    for key, handle in registry.handles.items():
        config = dataclasses.replace(
            registry.config,
            applications=tuple(a for a in registry.config.applications if registry.repo_key_for(a.name) == key),
        )  # fmt: skip
        repo, snaps, records = None, None, None
        try:
            if handle.location:
                repo, snaps, records = handle.repo(), handle.snapshots(warnings), handle.records()
        except CasError as exc:
            warnings.append(f"repository {key}: {exc}")
            repo = None
        for row in application_rows(repo, config, warnings, snaps, records):
            if key != "default" and not row["in_config"]:
                continue  # only the configured application lives in an app's own repository
            if registry.repo_key_for(row["name"]) != key:
                continue
            row["repository"] = key
            app = registry.app(row["name"])
            row["schedule"] = app.schedule if app else None
            if service.scheduler is not None:
                row["next_run"] = service.scheduler.next_run_text(row["name"])
            rows.append(row)
    visible = [Application(**r) for r in rows if principal.sees(r["name"])]
    return Applications(applications=visible, count=len(visible), warnings=warnings)


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics (text format)",
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition"}},
)
def metrics(request: Request, principal: Principal = Depends(require("view"))) -> Response:
    """Per application: last successful backup time, bytes added, duration, files, snapshots,
    last verification result and time; per repository: size; jobs by kind and state. Scrape
    with a viewer token (``bearer_token`` in Prometheus)."""
    from prometheus_client import CONTENT_TYPE_LATEST

    body = service_of(request).metrics.render(principal.apps)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


@router.get("/api/applications", response_model=Applications, summary="Configured applications")
def applications(request: Request, principal: Principal = Depends(require("view"))) -> Applications:
    """Each application of the config (and any the repositories know), its latest snapshot and
    that snapshot's verification state. App-scoped callers see only their applications."""
    return list_applications(request, principal)


def _sees_repo(registry: Any, key: str, principal: Principal) -> bool:
    """Whether the caller may see a repository's alerts: unscoped callers see every one, an
    application-scoped caller those of repositories holding one of its applications."""
    if principal.apps is None:
        return True
    return any(k == key and principal.sees(a) for a, k in registry.app_repo.items())


@router.get("/api/system/status", response_model=SystemStatus, summary="Service status")
def system_status(
    request: Request, principal: Principal = Depends(require("view"))
) -> SystemStatus:
    service = service_of(request)
    repos = []
    for key, handle in service.registry.handles.items():
        try:
            alerts = handle.alerts() if _sees_repo(service.registry, key, principal) else []
            repos.append(
                RepositoryStatus(key=key, location=handle.location, reachable=True, alerts=alerts)
            )
        except CasError as exc:
            repos.append(
                RepositoryStatus(key=key, location=handle.location, reachable=False, error=str(exc))
            )
    counts = service.jobs.counts() if service.jobs is not None else {}
    apps = [a for a in service.registry.config.applications if principal.sees(a.name)]
    return SystemStatus(
        status="running", version=__version__, uptime_s=round(service.uptime(), 3),
        applications=len(apps), repositories=repos, jobs=counts,
        scheduler=service.scheduler is not None,
        features={"incremental_backups": True, "differential_backups": True, "database_dumps": True,
                  "verification": True, "disaster_recovery": True, "deduplication": True,
                  "encryption": True},
    )  # fmt: skip
