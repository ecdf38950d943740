"""Authentication over HTTP: tokens, sessions with CSRF, proxy header, rate limits, scopes."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from casbackup.server.app import create_app
from casbackup.server.auth import SESSION_COOKIE
from casbackup.server.settings import Settings
from tests.server.conftest import PW, Env


def test_anonymous_is_refused_but_health_answers(env: Env) -> None:
    c = env.client
    assert c.get("/healthz").json()["status"] == "ok"
    r = c.get("/api/applications")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_bearer_token_and_bad_tokens(env: Env) -> None:
    c = env.client
    assert c.get("/api/applications", headers=env.h("viewer")).status_code == 200
    for bad in ("Bearer nope", "Basic abc", "Bearer ", "Bearer cbt_000000000000_" + "A" * 43):
        r = c.get("/api/applications", headers={"Authorization": bad})
        assert r.status_code == 401, bad
        assert "Traceback" not in r.text


def test_revoked_and_expired_tokens_answer_401(env: Env) -> None:
    accounts = env.service.accounts
    text, tok = accounts.create_token("viewer", "short", expires_in_s=0.001)
    r = env.client.get("/api/applications", headers={"Authorization": f"Bearer {text}"})
    assert r.status_code == 401 and "expired" in r.json()["detail"]
    text, tok = accounts.create_token("viewer", "revoke-me")
    h = {"Authorization": f"Bearer {text}"}
    assert env.client.get("/api/applications", headers=h).status_code == 200
    r = env.client.delete(f"/api/tokens/{tok.id}", headers=env.h("admin"))
    assert r.status_code == 200 and r.json()["revoked_at"]
    assert env.client.get("/api/applications", headers=h).status_code == 401


def test_session_cookie_flags_and_csrf(env: Env) -> None:
    c = env.client
    r = c.post("/api/auth/login", json={"username": "admin", "password": PW})
    assert r.status_code == 200, r.text
    csrf = r.json()["csrf_token"]
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert c.get("/api/auth/me").json()["name"] == "admin"
    body = {"name": "dora", "password": "long-enough", "role": "viewer"}
    assert c.post("/api/users", json=body).status_code == 403  # no CSRF token
    assert c.post("/api/users", json=body, headers={"X-CSRF-Token": "wrong"}).status_code == 403
    assert c.post("/api/users", json=body, headers={"X-CSRF-Token": csrf}).status_code == 201
    assert c.post("/api/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    c.cookies.clear()
    assert c.get("/api/auth/me").status_code == 401


def test_logout_ends_the_session_server_side(env: Env) -> None:
    c = env.client
    r = c.post("/api/auth/login", json={"username": "viewer", "password": PW})
    cookie = c.cookies.get(SESSION_COOKIE)
    c.post("/api/auth/logout", headers={"X-CSRF-Token": r.json()["csrf_token"]})
    c.cookies.clear()
    c.cookies.set(SESSION_COOKIE, cookie or "")  # the old cookie presented again
    r = c.get("/api/auth/me")
    assert r.status_code == 401


def test_login_rate_limit_per_user(env: Env) -> None:
    c = env.client
    for _ in range(env.settings.login_max_failures):
        assert (
            c.post(
                "/api/auth/login", json={"username": "viewer", "password": "nope-nope"}
            ).status_code
            == 401
        )
    r = c.post("/api/auth/login", json={"username": "viewer", "password": PW})
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    audit = c.get("/api/audit", headers=env.h("admin")).json()
    logins = [a for a in audit if a["action"] == "login"]
    assert len(logins) == env.settings.login_max_failures + 1
    assert all(a["outcome"] == "denied" and a["actor"] == "viewer" for a in logins)


def test_login_rate_limit_per_address(env: Env) -> None:
    c = env.client
    for i in range(env.settings.login_max_failures):
        c.post("/api/auth/login", json={"username": f"user{i}", "password": "nope-nope"})
    assert c.post("/api/auth/login", json={"username": "admin", "password": PW}).status_code == 429


def test_app_scoped_user_sees_only_its_applications(env: Env) -> None:
    names = [
        a["name"]
        for a in env.client.get("/api/applications", headers=env.h("scoped")).json()["applications"]
    ]
    assert names == ["shop"]
    names = [
        a["name"]
        for a in env.client.get("/api/applications", headers=env.h("viewer")).json()["applications"]
    ]
    assert names == ["shop", "blog"]


def test_apps_empty_list_is_refused_by_the_api(env: Env) -> None:
    """`"apps": []` meant every application (and PATCH to [] widened a scoped user)."""
    c, admin = env.client, env.h("admin")
    tokens = len(env.service.accounts.tokens("viewer"))
    new_user = {"name": "erin", "password": "long-enough", "role": "operator"}
    for method, path, body in [
        ("POST", "/api/users", {**new_user, "apps": []}),
        ("PATCH", "/api/users/scoped", {"apps": []}),
        ("POST", "/api/tokens", {"user": "viewer", "apps": []}),
    ]:
        r = c.request(method, path, json=body, headers=admin)
        assert r.status_code == 422, (path, r.text)
        assert "every application" in r.text
    assert "erin" not in [u["name"] for u in c.get("/api/users", headers=admin).json()]
    assert env.service.accounts.user("scoped").apps == ("shop",)
    assert len(env.service.accounts.tokens("viewer")) == tokens
    # Left out or null: every application, as before; left out of a PATCH: unchanged.
    assert c.post("/api/users", json=new_user, headers=admin).json()["apps"] is None
    assert c.patch("/api/users/scoped", json={"role": "viewer"}, headers=admin).json()["apps"] == [
        "shop"
    ]
    assert c.patch("/api/users/scoped", json={"apps": None}, headers=admin).json()["apps"] is None


def test_trusted_user_header_only_from_the_proxy(env: Env, tmp_path: Path) -> None:
    # Its own state folder: one service per folder (env's app holds its own).
    settings = Settings(
        state_dir=tmp_path / "proxied", config_path=env.config, cheap_password_hashing=True,
        run_scheduler=False, trusted_user_header="Remote-User", trusted_proxies=("10.0.0.1",),
    )  # fmt: skip
    accounts = create_app(settings).state.service.accounts
    for name in ("viewer", "admin"):
        accounts.add_user(name, "password-123", name)
    with TestClient(create_app(settings), client=("10.0.0.1", 5000)) as proxied:
        assert (
            proxied.get("/api/auth/me", headers={"Remote-User": "viewer"}).json()["via"] == "proxy"
        )
        assert proxied.get("/api/auth/me", headers={"Remote-User": "ghost"}).status_code == 401
    with TestClient(create_app(settings), client=("10.0.0.2", 5000)) as direct:
        assert direct.get("/api/auth/me", headers={"Remote-User": "admin"}).status_code == 401


def test_every_state_change_is_audited(env: Env) -> None:
    c = env.client
    c.post(
        "/api/users",
        json={"name": "erin", "password": "long-enough", "role": "viewer"},
        headers=env.h("admin"),
    )
    c.post(
        "/api/users",
        json={"name": "fred", "password": "long-enough", "role": "viewer"},
        headers=env.h("viewer"),
    )
    rows = c.get("/api/audit", headers=env.h("admin")).json()
    adds = [r for r in rows if r["action"] == "add_user"]
    assert {(r["actor"].split(" ")[0], r["outcome"], r["status"]) for r in adds} == {
        ("admin", "success", 201), ("viewer", "denied", 403)}  # fmt: skip
    assert all(r["address"] == "testclient" for r in adds)
    assert "long-enough" not in str(rows)  # no secrets in the log


def test_login_limiter_memory_is_bounded() -> None:
    from casbackup.server.login_limit import LoginLimiter

    now = [0.0]
    limiter = LoginLimiter(5, 300, clock=lambda: now[0])
    limiter.max_keys = 1000
    for i in range(5000):
        limiter.failed("10.0.0.9", f"spray{i}")
    assert len(limiter._failures) <= 1000
    assert limiter.retry_after("10.0.0.9", "admin") > 0  # the sprayer's address stays locked out
    now[0] += 301
    assert limiter.retry_after("10.0.0.9", "admin") == 0


def _login(env: Env, address: str, username: str, password: str) -> int:
    """A login from another client address (a second client on the same app)."""
    client = TestClient(env.client.app, client=(address, 5000))
    return client.post(
        "/api/auth/login", json={"username": username, "password": password}
    ).status_code


def test_bad_passwords_from_elsewhere_do_not_lock_the_owner_out(env: Env) -> None:
    # Five wrong passwords for admin from one address locked the admin out everywhere (429).
    for _ in range(env.settings.login_max_failures):
        assert _login(env, "203.0.113.7", "admin", "guess-guess") == 401
    assert _login(env, "198.51.100.2", "admin", PW) == 200
    assert _login(env, "203.0.113.7", "admin", PW) == 429  # the guesser stays refused


def test_a_name_under_attack_gives_each_client_one_guess(env: Env) -> None:
    for i in range(env.settings.login_max_failures):  # one guess each from many addresses
        assert _login(env, f"203.0.113.{i}", "admin", "guess-guess") == 401
    assert _login(env, "203.0.113.0", "admin", PW) == 429  # has guessed: refused, even right
    assert _login(env, "203.0.113.99", "admin", "guess-guess") == 401  # a new one: one guess
    assert _login(env, "203.0.113.99", "admin", "guess-again") == 429
    assert _login(env, "198.51.100.2", "admin", PW) == 200  # the owner, who never failed
    assert _login(env, "203.0.113.50", "viewer", PW) == 200  # other names are not affected


def test_an_ipv6_client_is_its_64(env: Env) -> None:
    for i in range(env.settings.login_max_failures):
        assert _login(env, f"2001:db8:1:2::{i + 1}", f"user{i}", "guess-guess") == 401
    assert _login(env, "2001:db8:1:2::ffff", "admin", PW) == 429  # same /64: same client
    assert _login(env, "2001:db8:1:3::1", "admin", PW) == 200


def test_a_refused_request_is_audited_with_its_application(env: Env) -> None:
    """Who tried what on which application, also when the role check refused it."""
    c = env.client
    assert (
        c.post("/api/backup", json={"app_name": "shop"}, headers=env.h("viewer")).status_code == 403
    )
    assert (
        c.post("/api/forget", json={"app_name": "blog"}, headers=env.h("operator")).status_code
        == 403
    )
    r = c.post(
        "/api/backup", content=b"{", headers={**env.h("viewer"), "Content-Type": "application/json"}
    )
    assert r.status_code in (403, 422)
    rows = c.get("/api/audit", headers=env.h("admin")).json()
    denied = [
        (r["actor"].split(" ")[0], r["action"], r["app"]) for r in rows if r["outcome"] == "denied"
    ]
    assert ("viewer", "backup", "shop") in denied and ("operator", "forget", "blog") in denied
