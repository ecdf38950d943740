"""Who is calling, and may they: the two dependencies every route uses.

- ``current_user``: the caller as a `Principal`, from (in order) ``Authorization: Bearer
  <token>``, the trusted single-sign-on header (only from a configured proxy address), or the
  session cookie. Anonymous callers get 401. Session-cookie callers must also send the
  session's CSRF token on state-changing requests (header ``X-CSRF-Token`` or form field
  ``csrf_token``); bearer tokens and proxy headers cannot be sent by another site's page, so
  they need none.
- ``require(permission, app=...)``: ``current_user`` plus a role check (403) and, when ``app``
  names a path or query parameter, an application check: an application the caller may not
  see answers 404, exactly as one that does not exist (no probing for names).

Roles are ordered viewer < operator < admin; ``PERMISSIONS`` gives the lowest role for each
permission (deny by default: an unknown permission name is a programming error, raised at
import time of the route that asks for it). A caller limited to some applications never has
a ``SERVICE_WIDE`` permission, whatever its role.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import HTTPException, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyCookie, HTTPBearer

from casbackup.errors import NotFound
from casbackup.server.accounts import ROLES, User

if TYPE_CHECKING:
    from casbackup.server.service import Service

SESSION_COOKIE = "casbackup_session"
CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

# permission -> the lowest role that has it (issue 19's role list)
PERMISSIONS: dict[str, str] = {
    "view": "viewer",  # applications, snapshots, jobs, verification records, metrics
    "browse": "viewer",  # names and metadata inside snapshots
    "backup": "operator",
    "verify": "operator",
    "check": "operator",
    "restore": "operator",  # into the configured recovery folder
    "download": "operator",  # file contents
    "cancel": "operator",  # own jobs
    "cancel_any": "admin",  # anyone's jobs (the scheduler's included)
    "forget": "admin",
    "prune": "admin",
    "recover": "admin",
    "unlock": "admin",
    "repair": "admin",  # repair packs / repair snapshots
    "tag": "admin",
    "rewrite": "admin",  # takes files out of snapshots (and with forget, for good)  # removing a tag named in keep_tags lets retention forget the snapshot
    "users": "admin",
    "tokens": "admin",
    "audit": "admin",
    "config": "admin",
}

# Permissions over the whole service or a whole repository. A caller limited to some
# applications never has them, whatever its role: with "tokens" or "users" a token scoped to
# one application could mint an unscoped one (or an admin limited to 'shop' make a new admin
# of everything), and the audit log, the config, check, prune and unlock concern every
# application.
SERVICE_WIDE = frozenset(
    {"users", "tokens", "audit", "config", "check", "prune", "unlock", "repair"}
)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    user_id: int
    name: str
    role: str
    apps: frozenset[str] | None  # None: every application
    via: str  # "token" | "session" | "proxy"
    token_id: str | None = None
    csrf: str | None = None

    @property
    def actor(self) -> str:
        return f"{self.name} (token {self.token_id})" if self.token_id else self.name

    def role_has(self, permission: str) -> bool:
        """Does the caller's role reach ``permission`` (its application scope aside)?"""
        return ROLES.index(self.role) >= ROLES.index(PERMISSIONS[permission])

    def has(self, permission: str) -> bool:
        if permission in SERVICE_WIDE and self.apps is not None:
            return False
        return self.role_has(permission)

    def refusal(self, permission: str) -> str:
        """Why ``has(permission)`` is False, as the 403's one line."""
        if self.role_has(permission):
            return (
                f"{permission} concerns the whole service or a whole repository; "
                "your access is limited to some applications"
            )
        return f"your role ({self.role}) may not {permission}"

    def sees(self, app: str | None) -> bool:
        """May this caller see application ``app``? (``None``: not about one application.)"""
        return self.apps is None or app is None or app in self.apps

    def check_app(self, app: str | None) -> None:
        """404 for an application the caller may not see (same answer as a missing one)."""
        if not self.sees(app):
            raise HTTPException(404, f"no application {app!r}")

    def check(self, permission: str, app: str | None = None) -> None:
        self.check_app(app)
        if not self.has(permission):
            raise HTTPException(403, self.refusal(permission))


def _scope(
    user_apps: tuple[str, ...] | None, token_apps: tuple[str, ...] | None
) -> frozenset[str] | None:
    if user_apps is None and token_apps is None:
        return None
    if user_apps is None:
        return frozenset(token_apps or ())
    if token_apps is None:
        return frozenset(user_apps)
    return frozenset(user_apps) & frozenset(token_apps)


def principal_for(user: User, via: str, **kw: Any) -> Principal:
    return Principal(user.id, user.name, user.role, _scope(user.apps, None), via, **kw)


def service_of(request: Request) -> Service:
    return request.app.state.service  # type: ignore[no-any-return]


def peer_address(request: Request) -> str:
    return request.client.host if request.client else ""


def client_address(request: Request) -> str:
    """The caller's address: the TCP peer, or X-Forwarded-For's nearest untrusted hop when
    the peer is a trusted proxy (a client cannot forge its way past our own proxy)."""
    peer = peer_address(request)
    service = service_of(request)
    if not service.is_trusted_proxy(peer):
        return peer
    hops = [h.strip() for h in request.headers.get("x-forwarded-for", "").split(",") if h.strip()]
    for hop in reversed(hops):
        if not service.is_trusted_proxy(hop):
            return hop
    return peer


def _authenticate(request: Request) -> Principal | None:
    service = service_of(request)
    accounts = service.accounts
    header = request.headers.get("authorization", "")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise HTTPException(
                401, "use 'Authorization: Bearer TOKEN'", {"WWW-Authenticate": "Bearer"}
            )
        token = accounts.check_token(value.strip())
        if token is None:
            raise HTTPException(
                401, "the token is unknown, expired or revoked", {"WWW-Authenticate": "Bearer"}
            )
        u = token.user
        return Principal(
            u.id, u.name, u.role, _scope(u.apps, token.apps), "token", token_id=token.id
        )
    settings = service.settings
    if settings.trusted_user_header and service.is_trusted_proxy(peer_address(request)):
        name = request.headers.get(settings.trusted_user_header)
        if name:
            try:
                user = accounts.user(name)
            except NotFound:
                raise HTTPException(
                    401, f"the proxy named user {name!r}, who has no account here"
                ) from None
            return principal_for(user, "proxy")
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        found = accounts.check_session(cookie)
        if found is not None:
            user, csrf = found
            return principal_for(user, "session", csrf=csrf)
    return None


async def _check_csrf(request: Request, principal: Principal) -> None:
    if principal.via != "session" or request.method in SAFE_METHODS:
        return
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        form = await request.form()  # Starlette caches it: the route can read it again
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    import hmac

    if not sent or not principal.csrf or not hmac.compare_digest(sent, principal.csrf):
        raise HTTPException(403, "missing or wrong CSRF token")


# Declared so that the OpenAPI schema says how to authenticate (the checks are ours, below).
BEARER = HTTPBearer(auto_error=False, description="an API token: casbackup token create")
COOKIE = APIKeyCookie(name=SESSION_COOKIE, auto_error=False,
                      description="the browser session from POST /api/auth/login")  # fmt: skip


async def current_user(
    request: Request,
    _bearer: Any = Security(BEARER),
    _cookie: Any = Security(COOKIE),
) -> Principal:
    """The authenticated caller (401 otherwise); stored on ``request.state.principal``."""
    principal = getattr(request.state, "principal", None)
    if principal is None:
        # A token or session check reads (and once a minute writes) the state database, whose
        # lock another writer (a job's progress, `casbackup user add`) may hold for up to its
        # busy timeout: on a thread, so that the event loop serves everyone else meanwhile.
        principal = await run_in_threadpool(_authenticate, request)
        if principal is None:
            raise HTTPException(
                401, "log in or send 'Authorization: Bearer TOKEN'", {"WWW-Authenticate": "Bearer"}
            )
        request.state.principal = principal
    await _check_csrf(request, principal)
    return principal  # type: ignore[no-any-return]


async def optional_user(request: Request) -> Principal | None:
    """The caller if authenticated, else None (for pages that show a login form)."""
    try:
        return await current_user(request)
    except HTTPException:
        return None


def require(permission: str, app: str | None = None) -> Callable[..., Any]:
    """A dependency: the caller must have ``permission`` (403) and see the application named
    by the path or query parameter ``app`` (404). Returns the `Principal`."""
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")

    async def dependency(
        request: Request, _bearer: Any = Security(BEARER), _cookie: Any = Security(COOKIE)
    ) -> Principal:
        principal = await current_user(request)
        name = None
        if app is not None:
            name = request.path_params.get(app) or request.query_params.get(app)
            principal.check_app(name)
            request.state.audit_app = name
        if not principal.has(permission):
            # The audit names the application a refused request was about, as for one that
            # was allowed: from the JSON body's app_name (POST /api/backup, forget, ...).
            if name is None:
                request.state.audit_app = await _body_app(request)
            raise HTTPException(403, principal.refusal(permission))
        return principal

    dependency.permission = permission  # type: ignore[attr-defined]  # read by the role-matrix test
    return dependency


async def _body_app(request: Request) -> str | None:
    """``app_name`` from a JSON request body, if it has one that is a short string (FastAPI
    has read the body before the dependencies run, so this reads what is cached)."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        return None
    try:
        body = await request.json()
    except ValueError:  # malformed JSON or not UTF-8: the route answers 422 for it
        return None
    app = body.get("app_name") if isinstance(body, dict) else None
    return app if isinstance(app, str) and 0 < len(app) <= 100 else None


def is_in(address: str, networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in n for n in networks)
