"""The dashboard's pages (GET only: every state change is a form sent to the JSON API).

Each page depends on ``page(permission, app=...)``: the API's own ``require`` with one
difference, an anonymous caller is sent to the login page (303) instead of getting 401. Data
comes from the functions behind the API routes (``list_applications``, ``list_snapshots``,
``snapshot_detail``, ``browse``, the job manager, ``audit.query``), so a page shows exactly
what the API would answer to the same caller.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates

from casbackup.errors import CasError
from casbackup.server import audit, errors
from casbackup.server.auth import Principal, optional_user, require, service_of
from casbackup.server.dashboard import charts, views
from casbackup.server.dashboard.format import install_filters, safe_next
from casbackup.server.dashboard.testids import TESTIDS
from casbackup.server.job_records import KINDS
from casbackup.server.routes_jobs import visible_job
from casbackup.server.routes_snapshots import browse, find_snapshot, list_snapshots, snapshot_detail
from casbackup.server.routes_system import list_applications
from casbackup.units import human_bytes

templates = Jinja2Templates(directory=Path(__file__).resolve().parent.parent / "templates")
install_filters(templates.env)


class PageRoute(APIRoute):
    """A page's refusals and failures as an HTML page with the same status (403, 404, ...)
    instead of the API's JSON body; redirects (the login page's 303) pass through."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except HTTPException as exc:
                if exc.status_code < 400:
                    raise
                return _error(request, exc.status_code, str(exc.detail))
            except CasError as exc:
                return _error(request, errors.status_for(exc), str(exc))

        return page_handler


def _error(request: Request, status: int, message: str) -> Response:
    p = getattr(request.state, "principal", None)
    response = render(request, "error.html", p, status=status, message=message)
    response.status_code = status
    return response


router = APIRouter(include_in_schema=False, route_class=PageRoute)  # pages stay out of the schema

PAGE_SIZE = 1000  # folder entries on one page of the snapshot browser
# Pages carry the session's CSRF token and private data: never cached, never framed, and
# nothing loaded from another host (the service is used offline; a CDN would also leak).
HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
    "script-src 'self'; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; "
    "base-uri 'none'; object-src 'none'",
}


# What a page's permission lets a role do, for the page that refuses it (the API's own message
# names the permission: "your role (viewer) may not users").
PAGE_PURPOSE = {"users": "manage users, tokens and the audit log",
                "recover": "run disaster recoveries", "browse": "browse snapshots"}  # fmt: skip


def page(permission: str, app: str | None = None) -> Callable[..., Any]:
    """``require(permission, app)`` for a page: 401 becomes a redirect to the login page, a
    role's 403 says what the page is for."""
    inner = require(permission, app)

    async def dependency(request: Request) -> Principal:
        try:
            return await inner(request)  # type: ignore[no-any-return]
        except HTTPException as exc:
            principal = getattr(request.state, "principal", None)
            if exc.status_code == 403 and permission in PAGE_PURPOSE and principal is not None:
                yours = (f"yours is a {principal.role}" if not principal.role_has(permission)
                         else "yours is limited to some applications")  # fmt: skip
                raise HTTPException(403, f"This page is for accounts that may "
                                    f"{PAGE_PURPOSE[permission]}; {yours}.") from None  # fmt: skip
            if exc.status_code != 401:
                raise
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            raise HTTPException(
                303, "log in first", {"Location": "/login?" + urlencode({"next": target})}
            ) from None

    dependency.permission = permission  # type: ignore[attr-defined]  # read by the role matrix
    return dependency


def render(request: Request, name: str, p: Principal | None, **ctx: Any) -> Response:
    response = templates.TemplateResponse(
        request,
        name,
        {"p": p, "T": TESTIDS, "csrf": p.csrf if p else "", "tz": _zone(request), **ctx},
    )
    response.headers.update(HEADERS)
    return response


def api_doc(answer: Any) -> Any:
    """What an API route function answered, as data: some routes build their JSON bytes
    themselves (and cache them) for speed, others return the document."""
    if isinstance(answer, Response):
        return json.loads(bytes(answer.body))
    return answer


def _zone(request: Request) -> dt.tzinfo:
    """The zone the dashboard shows times in: the service's (schedules, retention)."""
    try:
        return service_of(request).zone()
    except CasError:  # a zone that stopped existing on this machine: still show the page
        return dt.UTC


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@router.get("/login")
async def login_page(
    request: Request, next: str = Query("/", max_length=2000),
    p: Principal | None = Depends(optional_user),
) -> Response:  # fmt: skip
    target = safe_next(next)
    if p is not None:
        return RedirectResponse(target, 303)
    return render(request, "login.html", None, next=target)


@router.get("/")
def overview_page(request: Request, p: Principal = Depends(page("view"))) -> Response:
    listing = list_applications(request, p)
    warnings = list(listing.warnings)
    ov = views.overview(service_of(request), p, listing.applications, warnings, _now())
    return render(request, "overview.html", p, ov=ov, now=_now(), live=True)


@router.get("/apps/{app}")
def app_page(
    app: str, request: Request, p: Principal = Depends(page("view", app="app"))
) -> Response:
    service = service_of(request)
    rows = [a for a in list_applications(request, p).applications if a.name == app]
    if not rows:
        raise HTTPException(404, f"no application {app!r}")
    snaps = api_doc(list_snapshots(request, app=app, tag=[], since=None, until=None,
                                   repository=None, principal=p))  # fmt: skip
    cfg = service.registry.app(app)
    growth, total = [], 0
    for s in snaps:
        total += s["summary"]["bytes_stored"]
        growth.append((views.parse_time(s["time"]), total))
    durations = [(views.parse_time(s["time"]), s["summary"]["duration_s"]) for s in snaps]
    return render(
        request, "app.html", p, app=rows[0], cfg=cfg, snapshots=list(reversed(snaps)),
        jobs=service.jobs.list(app=app, limit=15, apps=p.apps), now=_now(), live=True,
        growth=charts.chart(growth, title=f"{app}: repository growth", label=human_bytes,
                            testid=TESTIDS["chart"]),
        duration=charts.chart(durations, title=f"{app}: backup duration", bars=True,
                              label=lambda v: f"{v:.1f} s", testid=TESTIDS["chart"] + ":duration"),
    )  # fmt: skip


@router.get("/snapshots/{snapshot_id}")
def snapshot_page(
    snapshot_id: str,
    request: Request,
    path: str | None = Query(None, max_length=4096),
    path_b64: str | None = Query(None, max_length=5464),  # a path that is not UTF-8
    offset: int = Query(0, ge=0, le=10**9),
    against: str | None = Query(None, max_length=64),
    p: Principal = Depends(page("browse")),
) -> Response:
    detail = api_doc(snapshot_detail(snapshot_id, request, app=None, principal=p))
    sid = detail["id"]

    def listing_of(raw: bytes, offset: int, limit: int) -> dict[str, Any]:
        try:
            named = {"path": raw.decode("utf-8"), "path_b64": None}
        except UnicodeDecodeError:
            named = {"path": None, "path_b64": base64.urlsafe_b64encode(raw).decode()}
        return api_doc(browse(sid, request, **named, offset=offset, limit=limit, app=None,  # type: ignore[arg-type]
                              principal=p))  # fmt: skip

    file_entry = None
    try:
        listing = api_doc(browse(sid, request, path=path, path_b64=path_b64, offset=offset,
                                 limit=PAGE_SIZE, app=None, principal=p))  # fmt: skip
    except HTTPException as exc:
        # a file: show its metadata, found in its folder's listing
        raw = views.raw_path(path or "", path_b64).rstrip(b"/")
        parent, _, name = raw.rpartition(b"/")
        if exc.status_code != 404 or not name:
            raise
        listing = listing_of(parent or b"/", 0, 10**5)
        found = [e for e in listing["entries"] if views.raw_path(e["path"], e["path_b64"]) == raw]
        if not found:
            raise
        file_entry = found[0]
    here = file_entry or listing  # what the page shows: its path, exact bytes
    here_raw = views.raw_path(here["path"], here["path_b64"])
    diff = None
    same_app = api_doc(list_snapshots(request, app=detail["app"], tag=[], since=None, until=None,
                                      repository=detail["repository"], principal=p))  # fmt: skip
    others = [s for s in same_app if s["id"] != sid and s["app"] == detail["app"]]
    if against:
        handle, other = find_snapshot(request, p, against)
        if handle.key != detail["repository"]:
            raise HTTPException(400, "the two snapshots are in different repositories")
        diff = views.snapshot_diff(handle, other, sid, os.fsdecode(here_raw))
    config = service_of(request).registry.config
    recovery_dir = config.disaster_recovery.recovery_directory
    app = config.app(detail["app"]) if detail["app"] else None
    keep_tags = sorted(app.retention.keep_tags) if app is not None else []  # what pins it
    return render(
        request, "snapshot.html", p, snap=detail, listing=listing, file=file_entry,
        crumbs=views.crumbs(here_raw), here=here, others=list(reversed(others)), diff=diff,
        against=against, page_size=PAGE_SIZE, recovery_dir=recovery_dir, keep_tags=keep_tags,
    )  # fmt: skip


JOBS_PAGE = 200  # jobs on one page of /jobs


@router.get("/jobs")
def jobs_page(
    request: Request,
    state: str | None = Query(None, max_length=20),
    app: str | None = Query(None, max_length=100),
    kind: str | None = Query(None, max_length=20),
    before: int | None = Query(None, ge=1, le=2**62),
    p: Principal = Depends(page("view")),
) -> Response:
    """The newest ``JOBS_PAGE`` jobs (filtered), then older ones page by page (``before``:
    a job id): a service that runs for months has tens of thousands."""
    jobs = [] if app and not p.sees(app) else service_of(request).jobs.list(
        state=state or None, app=app or None, kind=kind or None, limit=JOBS_PAGE + 1,
        apps=p.apps, before_id=before)  # fmt: skip
    older = jobs[JOBS_PAGE - 1]["id"] if len(jobs) > JOBS_PAGE else None
    filters = {k: v for k, v in (("state", state), ("app", app), ("kind", kind)) if v}
    return render(request, "jobs.html", p, jobs=jobs[:JOBS_PAGE], state=state, app=app, kind=kind,
                  live=before is None, now=_now(), kinds=KINDS,
                  older=None if older is None else urlencode(filters | {"before": older}))  # fmt: skip


@router.get("/jobs/{job_id}")
def job_page(job_id: int, request: Request, p: Principal = Depends(page("view"))) -> Response:
    service = service_of(request)
    job = visible_job(request, p, job_id)
    row = service.db.one("SELECT created_by_user FROM jobs WHERE id=?", (job_id,))
    may_cancel = p.has("cancel") and (
        p.has("cancel_any") or (row is not None and row[0] == p.user_id)
    )
    return render(request, "job.html", p, job=job, log=service.jobs.log(job_id), live=True,
                  may_cancel=may_cancel, now=_now())  # fmt: skip


@router.get("/recovery")
def recovery_page(request: Request, p: Principal = Depends(page("recover"))) -> Response:
    service = service_of(request)
    apps = [a for a in list_applications(request, p).applications if a.in_config]
    return render(request, "recovery.html", p, apps=apps,
                  recovery_dir=service.registry.config.disaster_recovery.recovery_directory,
                  jobs=service.jobs.list(kind="recover", limit=20, apps=p.apps), now=_now())  # fmt: skip


@router.get("/admin")
def admin_page(
    request: Request,
    actor: str | None = Query(None, max_length=200),
    app: str | None = Query(None, max_length=200),
    outcome: str | None = Query(None, max_length=20),
    before_id: int | None = Query(None, ge=0, le=2**62),
    p: Principal = Depends(page("users")),
) -> Response:
    service = service_of(request)
    rows = audit.query(service.db, limit=200, before_id=before_id, actor=actor or None,
                       app=app or None, outcome=outcome or None)  # fmt: skip
    return render(
        request, "admin.html", p, users=service.accounts.users(),
        tokens=service.accounts.tokens(None), audit=rows, actor=actor or "", app=app or "",
        outcome=outcome or "", apps=[a.name for a in service.registry.config.applications],
        now=_now(),
    )  # fmt: skip
