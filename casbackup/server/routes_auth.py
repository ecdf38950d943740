"""Browser login: a session cookie (HttpOnly, SameSite=Strict) plus a CSRF token for forms."""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from casbackup.server.auth import (
    SESSION_COOKIE,
    Principal,
    client_address,
    current_user,
    principal_for,
    service_of,
)
from casbackup.server.body import Body

router = APIRouter(tags=["auth"])


class LoginRequest(Body):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class Me(BaseModel):
    name: str
    role: str
    apps: list[str] | None = Field(description="applications this caller may see; null: all")
    via: str = Field(description="session | token | proxy")
    csrf_token: str | None = Field(None, description="send as X-CSRF-Token (session callers)")


def me_of(p: Principal) -> Me:
    return Me(name=p.name, role=p.role, apps=None if p.apps is None else sorted(p.apps), via=p.via,
              csrf_token=p.csrf)  # fmt: skip


@router.post(
    "/api/auth/login",
    response_model=Me,
    responses={
        401: {"description": "wrong name or password"},
        429: {"description": "too many failures"},
    },
)
async def login(body: LoginRequest, request: Request, response: Response) -> Me:
    """Check a name and password; on success set the session cookie and return the CSRF token."""
    return me_of(await log_in(request, response, body.username, body.password))


async def log_in(request: Request, response: Response, username: str, password: str) -> Principal:
    """Check a name and password, apply the rate limit, set the session cookie on ``response``.

    For the JSON login above and for an HTML login form (the dashboard calls this too).
    Raises HTTPException 401 (wrong name or password) or 429 (too many failures for this
    client, see login_limit.py; Retry-After).
    The audit middleware records the attempt under the name tried.
    """
    service = service_of(request)
    address = client_address(request)
    request.state.audit_actor = username
    request.state.audit_action = "login"
    wait = service.limiter.retry_after(address, username)
    if wait > 0:
        raise HTTPException(429, "too many failed logins: try again later",
                            {"Retry-After": str(math.ceil(wait))})  # fmt: skip
    user = await run_in_threadpool(service.accounts.authenticate, username, password)
    if user is None:
        service.limiter.failed(address, username)
        raise HTTPException(401, "wrong user name or password")
    service.limiter.succeeded(address, username)
    cookie, csrf = await run_in_threadpool(
        service.accounts.create_session, user, service.settings.session_ttl_s, address
    )
    response.set_cookie(
        SESSION_COOKIE, cookie, max_age=int(service.settings.session_ttl_s), httponly=True,
        samesite="strict", secure=service.settings.cookie_secure, path="/",
    )  # fmt: skip
    principal = principal_for(user, "session", csrf=csrf)
    request.state.principal = principal
    return principal


@router.post("/api/auth/logout", status_code=204)
async def logout(
    request: Request, response: Response, _p: Principal = Depends(current_user)
) -> None:
    """End this browser session."""
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        await run_in_threadpool(service_of(request).accounts.end_session, cookie)
    response.delete_cookie(SESSION_COOKIE, path="/")


@router.get("/api/auth/me", response_model=Me)
async def me(principal: Principal = Depends(current_user)) -> Me:
    """Who the caller is, with the session's CSRF token."""
    return me_of(principal)
