"""Failures that repeat: a backup that keeps failing the same way (its source gone for a
weekend, every 15 minutes) is one piece of news, not one per run. Before, each failed run
sent ``failure`` and each overdue run ``overdue``: a real serve with a one-minute schedule
and a missing password variable told its command notifier twice a minute."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from casbackup.server.notices import REMIND_S
from casbackup.testing.fixtures import make_repo
from tests.server.conftest import run_job
from tests.server.test_jobs import _events, _notified_app
from tests.server.test_scheduler import make, utc


def _backup(client: Any, h: dict[str, str]) -> dict[str, Any]:
    doc = run_job(client, h, "/api/backup", {"app_name": "shop"})
    doc["log"] = [r["message"] for r in client.get(f"/api/jobs/{doc['id']}/log", headers=h).json()]
    return doc


def test_a_backup_failing_the_same_way_is_told_once_per_episode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_repo(str(tmp_path / "repo")).close()
    settings, app, events = _notified_app(tmp_path, monkeypatch, str(tmp_path / "repo"))
    shutil.copytree(tmp_path / "shop", tmp_path / "shop.saved")
    shutil.rmtree(tmp_path / "shop")  # the application's only source is gone
    with app() as client:
        service = client.app.state.service
        service.accounts.add_user("op", "password-123", "admin")
        h = {"Authorization": f"Bearer {service.accounts.create_token('op')[0]}"}
        first, second, third = (_backup(client, h) for _ in range(3))
        assert [d["state"] for d in (first, second, third)] == ["failed"] * 3
        assert any("not told again" in line for line in second["log"]), second["log"]
        assert len(_events(client, events)) == 1  # not one per run
        # A day later it is told again, once.
        real = service.clock
        service.clock = lambda: real() + REMIND_S + 60
        _backup(client, h)
        _backup(client, h)
        assert len(_events(client, events)) == 2
        service.clock = real
        # The source is back: the episode is over; the next failure is news again.
        shutil.copytree(tmp_path / "shop.saved", tmp_path / "shop")
        assert _backup(client, h)["state"] == "succeeded"
        shutil.rmtree(tmp_path / "shop")
        assert _backup(client, h)["state"] == "failed"
        got = _events(client, events)
    assert [(e["event"], e["app"]) for e in got] == [("failure", "shop")] * 3


def test_a_failure_of_another_kind_is_news(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_repo(str(tmp_path / "repo")).close()
    settings, app, events = _notified_app(tmp_path, monkeypatch, str(tmp_path / "repo"))
    shutil.rmtree(tmp_path / "shop")
    with app() as client:
        service = client.app.state.service
        service.accounts.add_user("op", "password-123", "admin")
        h = {"Authorization": f"Bearer {service.accounts.create_token('op')[0]}"}
        assert _backup(client, h)["state"] == "failed"
        shutil.move(tmp_path / "repo", tmp_path / "repo.gone")  # now the disk is not mounted
        assert "no repository" in str(_backup(client, h)["error"])
        got = _events(client, events)
    assert len(got) == 2 and "no repository" in got[1]["message"]


def test_overdue_runs_in_a_row_are_one_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = tmp_path / "events"
    events.mkdir()
    s, _ = make(tmp_path, monkeypatch, {"shop": "0 * * * *"})
    config = Path(s.service.settings.config_path or "")
    config.write_text(
        config.read_text().replace(
            "[applications.retention]",
            f'[[applications.notify]]\ntype = "command"\ncommand = "sh -c \'cat > '
            f'$(mktemp -p {events})\'"\non = ["overdue"]\n\n[applications.retention]',
        )
    )
    s.service.registry = type(s.service.registry)(s.service.settings)
    s.reload()

    def told(now: dt.datetime) -> int:
        s.tick(now)
        for t in s.notify_threads:
            t.join(30)
        return len(list(events.iterdir()))

    s.tick(utc(2026, 3, 2, 10, 0, 30))
    for hour in range(11, 17):  # fires every hour; nothing ever succeeds
        assert told(utc(2026, 3, 2, hour, 0, 10)) == (0 if hour == 11 else 1)
    assert len(s.overdue) == 5  # each in the log
    # The service was down overnight; the report was 23 hours ago: not yet again.
    assert told(utc(2026, 3, 3, 11, 0, 10)) == 1
    assert told(utc(2026, 3, 3, 12, 0, 20)) == 2  # a day on, still overdue: told again
    # The run fired at 12:00 succeeds: a run overdue after it is news again.
    s.service.db.execute(
        "INSERT INTO jobs (kind, app, repo, params, state, created_at, finished_at)"
        " VALUES ('backup', 'shop', 'default', '{}', 'succeeded', ?, ?)",
        (utc(2026, 3, 3, 12, 1).timestamp(), utc(2026, 3, 3, 12, 2).timestamp()),
    )
    assert told(utc(2026, 3, 3, 13, 0, 10)) == 2  # the 12:00 run was on time
    assert told(utc(2026, 3, 3, 14, 0, 10)) == 3  # the 13:00 run was not
    messages = sorted(json.loads(f.read_text())["message"] for f in events.iterdir())
    assert all("has not succeeded" in m for m in messages)


def test_a_password_variable_gone_fails_the_job_in_one_line(
    env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen on a real serve started without the variable: every scheduled run failed with
    # "UsageError: the config's repository.password_env names ..." and no exit code.
    monkeypatch.delenv("CASBACKUP_TEST_REPO_PASSWORD")
    doc = run_job(env.client, env.h("operator"), "/api/backup", {"app_name": "shop"})
    assert doc["state"] == "failed", doc
    assert str(doc["error"]).startswith("the config's repository.password_env"), doc
    assert doc["exit_code"] == 2, doc
