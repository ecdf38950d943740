"""The role matrix: every route of the app, enumerated from the app itself, called anonymously,
as viewer, operator, admin and as an operator limited to one application.

A route added without a line in RULES fails `test_every_route_has_a_rule`: deny by default is
only as good as the list that proves it.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from fastapi.routing import APIRoute

from casbackup.server.auth import PERMISSIONS, ROLES
from tests.server.conftest import PW, Env
from tests.server.test_jobs import wait_job
from tests.server.test_snapshots import backup

PUBLIC, AUTHENTICATED = "public", "authenticated"

# (method, path) -> (rule, concerns an application: the scoped user gets 404 for the other app)
RULES: dict[tuple[str, str], tuple[str, bool]] = {
    ("GET", "/healthz"): (PUBLIC, False),
    ("POST", "/api/auth/login"): (PUBLIC, False),
    ("POST", "/api/auth/logout"): (AUTHENTICATED, False),
    ("GET", "/api/auth/me"): (AUTHENTICATED, False),
    ("GET", "/api/applications"): ("view", False),
    ("GET", "/api/system/status"): ("view", False),
    ("GET", "/api/users"): ("users", False),
    ("POST", "/api/users"): ("users", False),
    ("PATCH", "/api/users/{name}"): ("users", False),
    ("PUT", "/api/users/{name}/password"): ("users", False),
    ("DELETE", "/api/users/{name}"): ("users", False),
    ("GET", "/api/tokens"): ("tokens", False),
    ("POST", "/api/tokens"): ("tokens", False),
    ("DELETE", "/api/tokens/{token_id}"): ("tokens", False),
    ("GET", "/api/audit"): ("audit", False),
    ("POST", "/api/backup"): ("backup", True),
    ("POST", "/api/hooks/backup/{app}"): ("backup", True),
    ("POST", "/api/disaster-recovery"): ("recover", True),
    ("GET", "/api/jobs"): ("view", False),
    ("GET", "/api/jobs/{job_id}"): ("view", True),
    ("GET", "/api/jobs/{job_id}/log"): ("view", True),
    ("POST", "/api/jobs/{job_id}/cancel"): ("cancel", True),
    ("GET", "/api/events"): ("view", False),
    ("GET", "/api/snapshots"): ("view", False),
    ("GET", "/api/snapshots/{snapshot_id}"): ("view", True),
    ("GET", "/api/snapshots/{snapshot_id}/tree"): ("browse", True),
    ("GET", "/api/snapshots/{snapshot_id}/download"): ("download", True),
    ("POST", "/api/snapshots/{snapshot_id}/restore"): ("restore", True),
    ("POST", "/api/snapshots/{snapshot_id}/verify"): ("verify", True),
    ("POST", "/api/snapshots/{snapshot_id}/tags"): ("tag", True),
    ("POST", "/api/check"): ("check", False),
    ("POST", "/api/forget"): ("forget", True),
    ("POST", "/api/prune"): ("prune", False),
    ("POST", "/api/unlock"): ("unlock", False),
    ("POST", "/api/repair"): ("repair", False),
    ("POST", "/api/rewrite"): ("rewrite", True),
    ("GET", "/api/repositories"): ("view", False),
    ("GET", "/api/verifications"): ("view", False),
    ("GET", "/api/schedules"): ("view", False),
    ("POST", "/api/config/reload"): ("config", False),
    ("GET", "/metrics"): ("view", False),
    # the dashboard's pages (an anonymous caller is sent to the login page: 303)
    ("GET", "/login"): (PUBLIC, False),
    ("GET", "/"): ("view", False),
    ("GET", "/apps/{app}"): ("view", True),
    ("GET", "/snapshots/{snapshot_id}"): ("browse", True),
    ("GET", "/jobs"): ("view", False),
    ("GET", "/jobs/{job_id}"): ("view", True),
    ("GET", "/recovery"): ("recover", False),
    ("GET", "/admin"): ("users", False),
}


DOCS = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")
STATIC = ("/static",)  # the dashboard's stylesheet and script: public (the login page needs them)


def walk(routes: list[Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(full path, route) for every route, through included routers and mounts."""
    out: list[tuple[str, Any]] = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:  # FastAPI's wrapper for include_router
            ctx = getattr(route, "include_context", None)
            out.extend(walk(inner.routes, prefix + (getattr(ctx, "prefix", "") or "")))
        elif isinstance(route, APIRoute):
            out.append((prefix + route.path, route))
        elif getattr(route, "path", "") in DOCS + STATIC:
            continue
        else:
            raise AssertionError(f"route {route!r} is not an APIRoute: give it a rule and a test")
    return out


def app_routes(env: Env) -> set[tuple[str, str]]:
    return {(m, path) for path, route in walk(env.client.app.routes) for m in route.methods}  # type: ignore[attr-defined]


def test_every_route_has_a_rule(env: Env) -> None:
    assert app_routes(env) == set(RULES), "a route without a rule (or a rule without a route)"
    for rule, _ in RULES.values():
        assert rule in PERMISSIONS or rule in (PUBLIC, AUTHENTICATED)


def test_every_route_declares_the_permission_in_the_table(env: Env) -> None:
    """The dependency a route uses names the same permission as RULES (no silent drift)."""
    for path, route in walk(env.client.app.routes):  # type: ignore[attr-defined]
        declared = {getattr(d.call, "permission", None) for d in route.dependant.dependencies} - {
            None
        }
        for method in route.methods:
            rule, _ = RULES[(method, path)]
            if rule in (PUBLIC, AUTHENTICATED):
                assert not declared, (method, path)
            else:
                assert declared == {rule}, (method, path, declared)


def allowed(role: str, rule: str) -> bool:
    if rule in (PUBLIC, AUTHENTICATED):
        return True
    return ROLES.index(role) >= ROLES.index(PERMISSIONS[rule])


@pytest.fixture
def world(env: Env) -> dict[str, Any]:
    shop = backup(env, "shop")
    blog = backup(env, "blog")
    accounts = env.service.accounts
    for who in ("viewer", "operator", "admin", "scoped"):
        accounts.add_user(f"victim-{who}", "password-123", "viewer")
    tokens = {
        who: accounts.create_token("viewer", "victim")[1].id
        for who in ("viewer", "operator", "admin", "scoped")
    }
    return {"shop": shop, "blog": blog, "tokens": tokens}


def call(env: Env, who: str | None, method: str, path: str, world: dict[str, Any], app: str) -> int:
    other = world[app]
    params: dict[str, Any] = {}
    body: Any = None
    subst = {
        "{name}": f"victim-{who}", "{token_id}": world["tokens"].get(who or "viewer", "0"),
        "{app}": app, "{job_id}": str(other["id"]), "{snapshot_id}": other["snapshot_id"],
    }  # fmt: skip
    for k, v in subst.items():
        path = path.replace(k, v)
    if path.endswith(("/tree", "/download")):
        params["path"] = str(env.tmp / app / "a.txt") if path.endswith("download") else "/"
    bodies = {
        "/api/auth/login": {"username": "viewer", "password": PW},
        "/api/users": {"name": f"new-{who}", "password": "password-123", "role": "viewer"},
        "/api/tokens": {"user": "viewer"},
        "/api/backup": {"app_name": app},
        "/api/disaster-recovery": {"app_name": app, "allow_unverified": True},
        "/api/forget": {"app_name": app},
        "/api/rewrite": {"app_name": app, "excludes": ["*.nothing"]},
        "/api/check": {}, "/api/prune": {}, "/api/unlock": {},
    }  # fmt: skip
    if method in ("POST", "PUT", "PATCH"):
        body = bodies.get(path, {})
        if path.endswith("/password"):
            body = {"password": "password-456"}
        if path.endswith("/tags"):
            body = {"add": ["pinned"]}
        if method == "PATCH":
            body = {"role": "viewer"}
    headers = env.h(who) if who else {}
    if path == "/api/events":
        with env.client.stream("GET", path, headers=headers) as r:
            return r.status_code
    r = env.client.request(method, path, params=params, json=body, headers=headers,
                           follow_redirects=False)  # fmt: skip
    env.client.cookies.clear()  # a login's cookie must not authenticate the next "anonymous" call
    assert "Traceback" not in r.text
    assert r.status_code < 500, (who, method, path, r.status_code, r.text)
    return r.status_code


@pytest.mark.slow
def test_role_matrix(env: Env, world: dict[str, Any]) -> None:
    results: list[str] = []
    for (method, path), (rule, about_app) in sorted(RULES.items()):
        if path == "/api/events":
            continue  # streams forever for the allowed; covered below
        status = call(env, None, method, path, world, "shop")
        # a page refuses an anonymous caller by sending it to the login page
        refused = status == 401 or (status == 303 and not path.startswith("/api/"))
        if (rule == PUBLIC) == refused:
            results.append(f"anonymous {method} {path}: {status}")
        for who in ("viewer", "operator", "admin"):
            status = call(env, who, method, path, world, "shop")
            if allowed(who, rule):
                if status in (401, 403):
                    results.append(f"{who} {method} {path}: {status}, expected to be allowed")
            elif status != 403:
                results.append(f"{who} {method} {path}: {status}, expected 403")
        # The scoped user (an operator limited to 'shop') asks about 'blog'.
        status = call(env, "scoped", method, path, world, "blog")
        if about_app and allowed("operator", rule) and status != 404:
            results.append(
                f"scoped {method} {path}: {status}, expected 404 for another application"
            )
        elif about_app and not allowed("operator", rule) and status not in (403, 404):
            results.append(f"scoped {method} {path}: {status}, expected 403/404")
        elif not about_app and not allowed("operator", rule) and status != 403:
            results.append(f"scoped {method} {path}: {status}, expected 403")
    assert not results, "\n".join(results)
    deadline = time.monotonic() + 120
    for job in env.client.get("/api/jobs", headers=env.h("admin")).json():
        if job["state"] in ("queued", "running") and time.monotonic() < deadline:
            wait_job(env, job["id"])


def test_event_stream_roles(env: Env) -> None:
    assert env.client.get("/api/events").status_code == 401
    for who in ("viewer", "scoped"):
        with env.client.stream("GET", "/api/events", headers=env.h(who)) as r:
            assert r.status_code == 200
            assert next(r.iter_lines()) == ": connected"
