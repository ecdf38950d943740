"""An admin limited to some applications (a scoped admin account, or an unscoped admin's token
created with ``--app``) stays inside them: it manages its applications, but never the accounts,
tokens, audit log, config or whole repositories, through which it could widen its own access."""

from __future__ import annotations

from typing import Any

import pytest

from casbackup.server.auth import SERVICE_WIDE
from tests.server.conftest import Env
from tests.server.test_roles import RULES, call


@pytest.fixture
def scoped_admins(env: Env) -> dict[str, str]:
    accounts = env.service.accounts
    accounts.add_user("shopadmin", "password-123", "admin", ["shop"])
    return {
        "user": accounts.create_token("shopadmin", "t")[0],
        "token": accounts.create_token("admin", "ci", apps=["shop"])[0],
    }


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("kind", ["user", "token"])
def test_a_scoped_admin_cannot_widen_its_own_access(
    env: Env, scoped_admins: dict[str, str], kind: str
) -> None:
    headers = h(scoped_admins[kind])
    attempts: list[tuple[str, str, Any]] = [
        ("POST", "/api/tokens", {"user": "admin", "name": "escape"}),
        ("POST", "/api/users", {"name": "evil", "password": "password-123", "role": "admin"}),
        ("PATCH", "/api/users/shopadmin", {"apps": None}),
        ("PUT", "/api/users/admin/password", {"password": "password-456"}),
        ("DELETE", "/api/users/operator", None),
        ("GET", "/api/users", None),
        ("GET", "/api/tokens", None),
        ("GET", "/api/audit", None),
        ("POST", "/api/config/reload", None),
        ("POST", "/api/prune", {}),
        ("POST", "/api/unlock", {}),
        ("POST", "/api/check", {}),
    ]
    for method, path, body in attempts:
        r = env.client.request(method, path, json=body, headers=headers)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
        assert "limited to some applications" in r.json()["detail"], r.text
    accounts = env.service.accounts
    assert [t.name for t in accounts.tokens("admin")].count("escape") == 0
    assert "evil" not in [u.name for u in accounts.users()]
    assert accounts.user("shopadmin").apps == ("shop",)
    # What an admin may do about its own application still works; another one is not there.
    assert (
        env.client.post("/api/forget", json={"app_name": "shop"}, headers=headers).status_code
        == 202
    )
    r = env.client.post("/api/forget", json={"app_name": "blog"}, headers=headers)
    assert r.status_code == 404


def test_every_service_wide_route_refuses_a_scoped_admin(
    env: Env, scoped_admins: dict[str, str]
) -> None:
    """Enumerated from the role matrix: a new route with a service-wide permission is covered."""
    env.tokens["scoped-admin"] = scoped_admins["token"]
    world = {"shop": {"id": 1, "snapshot_id": "0" * 64}, "tokens": {}}
    wrong = []
    for (method, path), (rule, _) in sorted(RULES.items()):
        if rule in SERVICE_WIDE:
            status = call(env, "scoped-admin", method, path, world, "shop")
            if status != 403:
                wrong.append(f"{method} {path}: {status}")
    assert not wrong, wrong


def test_the_dashboard_offers_a_scoped_admin_no_admin_page(
    env: Env, scoped_admins: dict[str, str]
) -> None:
    r = env.client.post(
        "/api/auth/login", json={"username": "shopadmin", "password": "password-123"}
    )
    assert r.status_code == 200, r.text
    overview = env.client.get("/")
    assert overview.status_code == 200
    assert 'href="/admin"' not in overview.text
    assert 'href="/recovery"' in overview.text  # recovering its own application is allowed
    page = env.client.get("/admin")
    assert page.status_code == 403
    assert "yours is limited to some applications" in page.text
