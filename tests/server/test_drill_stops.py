"""A restore drill (or a recovery) that a stop cuts short is told, as a failed one is.

On a serve with --verify-schedule, the nightly drill stopped by systemd (the service's stop,
or its SIGTERM reaching the worker first) or by a cancel ended 'cancelled', and the
notifiers heard nothing: a drill that did not finish proves nothing, and the dashboard went
on showing the last pass ('proven restorable') as if the drill had not been due. A recovery
cut short left a partial target and no word either.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from casbackup.server.app import create_app
from tests.server.test_stop_notices import _settings


def _drill_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """test_stop_notices' service (workers that wait to be stopped), whose notifier also
    hears ``verify_failure``."""
    settings = _settings(tmp_path, monkeypatch)
    config = Path(settings.config_path)
    config.write_text(config.read_text().replace('on = ["failure"]',
                                                 'on = ["failure", "verify_failure"]'))  # fmt: skip
    (tmp_path / "online").touch()
    return settings


def _start(client: TestClient, tmp_path: Path, kind: str, **kw: Any) -> int:
    jobs = client.app.state.service.jobs  # type: ignore[attr-defined]
    params = (
        {"snapshot": "latest"}
        if kind == "verify"
        else {"target": str(tmp_path / "recovery" / "shop"), "dry_run": False}
    )
    job = jobs.submit(kind, app="shop", params=params, **kw)["id"]
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.02)
    return int(job)


def _told(tmp_path: Path) -> list[tuple[str, str]]:
    got = [json.loads(f.read_text()) for f in (tmp_path / "events").iterdir()]
    return sorted((e["event"], e["message"]) for e in got)


def _wait(jobs: Any, job: int) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while (doc := jobs.get(job))["state"] in ("queued", "running"):
        assert time.monotonic() < deadline, doc
        time.sleep(0.05)
    for t in jobs.notify_threads:
        t.join(30)
    return doc  # type: ignore[no-any-return]


def test_a_drill_the_services_stop_cut_short_is_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _drill_settings(tmp_path, monkeypatch)
    with TestClient(create_app(settings)) as client:
        _start(client, tmp_path, "verify", created_by="scheduler", trigger="scheduler")
    ((event, message),) = _told(tmp_path)
    assert event == "verify_failure", message
    assert message.startswith("the verification of shop failed: cut short: the service stopped")


def test_a_scheduled_drill_cancelled_is_told_and_a_users_own_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _drill_settings(tmp_path, monkeypatch)
    with TestClient(create_app(settings)) as client:
        jobs = client.app.state.service.jobs  # type: ignore[attr-defined]
        drill = _start(client, tmp_path, "verify", created_by="scheduler", trigger="scheduler")
        jobs.cancel(drill)
        assert _wait(jobs, drill)["state"] == "cancelled"
        assert _told(tmp_path) == [
            (
                "verify_failure",
                "the verification of shop failed: cut short: cancelled before "
                "the job's process was ready",
            )
        ]
        (tmp_path / "started").unlink()
        own = _start(client, tmp_path, "verify", created_by="op")  # started by a person
        jobs.cancel(own)
        assert _wait(jobs, own)["state"] == "cancelled"
        assert len(_told(tmp_path)) == 1  # who cancelled it knows
        # The overview says the last drill did not finish, beside the badge of the last one
        # that did (here none).
        service = client.app.state.service  # type: ignore[attr-defined]
        service.accounts.add_user("root", "password-123", "admin")
        h = {"Authorization": f"Bearer {service.accounts.create_token('root')[0]}"}
        page = client.get("/", headers=h)
        assert page.status_code == 200, page.text
        assert 'data-testid="drill-cut:shop"' in page.text
        assert "the last restore drill was cut short" in page.text
        assert 'data-testid="drill-cut:blog"' not in page.text


def test_a_drill_past_its_maximum_run_time_is_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _drill_settings(tmp_path, monkeypatch)
    with TestClient(create_app(settings)) as client:
        jobs = client.app.state.service.jobs  # type: ignore[attr-defined]
        monkeypatch.setattr("casbackup.server.jobs.max_run_time", lambda *a: (1, "a test"))
        drill = _start(client, tmp_path, "verify", created_by="scheduler", trigger="scheduler")
        assert _wait(jobs, drill)["state"] == "failed"
        ((event, message),) = _told(tmp_path)
    assert event == "verify_failure" and "maximum run time" in message


def test_a_recovery_the_services_stop_cut_short_is_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _drill_settings(tmp_path, monkeypatch)
    with TestClient(create_app(settings)) as client:
        job = _start(client, tmp_path, "recover", created_by="op")
    ((event, message),) = _told(tmp_path)
    assert event == "failure"
    assert message.startswith(f"the service stopped during this recovery of shop (job {job}, ")
    assert "run the same recovery again to finish it" in message
