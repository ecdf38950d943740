"""Bad input gets a clear 4xx with a one-line JSON detail, never a traceback."""

from __future__ import annotations

from tests.server.conftest import Env


def assert_clean(r, status: int, fragment: str = "") -> None:  # type: ignore[no-untyped-def]
    assert r.status_code == status, (r.status_code, r.text)
    assert "Traceback" not in r.text and 'File "' not in r.text
    body = r.json()
    assert "detail" in body
    if fragment:
        assert fragment in str(body["detail"]), body


def test_malformed_json(env: Env) -> None:
    for raw in (b"{", b"[1,2", b"\xff\xfe", b'{"app_name": 5}', b'"shop"', b"[]"):
        r = env.client.post(
            "/api/backup",
            content=raw,
            headers={**env.h("admin"), "Content-Type": "application/json"},
        )
        assert_clean(r, 422)


def test_unknown_application_everywhere(env: Env) -> None:
    c, h = env.client, env.h("admin")
    assert_clean(c.post("/api/backup", json={"app_name": "ghost"}, headers=h), 404, "ghost")
    assert_clean(c.post("/api/hooks/backup/ghost", headers=h), 404, "ghost")
    assert_clean(c.post("/api/forget", json={"app_name": "ghost"}, headers=h), 404)
    assert_clean(c.post("/api/disaster-recovery", json={"app_name": "ghost"}, headers=h), 404)
    assert_clean(c.get("/api/snapshots/latest?app=ghost", headers=h), 404)
    assert_clean(c.post("/api/check", json={"repository": "nowhere"}, headers=h), 404)


def test_oversized_bodies(env: Env) -> None:
    big = b'{"app_name": "' + b"x" * (2 << 20) + b'"}'
    r = env.client.post(
        "/api/backup", content=big, headers={**env.h("admin"), "Content-Type": "application/json"}
    )
    assert_clean(r, 413, "bytes")

    def chunks():  # no Content-Length: the limit still holds
        for _ in range(40):
            yield b"x" * 65536

    r = env.client.post(
        "/api/backup",
        content=chunks(),
        headers={**env.h("admin"), "Content-Type": "application/json"},
    )
    assert_clean(r, 413)
    r = env.client.post(
        "/api/auth/login", content=big, headers={"Content-Type": "application/json"}
    )
    assert_clean(r, 413)


def test_wrong_types_and_ranges(env: Env) -> None:
    c, h = env.client, env.h("admin")
    assert_clean(c.get("/api/jobs/abc", headers=h), 422)
    assert_clean(c.get("/api/jobs?limit=0", headers=h), 422)
    assert_clean(c.get("/api/jobs/99999999999999999999999", headers=h), 422)
    assert_clean(c.get("/api/snapshots?since=yesterday", headers=h), 422)
    assert_clean(
        c.post("/api/tokens", json={"user": "viewer", "expires": "forever"}, headers=h),
        400,
        "duration",
    )
    assert_clean(c.post("/api/tokens", json={"user": "ghost"}, headers=h), 404)
    assert_clean(
        c.post(
            "/api/users",
            json={"name": "../x", "password": "long-enough", "role": "viewer"},
            headers=h,
        ),
        400,
    )
    assert_clean(
        c.post(
            "/api/users", json={"name": "x", "password": "long-enough", "role": "root"}, headers=h
        ),
        422,
    )
    assert_clean(c.get("/api/snapshots/%00/tree", headers=h), 404)


def test_no_repository_is_a_clear_503(env: Env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CASBACKUP_TEST_REPO_PASSWORD", "not the passphrase")
    handle = env.service.registry.handle("default")
    handle.close()
    r = env.client.get("/api/snapshots", headers=env.h("viewer"))
    assert_clean(r, 503, "wrong passphrase")
    apps = env.client.get("/api/applications", headers=env.h("viewer")).json()
    assert "wrong passphrase" in apps["warnings"][0] and len(apps["applications"]) == 2
