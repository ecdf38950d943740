"""The app factory: ``create_app(settings)`` builds one independent FastAPI instance."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from casbackup import __version__
from casbackup.errors import StorageError
from casbackup.server import errors
from casbackup.server.audit import AuditEntry, outcome_of, record
from casbackup.server.auth import SAFE_METHODS, client_address
from casbackup.server.service import Service
from casbackup.server.settings import Settings

ROUTER_MODULES = (
    "routes_system",
    "routes_auth",
    "routes_admin",
    "routes_jobs",
    "routes_snapshots",
    "routes_maintenance",
    "dashboard",  # HTML pages at / (issue 13)
)


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether or not Content-Length is sent
    (pure ASGI: counts what is actually received, so a lying or absent header does not help)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                if not value.isdigit() or int(value) > self.limit:
                    await _too_large(scope, receive, send, self.limit)
                    return
        seen = 0
        over = False
        started = False

        async def counted() -> dict[str, Any]:
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # Pretend the client left: the app stops reading and its answer is dropped
                    # below; the caller gets our 413 instead.
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if over and not started:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except Exception:
            if not over:
                raise
        if over and not started:
            await _too_large(scope, receive, send, self.limit)


async def _too_large(scope: dict[str, Any], receive: Any, send: Any, limit: int) -> None:
    response = JSONResponse({"detail": f"request body over {limit} bytes"}, status_code=413)
    await response(scope, receive, send)


def create_app(settings: Settings, *, service: Service | None = None) -> FastAPI:
    """A new app with its own Service (state DB, jobs, metrics registry)."""
    service = service or Service(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            service.stop()

    app = FastAPI(
        title="casbackup",
        version=__version__,
        description="Backups, verification and recovery of applications, over HTTP. "
        "Authenticate with 'Authorization: Bearer TOKEN' (casbackup token create) or a "
        "session cookie from POST /api/auth/login.",
        lifespan=lifespan,
    )
    app.state.service = service
    errors.install(app)

    import importlib

    for name in ROUTER_MODULES:
        module = importlib.import_module(f"casbackup.server.{name}")
        app.include_router(module.router, responses=errors.COMMON_RESPONSES)
    from casbackup.server.dashboard import mount_static

    mount_static(app)
    app.add_middleware(AuditAndHeaders, service=service)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app


SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


class AuditAndHeaders:
    """Security headers on every answer (unless a route set its own), and an audit entry for
    every state-changing request once its status is known.

    Pure ASGI rather than ``@app.middleware("http")``: that wrapper runs each request through
    an extra task and memory stream, a good part of a small request's CPU (what 50 dashboards
    polling a job cost the service while it runs a backup: bench/server_api.py)."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500

        async def send_with_headers(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend(h for h in SECURITY_HEADERS if h[0] not in present)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        finally:
            if scope["method"] not in SAFE_METHODS:
                # The entry is written on a thread: the state database's lock may be held by
                # another writer for up to its busy timeout, and the event loop serves every
                # other request meanwhile. Shielded, so that a request cancelled by its
                # client's disconnect is still recorded.
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_audit, self.service, Request(scope), status)


def _audit(service: Service, request: Request, status: int) -> None:
    principal = getattr(request.state, "principal", None)
    route = request.scope.get("route")
    action = (
        getattr(request.state, "audit_action", None) or getattr(route, "name", None) or "unknown"
    )
    address = client_address(request)
    entry = AuditEntry(
        action=action, outcome=outcome_of(status),
        actor=principal.actor if principal else getattr(request.state, "audit_actor", None),
        actor_kind=principal.via if principal else "anonymous", address=address,
        method=request.method, path=request.url.path,
        app=getattr(request.state, "audit_app", None), status=status,
        detail=getattr(request.state, "audit_detail", None),
    )  # fmt: skip
    try:
        record(service.db, entry)
    except StorageError as exc:
        # After the answer (a full state disk): raising only logged a traceback.
        logging.getLogger("casbackup.server").warning(
            "audit entry not written (%s %s, %s): %s", request.method, request.url.path, status, exc
        )
