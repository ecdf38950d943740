"""Retention's calendar days are the schedules' days: the zone the user gave the service.

``casbackup serve --timezone Europe/Berlin`` on a machine in UTC ran the schedules on Berlin's
clock, but the forget job bucketed snapshots by the machine's zone (the C library's local
time): a backup at 00:30 in Berlin counted for the previous day, so keep_daily kept and
removed other snapshots than the days the user sees.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.server.app import create_app
from casbackup.server.settings import Settings
from casbackup.testing.fixtures import PASSWORD, make_repo
from tests.server.conftest import make_config

UTC = dt.UTC
# Three backups around midnight in Berlin (UTC+1 in November):
TIMES = {
    "noon": dt.datetime(2026, 11, 20, 12, 0, tzinfo=UTC),  # Berlin 11-20 13:00
    "after_midnight": dt.datetime(2026, 11, 20, 23, 30, tzinfo=UTC),  # Berlin 11-21 00:30
    "morning": dt.datetime(2026, 11, 21, 10, 0, tzinfo=UTC),  # Berlin 11-21 11:00
}


def _snapshots(tmp_path: Path) -> dict[str, str]:
    """The three snapshots of shop, dated TIMES; name -> id."""
    repo = make_repo(str(tmp_path / "repo"))
    try:
        ids = {}
        for name, when in TIMES.items():
            (tmp_path / "shop" / "a.txt").write_text(name)
            snap = run_backup(
                repo, BackupOptions(paths=(str(tmp_path / "shop"),), app="shop")
            ).snapshot
            assert snap is not None
            ns = int(when.timestamp()) * 1_000_000_000
            ids[name] = repo.save_snapshot(
                replace(snap, time=when.isoformat(), start_ns=ns, id="")
            ).id
            repo.delete_snapshot(snap.id)
        return ids
    finally:
        repo.close()


@pytest.fixture
def machine_in_utc(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _forget_plan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any
) -> dict[str, Any]:
    monkeypatch.setenv("CASBACKUP_TEST_REPO_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    config = Path(make_config(tmp_path, str(tmp_path / "repo")))
    config.write_text(config.read_text().replace("keep_last = 1", "keep_daily = 2"))
    ids = _snapshots(tmp_path)
    with TestClient(create_app(Settings(
        state_dir=tmp_path / "st", config_path=str(config), cheap_password_hashing=True,
        run_scheduler=False, **settings,
    ))) as client:  # fmt: skip
        jobs = client.app.state.service.jobs  # type: ignore[attr-defined]
        job = jobs.submit("forget", app="shop", params={"dry_run": True}, created_by="t")["id"]
        while (doc := jobs.get(job))["state"] in ("queued", "running"):
            time.sleep(0.05)
        assert doc["state"] == "succeeded", doc
    (group,) = doc["result"]["plan"]
    names = {v: k for k, v in ids.items()}
    return {
        "keep": {names[e["id"]]: e["reasons"] for e in group["keep"]},
        "remove": sorted(names[e["id"]] for e in group["remove"]),
    }


def test_forget_in_the_service_counts_days_in_the_services_zone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine_in_utc: None
) -> None:
    plan = _forget_plan(tmp_path, monkeypatch, timezone="Europe/Berlin")
    # Berlin's 11-21 holds two of them (its newest is kept), 11-20 holds one.
    assert plan["remove"] == ["after_midnight"], plan
    assert plan["keep"] == {
        "morning": ["daily snapshot 2026-11-21"],
        "noon": ["daily snapshot 2026-11-20"],
    }


def test_forget_in_the_service_without_a_zone_uses_the_machines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, machine_in_utc: None
) -> None:
    plan = _forget_plan(tmp_path, monkeypatch)
    assert plan["remove"] == ["noon"], plan  # UTC's 11-20 holds noon and 23:30
