"""A backup that the service's stop cut short did not happen, and its notifiers hear so.

On a real serve, systemd stopping the service during the nightly backup left the job
'cancelled' and told nobody: the notifiers heard of failures, and a cancel was not one.
Now the application's notifiers hear ``failure`` during the stop, or at the next start when
no notifier could be reached during the stop (the network already down).
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from casbackup.server.app import create_app
from casbackup.server.settings import Settings
from casbackup.server.statedb import StateDB
from casbackup.testing.fixtures import PASSWORD, make_repo
from tests.server.conftest import make_config


def _settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A service whose workers start, say so in tmp_path/started, and wait to be stopped;
    shop's command notifier writes each failure to tmp_path/events while tmp_path/online
    exists, and fails otherwise (a webhook whose host cannot be reached)."""
    monkeypatch.setenv("CASBACKUP_TEST_REPO_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_repo(str(tmp_path / "repo")).close()
    events = tmp_path / "events"
    events.mkdir()
    started = tmp_path / "started"
    fake = tmp_path / "fake-python"
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys, time\nspec = json.loads(sys.stdin.readline())\n"
        f"open({str(started)!r}, 'a').write('x')\ntime.sleep(120)\n"
    )
    fake.chmod(0o755)
    config = Path(make_config(tmp_path, str(tmp_path / "repo")))
    online = tmp_path / "online"
    command = f"test -e {online} && cat > $(mktemp -p {events})"
    config.write_text(
        config.read_text().replace(
            "[applications.retention]",
            f'[[applications.notify]]\ntype = "command"\ncommand = "sh -c \'{command}\'"\n'
            'on = ["failure"]\n\n[applications.retention]',
        )
    )
    return Settings(state_dir=tmp_path / "st", config_path=str(config), cheap_password_hashing=True,
                    run_scheduler=False, job_python=str(fake))  # fmt: skip


def _start_backups(client: TestClient, tmp_path: Path, count: int) -> list[int]:
    """``count`` backups of shop: the first runs (its worker waits), the others queue."""
    service = client.app.state.service  # type: ignore[attr-defined]
    service.accounts.add_user("op", "password-123", "admin")
    token, _ = service.accounts.create_token("op")
    h = {"Authorization": f"Bearer {token}"}
    jobs = [
        client.post("/api/backup", json={"app_name": "shop"}, headers=h).json()["job_id"]
        for _ in range(count)
    ]
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.02)
    return jobs


def _timeless(message: str | None) -> str | None:
    """A notice without the time of its backup (test_a_notice_says_when...: that time)."""
    return None if message is None else re.sub(r", (started|queued) [^)]*\)", ")", message)


def _told(tmp_path: Path) -> list[tuple[str, str | None]]:
    got = [json.loads(f.read_text()) for f in (tmp_path / "events").iterdir()]
    return sorted((e["event"], _timeless(e["message"])) for e in got)


def _rows(tmp_path: Path) -> list[Any]:
    db = StateDB(tmp_path / "st")
    try:
        return [(r[0], r[1], _timeless(r[2]))
                for r in db.query("SELECT id, state, notice FROM jobs ORDER BY id")]  # fmt: skip
    finally:
        db.close()


CUT = "the service stopped during this backup of shop (job 1): it was cancelled and no snapshot was saved"
NOT_RUN = "the service stopped before this backup of shop started (job 2): it did not run"


def test_backups_the_stop_cut_short_are_notified_during_the_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, monkeypatch)
    (tmp_path / "online").touch()
    with TestClient(create_app(settings)) as client:
        _start_backups(client, tmp_path, 2)
    # Leaving the client stopped the service, as SIGTERM does.
    assert _told(tmp_path) == sorted([("failure", CUT), ("failure", NOT_RUN)])
    assert [(r[1], r[2]) for r in _rows(tmp_path)] == [("cancelled", None), ("interrupted", None)]
    with TestClient(create_app(settings)):  # told once: not again at the next start
        pass
    assert len(_told(tmp_path)) == 2


def test_what_the_stop_could_not_tell_is_told_at_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, monkeypatch)
    with TestClient(create_app(settings)) as client:
        _start_backups(client, tmp_path, 2)
    assert _told(tmp_path) == []  # no notifier reachable during the stop
    assert [r[2] for r in _rows(tmp_path)] == [CUT, NOT_RUN]  # owed
    (tmp_path / "online").touch()
    with TestClient(create_app(settings)) as client:
        for t in client.app.state.service.jobs.notify_threads:  # type: ignore[attr-defined]
            t.join(30)
    assert _told(tmp_path) == sorted([("failure", CUT), ("failure", NOT_RUN)])
    assert [r[2] for r in _rows(tmp_path)] == [None, None]


def test_a_backup_the_user_cancelled_is_not_a_failure_at_the_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path, monkeypatch)
    (tmp_path / "online").touch()
    with TestClient(create_app(settings)) as client:
        (job,) = _start_backups(client, tmp_path, 1)
        client.app.state.service.jobs.cancel(job)  # type: ignore[attr-defined]
    assert _told(tmp_path) == []
    assert [r[1] for r in _rows(tmp_path)] == ["cancelled"]


def test_a_worker_killed_by_systemds_sigterm_is_the_services_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd's SIGTERM reaches a worker still starting (no handler yet): it dies of it
    before the service begins to stop. Not 'failed: ended without a result' but the stop's,
    rerun at the next start and told at once."""
    from casbackup.server.jobs import STOPPED_DURING

    settings = _settings(tmp_path, monkeypatch)
    (tmp_path / "online").touch()
    fake = Path(settings.job_python)
    fake.write_text(
        fake.read_text().replace(
            "time.sleep(120)", "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)"
        )
    )
    with TestClient(create_app(settings)) as client:
        (job,) = _start_backups(client, tmp_path, 1)
        jobs = client.app.state.service.jobs  # type: ignore[attr-defined]
        while (doc := jobs.get(job))["state"] in ("queued", "running"):
            time.sleep(0.05)
        assert doc["state"] == "cancelled" and doc["exit_code"] == 130, doc
        assert doc["error"] == f"{STOPPED_DURING} (stopped by SIGTERM from outside the service)"
        for t in jobs.notify_threads:
            t.join(30)
        assert _told(tmp_path) == [("failure", CUT)]  # at once: the service was not stopping


def test_a_notice_says_when_its_backup_ran_in_the_services_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notice sent at the next start (a power cut at night, the machine back hours later)
    said 'the service stopped before this backup finished (job 1)': which night, it did not
    say. It now says when the backup started (or was queued), in the schedules' zone."""
    from dataclasses import replace

    settings = replace(_settings(tmp_path, monkeypatch), timezone="Europe/Berlin")
    (tmp_path / "online").touch()
    night = 1768008600.0  # 2026-01-10 01:30 UTC: 02:30 in Berlin
    db = StateDB(settings.state_dir)  # what a service killed during the nightly run leaves
    for state, started in (("running", night), ("queued", None)):
        db.execute(
            "INSERT INTO jobs (kind, app, repo, params, state, created_at, started_at, trigger)"
            " VALUES ('backup', 'shop', 'default', '{}', ?, ?, ?, 'scheduler')",
            (state, night, started),
        )
    db.close()
    with TestClient(create_app(settings)) as client:
        for t in client.app.state.service.jobs.notify_threads:  # type: ignore[attr-defined]
            t.join(30)
    assert sorted(m for _e, m in _raw_told(tmp_path)) == [
        "the service stopped before this backup finished (job 1, started 2026-01-10 02:30 CET)",
        "the service stopped before this backup of shop started (job 2, queued 2026-01-10 02:30"
        " CET): it did not run",
    ]


def _raw_told(tmp_path: Path) -> list[tuple[str, str]]:
    got = [json.loads(f.read_text()) for f in (tmp_path / "events").iterdir()]
    return [(e["event"], e["message"]) for e in got]
