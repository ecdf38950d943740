"""Bad input gets a clear 4xx with a one-line JSON detail, never a traceback."""

from __future__ import annotations

import sqlite3

import pytest

from casbackup.errors import NotFound, StorageError
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


def test_an_unknown_field_is_refused_not_ignored(env: Env) -> None:
    """{"repo": "archive", "dry_run": false} queued a real prune of the default repository:
    the misspelt field was dropped. Every body now names what it does not know (422)."""
    h = env.h("admin")
    jobs = len(env.service.jobs.list())
    for path, body, unknown in [
        ("/api/prune", {"repo": "archive", "dry_run": False}, "repo"),
        ("/api/forget", {"app_name": "shop", "dryrun": False}, "dryrun"),
        ("/api/rewrite", {"app_name": "shop", "excludes": ["/x"], "snapshot": "ab"}, "snapshot"),
        ("/api/backup", {"app_name": "shop", "tags": ["x"]}, "tags"),
        ("/api/check", {"read_data_subet": "1/7"}, "read_data_subet"),
        ("/api/users", {"name": "x1", "password": "long-enough", "role": "viewer", "app": "shop"},
         "app"),
        ("/api/tokens", {"user": "viewer", "expiry": "1d"}, "expiry"),
        ("/api/auth/login", {"username": "admin", "password": "password-123", "otp": "1"}, "otp"),
    ]:  # fmt: skip
        r = env.client.post(path, json=body, headers=h)
        assert_clean(r, 422, "Extra inputs are not permitted")
        assert [e["loc"] for e in r.json()["detail"]] == [["body", unknown]], r.text
    assert len(env.service.jobs.list()) == jobs


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


def test_lone_surrogates_in_json_are_a_clean_422(env: Env) -> None:
    """JSON may escape a lone surrogate ("\\udcff"), which is no text: pydantic refuses it, and
    the 422 that echoes the input must still be one clean JSON answer, not a 500 (it failed to
    encode as UTF-8)."""
    c, h = env.client, {**env.h("admin"), "Content-Type": "application/json"}
    for lone in ("\\udcff", "\\ud800"):
        for path, body in (
            ("/api/snapshots/latest/restore", '{"path": "/x-%s"}'),
            ("/api/snapshots/latest/tags", '{"add": ["%s"]}'),
            ("/api/rewrite", '{"app_name": "shop", "excludes": ["/x%s"]}'),
            ("/api/users", '{"name": "%s", "role": "viewer", "password": "long-enough"}'),
            ("/api/tokens", '{"name": "%s", "user": "viewer"}'),
            ("/api/check", '{"read_data_subset": "%s"}'),
            ("/api/auth/login", '{"username": "%s", "password": "long-enough"}'),
        ):
            r = c.post(path, content=body % lone, headers=h)
            if path == "/api/rewrite":  # a real pattern: a name that is not UTF-8
                assert r.status_code == 202, r.text
                shown = {"\\udcff": "/x\\xff", "\\ud800": "/x\\ud800"}[lone]
                assert r.json()["job"]["params"]["excludes"] == [shown]
            elif path.endswith("/tags"):  # pydantic lets it through in a list
                assert_clean(r, 400, "is not usable")
            else:
                assert_clean(r, 422)
                assert "unicode" in r.text, r.text


def test_a_missing_non_utf8_path_is_a_clean_404(env: Env) -> None:
    """The not-found message names the path as stored (bytes that are not UTF-8): the answer
    shows them (as \\xNN) instead of failing to encode (a 500, or a reset connection); so
    does the dashboard's error page."""
    import base64

    from tests.server.test_snapshots import backup

    snap = backup(env, "shop")["snapshot_id"]
    b64 = base64.urlsafe_b64encode(b"/nowhere-\xff\xfe").decode()
    for route in ("tree", "download"):
        r = env.client.get(
            f"/api/snapshots/{snap}/{route}", params={"path_b64": b64}, headers=env.h("operator")
        )
        assert_clean(r, 404, "/nowhere-\\xff\\xfe")
    r = env.client.get(f"/snapshots/{snap}", params={"path_b64": b64}, headers=env.h("viewer"))
    assert r.status_code == 404 and "/nowhere-\\xff\\xfe" in r.text, r.text[-300:]


def test_a_job_id_past_sqlite_integers_is_not_found(env: Env) -> None:
    """The dashboard's job page takes any integer: one past SQLite's range is no job (404),
    not an OverflowError (500)."""
    for job_id in (2**63, 10**30):
        r = env.client.get(f"/jobs/{job_id}", headers=env.h("viewer"))
        assert r.status_code == 404, (r.status_code, r.text[:300])
    with pytest.raises(NotFound):
        env.service.jobs.get(2**63)


def test_a_token_expiry_past_year_9999_is_refused(env: Env) -> None:
    """It was stored, and then the token list, the admin page and `token list` answered 500."""
    h = env.h("admin")
    r = env.client.post(
        "/api/tokens", json={"user": "viewer", "expires": "99999999999d"}, headers=h
    )
    assert_clean(r, 400, "100 years")
    assert env.client.get("/api/tokens", headers=h).status_code == 200
    assert env.client.get("/admin", headers=h).status_code == 200


class _FullDisk:
    """A connection whose writes fail as SQLite's do on a full disk (SQLITE_FULL)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, sql: str, params: object = ()) -> sqlite3.Cursor:
        if sql.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE", "BEGIN"):
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, params)  # type: ignore[arg-type]

    def __getattr__(self, name: str) -> object:
        return getattr(self.conn, name)


def test_a_full_state_disk_is_a_clear_503_and_reads_still_work(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state folder's disk full: every request answered 500 "internal error
    (OperationalError)", reads too (a token's last-use time could not be written), and the
    audit write after each POST logged a traceback. Now reads work, and a write is one 503
    naming the state database."""
    db = env.service.db
    # SQLite's own failure (its page limit fails as a full disk does) becomes StorageError
    db.execute("CREATE TABLE filler (b BLOB)")
    db.execute(f"PRAGMA max_page_count = {db.one('PRAGMA page_count')[0] + 2}")
    with pytest.raises(StorageError, match="state database .* full"):
        for _ in range(100):
            db.execute("INSERT INTO filler VALUES (zeroblob(4000))")
    monkeypatch.setattr(db, "_conn", _FullDisk(db._conn))
    c = env.client
    for who in ("viewer", "operator"):  # a token not used before: its last use is a write
        assert c.get("/api/jobs", headers=env.h(who)).status_code == 200
    r = c.post("/api/backup", json={"app_name": "shop"}, headers=env.h("operator"))
    assert_clean(r, 503, "state database")
    assert "full" in r.json()["detail"]
    r = c.post("/api/auth/login", json={"username": "viewer", "password": "password-123"})
    assert_clean(r, 503, "state database")


def test_a_stored_expiry_past_year_9999_still_lists(env: Env) -> None:
    """A token stored by an older casbackup with an expiry past year 9999 (it took
    99999999999d): the token list, the admin page and `token list` show it instead of
    failing (ValueError: year is out of range), so that it can be found and revoked."""
    from casbackup.testing.fixtures import run_cli

    db = env.service.db
    db.execute("UPDATE tokens SET expires_at = ? WHERE name = 'test'", (8.6e15,))
    h = env.h("admin")
    assert env.client.get("/api/tokens", headers=h).status_code == 200
    assert env.client.get("/admin", headers=h).status_code == 200
    res = run_cli("token", "list", "--state-dir", str(env.settings.state_dir))
    assert res.code == 0, res.err
    assert "@8600000000000000" in res.out, res.out


def test_a_refused_request_naming_a_lone_surrogate_is_still_audited(env: Env) -> None:
    """The audit entry takes the application from the raw body: a "\\udcff" there could not
    be written (UnicodeEncodeError after the answer), so a refused request went unrecorded."""
    before = len(env.client.get("/api/audit?limit=1000", headers=env.h("admin")).json())
    r = env.client.post(
        "/api/backup",
        content='{"app_name": "x\\udcff"}',
        headers={**env.h("viewer"), "Content-Type": "application/json"},
    )
    assert r.status_code == 403, r.text
    entries = env.client.get("/api/audit?limit=1000", headers=env.h("admin")).json()
    assert len(entries) == before + 1
    assert entries[0]["outcome"] == "denied" and entries[0]["app"] == "x\\xff", entries[0]
