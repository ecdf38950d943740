"""Jobs that never end on their own: the maximum run time, and stopping a hung job.

A backup whose database dump waits on a table lock (or whose source is on a dead NFS mount)
used to hold its repository and its application for good: every later scheduled run was
skipped as 'still running', and even a user's cancel did not end it (the SIGINT reached the
worker only, never the dump tool it was waiting for).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from casbackup.server.app import create_app
from casbackup.server.settings import Settings
from casbackup.testing.fixtures import PASSWORD, make_repo, run_cli
from tests.engines.conftest import _unavailable, psql, unique
from tests.server.conftest import make_config


def _client(tmp_path: Path, extra: str = "", **settings: Any) -> TestClient:
    """A service whose 'shop' tells a command notifier of failures (one file per event in
    tmp_path/events); ``extra`` is appended to shop's table in the config."""
    make_repo(str(tmp_path / "repo")).close()
    events = tmp_path / "events"
    events.mkdir(exist_ok=True)
    config = Path(make_config(tmp_path, str(tmp_path / "repo")))
    text = config.read_text().replace(
        "[applications.retention]",
        f'{extra}\n[[applications.notify]]\ntype = "command"\n'
        f'command = "sh -c \'cat > $(mktemp -p {events})\'"\non = ["failure"]\n\n'
        "[applications.retention]",
    )
    config.write_text(text)
    return TestClient(create_app(Settings(
        state_dir=tmp_path / "st", config_path=str(config), cheap_password_hashing=True,
        run_scheduler=False, **settings,
    )))  # fmt: skip


@pytest.fixture
def service_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("CASBACKUP_TEST_REPO_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    yield


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database (tests/engines' fixture, which this folder cannot see)."""
    if not shutil.which("pg_isready") or not shutil.which("pg_dump"):
        _unavailable("PostgreSQL client tools are not installed")
    if subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"], check=False).returncode:
        _unavailable("PostgreSQL is not running at 127.0.0.1")
    name = unique("casb_pg")
    psql(f'CREATE DATABASE "{name}";')
    try:
        yield name
    finally:
        psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE);')


def _headers(client: TestClient) -> dict[str, str]:
    service = client.app.state.service  # type: ignore[attr-defined]
    service.accounts.add_user("op", "password-123", "admin")
    token, _ = service.accounts.create_token("op")
    return {"Authorization": f"Bearer {token}"}


def _wait(client: TestClient, h: dict[str, str], job: int, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (doc := client.get(f"/api/jobs/{job}", headers=h).json())["state"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, f"job {job} still {doc['state']}: {doc}"
        time.sleep(0.1)
    return doc


def _events(client: TestClient, path: Path) -> list[dict[str, Any]]:
    for t in client.app.state.service.jobs.notify_threads:  # type: ignore[attr-defined]
        t.join(30)
    return [json.loads(f.read_text()) for f in path.iterdir()]


def _wait_for(predicate: Any, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _locked_table(database: str) -> subprocess.Popen[bytes]:
    """A session holding an ACCESS EXCLUSIVE lock on table t until it is killed: every
    reader of t (pg_dump, a count) waits for it."""
    psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1);", database)
    holder = subprocess.Popen(
        ["psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", database],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert holder.stdin is not None
    holder.stdin.write(b"BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(600);\n")
    holder.stdin.flush()
    _wait_for(lambda: _lock_held(database), what="the lock was not taken")
    return holder


def _lock_held(database: str) -> bool:
    out = psql(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
        f"WHERE d.datname = '{database}' AND l.mode = 'AccessExclusiveLock' AND l.granted;"
    )
    return out.strip() not in ("", "0")


def _waiting(database: str) -> int:
    """Sessions of this database waiting for a lock (the backup's dump or count)."""
    out = psql(
        "SELECT count(*) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND wait_event_type = 'Lock';"
    )
    return int(out.strip() or 0)


def _pg_app(database: str, max_run_time: str | None) -> str:
    limit = f'max_run_time = "{max_run_time}"\n' if max_run_time else ""
    return (
        f'{limit}\n[[applications.databases]]\nname = "main"\nengine = "postgresql"\n'
        f'host = "127.0.0.1"\nport = 5432\nuser = "postgres"\ndatabase = "{database}"\n'
        "options = { globals = false }\n"
    )


def test_a_backup_hung_on_a_locked_table_is_stopped_at_its_max_run_time(
    tmp_path: Path, service_env: None, pg_database: str
) -> None:
    holder = _locked_table(pg_database)
    try:
        with _client(tmp_path, _pg_app(pg_database, "5s")) as client:
            h = _headers(client)
            job = client.post("/api/backup", json={"app_name": "shop"}, headers=h).json()
            _wait_for(lambda: _waiting(pg_database) > 0, what="the backup never reached the lock")
            doc = _wait(client, h, job["job_id"], timeout=30)
            assert doc["state"] == "failed" and doc["snapshot_id"] is None, doc
            assert doc["error"] == (
                "stopped after running longer than its maximum run time of 5s "
                "(max_run_time of application 'shop')"
            ), doc
            # The application is free again: the scheduler's next run is not skipped.
            assert client.app.state.service.jobs.active_for("backup", "shop") is None  # type: ignore[attr-defined]
            # Its notifiers hear why, once, in the service's words (not the dump tool's
            # "canceling statement due to user request").
            got = _events(client, tmp_path / "events")
            assert [(e["event"], e["message"]) for e in got] == [("failure", doc["error"])]
        # The dump's query waits no more on the server either (the signal reached psql).
        _wait_for(lambda: _waiting(pg_database) == 0, what="the dump still waits on the lock")
    finally:
        holder.kill()
        holder.wait()
    res = run_cli("check", repo=str(tmp_path / "repo"), env={"CASBACKUP_PASSWORD": PASSWORD})
    assert res.code == 0, res.err + res.out


def test_a_cancel_stops_a_backup_hung_on_a_locked_table(
    tmp_path: Path, service_env: None, pg_database: str
) -> None:
    holder = _locked_table(pg_database)
    try:
        with _client(tmp_path, _pg_app(pg_database, None)) as client:
            h = _headers(client)
            job = client.post("/api/backup", json={"app_name": "shop"}, headers=h).json()
            _wait_for(lambda: _waiting(pg_database) > 0, what="the backup never reached the lock")
            assert client.post(f"/api/jobs/{job['job_id']}/cancel", headers=h).status_code == 200
            # Well before CANCEL_GRACE_S: the dump tool heard the cancel as the worker did.
            doc = _wait(client, h, job["job_id"], timeout=15)
            assert doc["state"] == "cancelled" and doc["exit_code"] == 130, str(doc)
            assert "killed" not in doc["error"], doc
            assert _events(client, tmp_path / "events") == []  # the user asked for it
    finally:
        holder.kill()
        holder.wait()


def _fake_worker(tmp_path: Path, script: str) -> str:
    fake = tmp_path / "fake-python"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, signal, subprocess, sys, time\n"
        f"spec = json.loads(sys.stdin.readline())\n{script}\n"
    )
    fake.chmod(0o755)
    return str(fake)


def test_a_job_that_ignores_the_stop_is_killed_with_its_children(
    tmp_path: Path, service_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source on a dead NFS mount: the process cannot be interrupted (here it ignores
    SIGINT), nor can the helper it started. After the maximum run time and the grace
    period both are killed; the job fails with the reason and the repository is free."""
    import casbackup.server.running as running

    monkeypatch.setattr(running, "CANCEL_GRACE_S", 1.0)
    pids = tmp_path / "pids"
    script = (
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "child = subprocess.Popen(['sleep', '600'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "time.sleep(600)"
    )
    fake = _fake_worker(tmp_path, script)
    with _client(tmp_path, job_python=fake, max_run_time_s=2) as client:
        h = _headers(client)
        job = client.post("/api/backup", json={"app_name": "shop"}, headers=h).json()["job_id"]
        queued = client.post("/api/backup", json={"app_name": "blog"}, headers=h).json()["job_id"]
        doc = _wait(client, h, job, timeout=30)
        assert doc["state"] == "failed", doc
        assert doc["error"] == (
            "stopped after running longer than its maximum run time of 2s (casbackup serve "
            "--max-run-time); it did not stop within 1 s and was killed with its child processes"
        ), doc
        for pid in map(int, pids.read_text().split()):
            _wait_for(lambda pid=pid: not _alive(pid), 10, f"process {pid} was not killed")
        # The repository's queue moved on: the job queued behind it ran (and was stopped too).
        assert _wait(client, h, queued, timeout=30)["state"] == "failed"
        got = _events(client, tmp_path / "events")
        assert [(e["event"], e["app"]) for e in got] == [("failure", "shop")]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_restore_has_no_maximum_run_time(tmp_path: Path, service_env: None) -> None:
    from casbackup.server.running import TIMED

    assert "restore" not in TIMED and "recover" not in TIMED
    assert {"backup", "verify", "check", "forget", "prune"} <= TIMED


def test_max_run_time_in_the_config(tmp_path: Path) -> None:
    from casbackup.config import load_config
    from casbackup.errors import ConfigError

    app = '[[applications]]\nname = "shop"\nsources = ["/srv"]\n'
    path = tmp_path / "c.toml"
    for text, seconds in (('"6h"', 21600), ('"1h30m"', 5400), ("90", 90), ('"0"', 0)):
        path.write_text(app + f"max_run_time = {text}\n")
        assert load_config(path).applications[0].max_run_time == seconds
    path.write_text(app)
    assert load_config(path).applications[0].max_run_time is None
    for bad in ('"soon"', "true", '"-1h"'):
        path.write_text(app + f"max_run_time = {bad}\n")
        with pytest.raises(ConfigError, match="max_run_time"):
            load_config(path)


def test_serve_refuses_a_bad_max_run_time(tmp_path: Path) -> None:
    res = run_cli("serve", "--max-run-time", "soon", "--state-dir", str(tmp_path / "st"))
    assert res.code == 2 and "--max-run-time: 'soon' is not a run time" in res.err, res.err


def test_systemds_sigterm_to_the_worker_is_the_services_stop(
    tmp_path: Path, service_env: None, pg_database: str
) -> None:
    """systemd stops a unit by sending SIGTERM to every process in it at once: the worker and
    its dump tool may hear it before the service begins to stop (it waits for open event
    streams first). That was a plain 'cancelled' job (no rerun at the next start) whose
    notifiers heard 'backup interrupted' from the worker; now it is the service's stop."""
    import os
    import signal

    from casbackup.server.jobs import STOPPED_DURING

    holder = _locked_table(pg_database)
    try:
        with _client(tmp_path, _pg_app(pg_database, None)) as client:
            h = _headers(client)
            job = client.post("/api/backup", json={"app_name": "shop"}, headers=h).json()["job_id"]
            _wait_for(lambda: _waiting(pg_database) > 0, what="the backup never reached the lock")
            worker = client.app.state.service.jobs._running[job].proc  # type: ignore[attr-defined]
            os.killpg(worker.pid, signal.SIGTERM)  # the worker and psql, not the service
            doc = _wait(client, h, job, timeout=30)
            assert doc["state"] == "cancelled" and doc["exit_code"] == 130, str(doc)
            assert doc["error"].startswith(STOPPED_DURING), doc
            got = _events(client, tmp_path / "events")
        # (the time it started is test_stop_notices')
        assert [(e["event"], re.sub(r", started [^)]*\)", ")", e["message"])) for e in got] == [(
            "failure",
            f"the service stopped during this backup of shop (job {job}): it was cancelled "
            "and no snapshot was saved",
        )]  # fmt: skip
    finally:
        holder.kill()
        holder.wait()


def test_a_child_that_escaped_the_worker_does_not_hold_its_job(
    tmp_path: Path, service_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process the worker started outside its process group (a plugin's daemon, a tool
    that detaches) keeps the worker's stdout open after the worker was killed: the job's
    thread waited for the end of that output for as long as the child lived, the job stayed
    'running' and its repository's queue and schedule with it."""
    import casbackup.server.running as running

    monkeypatch.setattr(running, "CANCEL_GRACE_S", 1.0)
    escaped = tmp_path / "escaped"
    script = (
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "child = subprocess.Popen(['sleep', '600'], start_new_session=True)\n"  # keeps stdout
        f"open({str(escaped)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(600)"
    )
    fake = _fake_worker(tmp_path, script)
    try:
        with _client(tmp_path, job_python=fake, max_run_time_s=2) as client:
            h = _headers(client)
            job = client.post("/api/backup", json={"app_name": "shop"}, headers=h).json()["job_id"]
            doc = _wait(client, h, job, timeout=30)
            assert doc["state"] == "failed" and "was killed" in doc["error"], doc
    finally:
        import os
        import signal

        if escaped.exists():
            os.kill(int(escaped.read_text()), signal.SIGKILL)
