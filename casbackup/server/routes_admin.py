"""Users, API tokens and the audit log (admin only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import AfterValidator, BaseModel, Field

from casbackup.nstime import iso_seconds
from casbackup.server import audit
from casbackup.server.accounts import EMPTY_APPS, Token, User, parse_duration
from casbackup.server.auth import Principal, require, service_of
from casbackup.server.body import Body

router = APIRouter(tags=["admin"])


def iso(t: float | None) -> str | None:
    return iso_seconds(t)


def _not_empty(apps: list[str] | None) -> list[str] | None:
    # [] meant every application: an admin who sent it to mean "none" granted everything.
    if apps is not None and not apps:
        raise ValueError(EMPTY_APPS)
    return apps


# What a user or token may see: null (or left out) for every application, else a non-empty list.
AppsIn = Annotated[
    list[str] | None,
    AfterValidator(_not_empty),
    Field(description="applications it may see; null: no limit of its own ([] is refused)"),
]


class UserOut(BaseModel):
    name: str
    role: str
    apps: list[str] | None
    created_at: str | None


class UserIn(Body):
    name: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=8, max_length=1024)
    role: str = Field(pattern="^(admin|operator|viewer)$")
    apps: AppsIn = None


class UserPatch(Body):
    role: str | None = Field(None, pattern="^(admin|operator|viewer)$")
    apps: AppsIn = None  # left out: unchanged


class PasswordIn(Body):
    password: str = Field(min_length=8, max_length=1024)


class TokenOut(BaseModel):
    id: str
    user: str
    name: str
    apps: list[str] | None
    created_at: str | None
    expires_at: str | None
    revoked_at: str | None
    last_used_at: str | None


class TokenIn(Body):
    user: str = Field(min_length=1, max_length=64)
    name: str = Field("", max_length=100)
    expires: str | None = Field(None, max_length=20, description="e.g. 90d, 12h; null: never")
    apps: AppsIn = None  # null: the user's


class TokenCreated(TokenOut):
    token: str = Field(description="shown once; only its hash is stored")


class AuditOut(BaseModel):
    id: int
    time: float
    actor: str | None
    actor_kind: str | None
    address: str | None
    method: str | None
    path: str | None
    action: str
    app: str | None
    status: int | None
    outcome: str
    detail: str | None


def user_out(u: User) -> UserOut:
    return UserOut(name=u.name, role=u.role, apps=None if u.apps is None else list(u.apps),
                   created_at=iso(u.created_at))  # fmt: skip


def token_out(t: Token) -> TokenOut:
    return TokenOut(id=t.id, user=t.user.name, name=t.name, apps=None if t.apps is None else list(t.apps),
                    created_at=iso(t.created_at), expires_at=iso(t.expires_at),
                    revoked_at=iso(t.revoked_at), last_used_at=iso(t.last_used_at))  # fmt: skip


@router.get("/api/users", response_model=list[UserOut])
def list_users(request: Request, _p: Principal = Depends(require("users"))) -> list[UserOut]:
    return [user_out(u) for u in service_of(request).accounts.users()]


@router.post("/api/users", response_model=UserOut, status_code=201)
async def add_user(
    body: UserIn, request: Request, _p: Principal = Depends(require("users"))
) -> UserOut:
    request.state.audit_detail = f"user {body.name} role {body.role}"
    accounts = service_of(request).accounts
    user = await run_in_threadpool(
        accounts.add_user, body.name, body.password, body.role, body.apps
    )
    return user_out(user)


@router.patch("/api/users/{name}", response_model=UserOut)
def update_user(name: str, body: UserPatch, request: Request,
                _p: Principal = Depends(require("users"))) -> UserOut:  # fmt: skip
    request.state.audit_detail = f"user {name}"
    apps: list[str] | None | bool = body.apps if "apps" in body.model_fields_set else False
    return user_out(service_of(request).accounts.update_user(name, role=body.role, apps=apps))


@router.put("/api/users/{name}/password", status_code=204)
async def set_password(name: str, body: PasswordIn, request: Request,
                       _p: Principal = Depends(require("users"))) -> None:  # fmt: skip
    request.state.audit_detail = f"user {name}"
    await run_in_threadpool(service_of(request).accounts.set_password, name, body.password)


@router.delete("/api/users/{name}", status_code=204)
def remove_user(name: str, request: Request, _p: Principal = Depends(require("users"))) -> None:
    request.state.audit_detail = f"user {name}"
    service_of(request).accounts.remove_user(name)


@router.get("/api/tokens", response_model=list[TokenOut])
def list_tokens(request: Request, user: str | None = Query(None, max_length=64),
                _p: Principal = Depends(require("tokens"))) -> list[TokenOut]:  # fmt: skip
    return [token_out(t) for t in service_of(request).accounts.tokens(user)]


@router.post("/api/tokens", response_model=TokenCreated, status_code=201)
def create_token(
    body: TokenIn, request: Request, _p: Principal = Depends(require("tokens"))
) -> TokenCreated:
    request.state.audit_detail = f"token for {body.user}"
    expires = parse_duration(body.expires) if body.expires else None
    text, token = service_of(request).accounts.create_token(
        body.user, body.name, expires_in_s=expires, apps=body.apps
    )
    return TokenCreated(token=text, **token_out(token).model_dump())


@router.delete("/api/tokens/{token_id}", response_model=TokenOut)
def revoke_token(
    token_id: str, request: Request, _p: Principal = Depends(require("tokens"))
) -> TokenOut:
    request.state.audit_detail = f"token {token_id}"
    return token_out(service_of(request).accounts.revoke_token(token_id))


@router.get("/api/audit", response_model=list[AuditOut])
def audit_log(
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    before_id: int | None = Query(None, ge=0, le=2**62),
    actor: str | None = Query(None, max_length=200),
    app: str | None = Query(None, max_length=200),
    _p: Principal = Depends(require("audit")),
) -> list[AuditOut]:
    """Newest first; page with ``before_id`` (the smallest id of the previous page)."""
    rows = audit.query(
        service_of(request).db, limit=limit, before_id=before_id, actor=actor, app=app
    )
    return [AuditOut(**r) for r in rows]
