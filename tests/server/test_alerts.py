"""The repository's rollback and tampering alerts through the service (issue 19 follow-up):
a snapshot forgotten through the service that is put back is ignored, and said so in the API,
on the dashboard and in the log (once)."""

from __future__ import annotations

import logging
import os

import pytest

from tests.server.conftest import PW, Env
from tests.server.test_jobs import wait_job
from tests.server.test_snapshots import backup


def _forget_and_put_back(env: Env) -> tuple[str, str]:
    """Two shop snapshots; forget (keep_last 1) drops the older; its file is put back.
    Returns (kept id, rolled-back id)."""
    old = str(backup(env, "shop")["snapshot_id"])
    new = str(backup(env, "shop")["snapshot_id"])
    c = env.client
    assert {s["id"] for s in c.get("/api/snapshots?app=shop", headers=env.h("viewer")).json()} == {
        old,
        new,
    }
    path = os.path.join(env.repo, "snapshots", old)
    with open(path, "rb") as f:
        saved = f.read()
    job = c.post("/api/forget", json={"app_name": "shop", "dry_run": False}, headers=env.h("admin"))
    assert wait_job(env, job.json()["job_id"])["state"] == "succeeded"
    assert not os.path.exists(path)
    # Healthy so far: the forget was this client's own, in another process (the worker).
    status = c.get("/api/system/status", headers=env.h("viewer")).json()
    assert status["repositories"][0]["alerts"] == []
    with open(path, "wb") as f:  # the storage is rolled back
        f.write(saved)
    return new, old


def test_rollback_alert_in_api_dashboard_and_log(
    env: Env, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="casbackup.server")
    kept, back = _forget_and_put_back(env)
    c = env.client
    status = c.get("/api/system/status", headers=env.h("viewer")).json()
    (default,) = [r for r in status["repositories"] if r["key"] == "default"]
    assert any("back in the repository" in a and back[:8] in a for a in default["alerts"]), default
    repos = c.get("/api/repositories", headers=env.h("viewer")).json()
    assert any("back in the repository" in a for a in repos[0]["alerts"])
    # The forgotten snapshot stays ignored: neither listed nor "latest".
    listed = [s["id"] for s in c.get("/api/snapshots?app=shop", headers=env.h("viewer")).json()]
    assert listed == [kept]
    assert c.get("/api/snapshots/latest?app=shop", headers=env.h("viewer")).json()["id"] == kept
    # Logged once, however many calls see it.
    c.get("/api/system/status", headers=env.h("viewer"))
    logged = [r for r in caplog.records if "back in the repository" in r.getMessage()]
    assert len(logged) == 1
    # The dashboard's overview shows it on the repository's card.
    r = c.post("/api/auth/login", json={"username": "viewer", "password": PW})
    assert r.status_code == 200
    html = c.get("/").text
    assert 'data-testid="repo-alert:default"' in html and "back in the repository" in html


def test_scoped_caller_sees_alerts_of_its_repository_only(env: Env) -> None:
    _forget_and_put_back(env)
    status = env.client.get("/api/system/status", headers=env.h("scoped")).json()
    assert any("back in the repository" in a for a in status["repositories"][0]["alerts"])
