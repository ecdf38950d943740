"""Months of jobs: finished jobs older than the service's job history (180 days by default)
go from the state database with their log lines; the newest of each kind and application,
an owed notification and unfinished jobs stay. Before, every job and log line was kept for
ever: a backup every 15 minutes is some 35,000 jobs a year."""

from __future__ import annotations

import time

from casbackup.server.history import prune_job_history
from tests.server.conftest import Env
from tests.server.test_jobs import wait_job

DAY = 86400.0


def _job(env: Env, kind: str, app: str | None, state: str, finished: float | None,
         notice: str | None = None) -> int:  # fmt: skip
    db = env.service.db
    cur = db.execute(
        "INSERT INTO jobs (kind, app, repo, params, state, created_at, started_at, finished_at,"
        " notice) VALUES (?,?,?,?,?,?,?,?,?)",
        (kind, app, "default", "{}", state, (finished or time.time()) - 60,
         (finished or time.time()) - 50, finished, notice),
    )  # fmt: skip
    job_id = int(cur.lastrowid or 0)
    for i in range(3):
        db.execute("INSERT INTO job_log (job_id, time, level, message) VALUES (?,?,?,?)",
                   (job_id, time.time(), "info", f"line {i}"))  # fmt: skip
    return job_id


def _exists(env: Env, job_id: int) -> bool:
    r = env.client.get(f"/api/jobs/{job_id}", headers=env.h("admin"))
    assert r.status_code in (200, 404), r.text
    return r.status_code == 200


def test_old_jobs_leave_the_history_when_jobs_end(env: Env) -> None:
    now = time.time()
    old = [_job(env, "backup", "shop", "succeeded", now - 400 * DAY) for _ in range(5)]
    old_failed = _job(env, "backup", "shop", "failed", now - 200 * DAY)
    owed = _job(env, "backup", "blog", "interrupted", now - 300 * DAY, notice="it did not run")
    last_blog = _job(env, "backup", "blog", "failed", now - 250 * DAY)  # its newest: kept
    damaged = _job(env, "check", None, "failed", now - 365 * DAY)  # the last check: kept
    recent = _job(env, "backup", "shop", "succeeded", now - 10 * DAY)
    # A real job's end prunes the history (the test's service started before these rows).
    env.service.jobs._history_pruned = None
    r = env.client.post("/api/backup", json={"app_name": "shop"}, headers=env.h("operator"))
    assert wait_job(env, r.json()["job_id"])["state"] == "succeeded"
    assert not any(_exists(env, j) for j in [*old, old_failed])
    assert all(_exists(env, j) for j in (owed, last_blog, damaged, recent))
    gone = env.service.db.one(
        f"SELECT COUNT(*) FROM job_log WHERE job_id IN ({','.join('?' * 6)})", (*old, old_failed)
    )
    assert gone is not None and gone[0] == 0  # their log lines went with them
    listed = env.client.get("/api/jobs?limit=1000", headers=env.h("admin")).json()
    assert {j["id"] for j in listed}.isdisjoint(old)


def test_the_schedulers_audit_rows_go_with_the_jobs_and_peoples_stay(env: Env) -> None:
    from casbackup.server.audit import AuditEntry, record

    db, now = env.service.db, time.time()
    for kind, actor in (("scheduler", "scheduler"), ("session", "admin"), ("cli", "cli")):
        record(db, AuditEntry(action="x", outcome="success", actor=actor, actor_kind=kind),
               now=now - 400 * DAY)  # fmt: skip
    record(db, AuditEntry(action="y", outcome="success", actor="scheduler",
                          actor_kind="scheduler"), now=now - DAY)  # fmt: skip
    prune_job_history(db, 180 * DAY, now)
    rows = db.query("SELECT actor_kind, action FROM audit WHERE action IN ('x','y') ORDER BY id")
    assert [tuple(r) for r in rows] == [("session", "x"), ("cli", "x"), ("scheduler", "y")]


def test_a_history_of_zero_keeps_everything(env: Env) -> None:
    old = _job(env, "backup", "shop", "succeeded", time.time() - 4000 * DAY)
    _job(env, "backup", "shop", "succeeded", time.time())
    assert prune_job_history(env.service.db, 0, time.time()) == 0
    assert prune_job_history(env.service.db, 180 * DAY, time.time()) == 1
    assert not _exists(env, old)


def test_the_day_strip_shows_failures_behind_thousands_of_backups(env: Env) -> None:
    # A backup every 15 minutes: the strip read the newest 500 backup jobs, five days'
    # worth, and showed a day of failures ten days ago as a day without backups.
    import datetime as dt

    from tests.server.test_dashboard import login

    now = time.time()
    failed_day = dt.datetime.fromtimestamp(now - 10 * DAY, dt.UTC).date().isoformat()
    _job(env, "backup", "shop", "failed", now - 10 * DAY)
    db = env.service.db
    for i in range(600):  # the later runs, succeeded (their rows only)
        t = now - 4 * DAY + i * 60
        db.execute(
            "INSERT INTO jobs (kind, app, repo, params, state, created_at, started_at,"
            " finished_at) VALUES ('backup', 'shop', 'default', '{}', 'succeeded', ?, ?, ?)",
            (t, t, t + 30),
        )
    login(env, "viewer")
    html = env.client.get("/").text
    assert f'title="{failed_day}: failed"' in html


def test_old_jobs_leave_the_history_at_start_up(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from casbackup.server.app import create_app
    from casbackup.server.settings import Settings
    from casbackup.server.statedb import StateDB
    from casbackup.testing.fixtures import PASSWORD, make_repo
    from tests.server.conftest import make_config

    monkeypatch.setenv("CASBACKUP_TEST_REPO_PASSWORD", PASSWORD)
    make_repo(str(tmp_path / "repo")).close()
    settings = Settings(state_dir=tmp_path / "st", config_path=make_config(tmp_path, str(tmp_path / "repo")),
                        cheap_password_hashing=True, run_scheduler=False)  # fmt: skip
    db = StateDB(settings.state_dir)
    for age in (300, 200, 1):  # days
        t = time.time() - age * DAY
        db.execute(
            "INSERT INTO jobs (kind, app, repo, params, state, created_at, started_at,"
            " finished_at) VALUES ('backup', 'shop', 'default', '{}', 'succeeded', ?, ?, ?)",
            (t, t, t + 30),
        )
    db.close()
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        deadline = time.monotonic() + 60
        while len(service.jobs.list()) != 1:
            assert time.monotonic() < deadline, service.jobs.list()
            time.sleep(0.05)


def test_the_jobs_page_pages_back_through_months_of_jobs(env: Env) -> None:
    # The page showed the newest 200 jobs and nothing older (two days of a backup every
    # 15 minutes): a failed job of last week could not be found on the dashboard.
    import re

    from tests.server.test_dashboard import login

    now = time.time()
    ids = [_job(env, "backup", "shop", "failed" if i % 2 else "succeeded", now - (500 - i) * 600)
           for i in range(450)]  # fmt: skip
    login(env, "viewer")
    seen: list[int] = []
    url = "/jobs?state=failed"
    for _ in range(5):
        html = env.client.get(url).text
        seen += [int(i) for i in re.findall(r'data-testid="job-row:(\d+)"', html)]
        link = re.search(r'<a href="([^"]+)" data-testid="jobs-older"', html)
        if link is None:
            break
        url = link.group(1).replace("&amp;", "&")
        assert "state=failed" in url  # the filter goes on
    failed = [j for i, j in enumerate(ids) if i % 2]
    assert seen == sorted(failed, reverse=True)  # every one, newest first, once


def test_a_job_the_clock_went_back_under_has_no_negative_duration(env: Env) -> None:
    # NTP stepped the clock back an hour during a backup: the job "ran for -3590 s".
    now = time.time()
    cur = env.service.db.execute(
        "INSERT INTO jobs (kind, app, repo, params, state, created_at, started_at, finished_at)"
        " VALUES ('backup', 'shop', 'default', '{}', 'succeeded', ?, ?, ?)",
        (now, now, now - 3590),
    )
    doc = env.client.get(f"/api/jobs/{cur.lastrowid}", headers=env.h("viewer")).json()
    assert doc["duration_s"] is None, doc
