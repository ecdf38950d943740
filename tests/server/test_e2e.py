"""End to end against a real `casbackup serve` subprocess on a free port: accounts made with the
CLI, a backup of an application with a SQLite database followed through /api/events, browse and
download, verify, recover dry run; then restarts (kill -9 and SIGTERM) during a running job."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from casbackup.testing.fixtures import PASSWORD, run_cli
from tests.cli.conftest import init_repo


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    token: str
    log: Path

    def h(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path, headers=self.h(), timeout=30, **kw)

    def post(self, path: str, body: Any = None) -> httpx.Response:
        return httpx.post(self.url + path, headers=self.h(), json=body, timeout=30)

    def wait_job(self, job_id: int, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = self.get(f"/api/jobs/{job_id}").json()
            if doc["state"] not in ("queued", "running"):
                return doc
            time.sleep(0.2)
        raise AssertionError(doc)


@pytest.fixture
def site(tmp_path: Path) -> dict[str, Any]:
    """A repository, an app with files and a live SQLite database, a config, an admin + token."""
    repo = init_repo(str(tmp_path / "repo"))
    app = tmp_path / "app"
    (app / "data").mkdir(parents=True)
    (app / "config.ini").write_text("[main]\nname = notes\n")
    big = app / "big"
    big.mkdir()
    db = sqlite3.connect(app / "data" / "notes.sqlite3")
    db.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    db.executemany("INSERT INTO notes (body) VALUES (?)", [(f"note {i}",) for i in range(500)])
    db.commit()
    db.close()
    config = tmp_path / "casbackup.toml"
    config.write_text(f"""
[repository]
location = "{repo}"

[disaster_recovery]
recovery_directory = "{tmp_path / "recovery"}"

[verification]
sandbox_directory = "{tmp_path / "sandbox"}"

[[applications]]
name = "notes"
sources = ["{app}"]
excludes = ["*.sqlite3", "*.sqlite3-wal", "*.sqlite3-shm"]

[[applications.databases]]
name = "main"
engine = "sqlite"
path = "{app / "data" / "notes.sqlite3"}"
""")
    state = tmp_path / "state"
    res = run_cli("user", "add", "root", "--role", "admin", "--password-stdin", "--state-dir",
                  str(state), input=b"root-password\n")  # fmt: skip
    assert res.code == 0, res.err
    res = run_cli("--json", "token", "create", "--user", "root", "--state-dir", str(state))
    assert res.code == 0, res.err
    env = dict(os.environ, CASBACKUP_PASSWORD=PASSWORD, XDG_CACHE_HOME=str(tmp_path / "cache"))
    return {"tmp": tmp_path, "config": str(config), "state": str(state), "app": app,
            "token": json.loads(res.out)["token"], "env": env, "repo": repo}  # fmt: skip


def start(site: dict[str, Any], name: str = "serve") -> Server:
    port = free_port()
    log = site["tmp"] / f"{name}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "casbackup.cli.main", "--config", site["config"], "serve",
         "--listen", f"127.0.0.1:{port}", "--state-dir", site["state"], "--no-scheduler"],
        env=site["env"], stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return Server(proc, url, site["token"], log)
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(log.read_text())


@pytest.fixture
def server(site: dict[str, Any]) -> Iterator[Server]:
    s = start(site)
    yield s
    if s.proc.poll() is None:
        s.proc.send_signal(signal.SIGTERM)
        s.proc.wait(30)


def follow_events(
    server: Server, job_id: int, timeout: float = 120
) -> list[tuple[str, dict[str, Any]]]:
    """Read /api/events until the job's job.finished event; returns (type, data) pairs."""
    seen: list[tuple[str, dict[str, Any]]] = []
    with httpx.stream("GET", server.url + "/api/events", headers={**server.h(), "Last-Event-ID": "0"},
                      timeout=timeout) as r:  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind:
                data = json.loads(line[6:])
                if data.get("id") == job_id:
                    seen.append((kind, data))
                    if kind == "job.finished":
                        return seen
    raise AssertionError(seen)


@pytest.mark.slow
def test_backup_follow_browse_download_verify_recover(site: dict[str, Any], server: Server) -> None:
    r = server.post("/api/backup", {"app_name": "notes", "backup_type": "full"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    events = follow_events(server, job_id)
    kinds = [k for k, _ in events]
    assert kinds[0] == "job.created" and kinds[-1] == "job.finished"
    finished = events[-1][1]
    assert finished["state"] == "succeeded", finished
    snap = finished["snapshot_id"]
    snaps = server.get("/api/snapshots", params={"app": "notes"}).json()
    assert [s["id"] for s in snaps] == [snap]
    detail = server.get(f"/api/snapshots/{snap}").json()
    assert detail["databases"][0]["name"] == "main"
    app = site["app"]
    listing = server.get(f"/api/snapshots/{snap}/tree", params={"path": str(app)}).json()
    assert {"config.ini", "data"} <= {e["name"] for e in listing["entries"]}
    r = server.get(f"/api/snapshots/{snap}/download", params={"path": f"{app}/config.ini"})
    assert r.status_code == 200 and r.content == (app / "config.ini").read_bytes()
    dumps = server.get(f"/api/snapshots/{snap}/tree", params={"path": "/.databases"}).json()[
        "entries"
    ]
    assert dumps and dumps[0]["name"].startswith("main.")
    verify = server.wait_job(server.post(f"/api/snapshots/{snap}/verify").json()["job_id"])
    assert verify["state"] == "succeeded" and verify["result"]["ok"], verify
    rec = server.wait_job(
        server.post("/api/disaster-recovery", {"app_name": "notes"}).json()["job_id"]
    )
    assert rec["state"] == "succeeded", rec
    plan = rec["result"]["plan"]
    assert plan["snapshot"] == snap and plan["verified"] and plan["databases"][0]["name"] == "main"
    assert not (site["tmp"] / "recovery" / "notes").exists()  # a dry run changed nothing
    audit = server.get("/api/audit").json()
    assert {"backup", "verify", "disaster_recovery"} <= {a["action"] for a in audit}


def _grow_sources(site: dict[str, Any], mib: int) -> None:
    big = site["app"] / "big"
    for i in range(mib):
        (big / f"f{i}.bin").write_bytes(os.urandom(1 << 20))


def _backing_up(server: Server, job_id: int, timeout: float = 60) -> list[int]:
    """Wait until the job's worker reports progress, and return the service's worker processes.

    Not merely "running" or "the worker exists": a worker frozen while Python still imports
    has not yet asked to die with the service (PR_SET_PDEATHSIG) nor installed its stop
    handling, so a kill -9 of the service left it stopped forever (seen under load). Its
    first progress line comes after both."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = server.get(f"/api/jobs/{job_id}").json()
        assert doc["state"] in ("queued", "running"), doc
        if doc["progress"] is not None and (workers := _workers_of(server.proc.pid)):
            return workers
        time.sleep(0.02)
    raise AssertionError("the job's worker never reported progress")


def _pending(pid: int, signum: int) -> bool:
    """Whether ``signum`` waits to be delivered to the (stopped) process ``pid``."""
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = f.readlines()
    except FileNotFoundError:
        return False  # a helper that had ended, reaped since
    for line in lines:
        if line.startswith(("SigPnd:", "ShdPnd:")) and int(line.split()[1], 16) >> (signum - 1) & 1:
            return True
    return False


def _workers_of(service_pid: int) -> list[int]:
    """Live worker processes started by this service (found by the variable it gives them)."""
    mark = f"CASBACKUP_SERVICE_PID={service_pid}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


@pytest.mark.slow
def test_kill_during_a_job_marks_it_interrupted_and_the_repository_checks(
    site: dict[str, Any],
) -> None:
    _grow_sources(site, 150)
    server = start(site, "first")
    job_id = server.post("/api/backup", {"app_name": "notes"}).json()["job_id"]
    workers = _backing_up(server, job_id)
    # Freeze it mid-backup: the kill must land before the backup could finish, however fast
    # the machine.
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    assert server.get(f"/api/jobs/{job_id}").json()["state"] == "running"
    server.proc.kill()  # no chance to clean up: the worker dies with it (PDEATHSIG)
    server.proc.wait(10)
    deadline = time.monotonic() + 10
    while left := _workers_of(server.proc.pid):
        if time.monotonic() > deadline:
            for pid in left:  # not left behind, stopped, for the rest of the suite
                os.kill(pid, signal.SIGKILL)
            raise AssertionError(f"workers {left} outlived the killed service")
        time.sleep(0.1)
    again = start(site, "second")
    try:
        doc = again.get(f"/api/jobs/{job_id}").json()
        assert doc["state"] == "interrupted" and "stopped" in doc["error"], doc
        res = run_cli("unlock", repo=site["repo"], env=site["env"])  # the dead worker's lock
        assert res.code == 0, res.err
        res = run_cli("check", "--read-data", repo=site["repo"], env=site["env"])
        assert res.code == 0, res.err + res.out
        after = again.wait_job(again.post("/api/backup", {"app_name": "notes"}).json()["job_id"])
        assert after["state"] == "succeeded", after
    finally:
        again.proc.send_signal(signal.SIGTERM)
        again.proc.wait(30)


@pytest.mark.slow
def test_sigterm_cancels_running_jobs_and_records_it(site: dict[str, Any]) -> None:
    _grow_sources(site, 150)
    server = start(site, "term")
    job_id = server.post("/api/backup", {"app_name": "notes"}).json()["job_id"]
    workers = _backing_up(server, job_id)
    # Freeze the worker so the backup cannot finish before the stop reaches it (on an idle
    # machine 150 MiB took less than the old fixed 0.5 s wait): the service's SIGINT to it
    # stays pending until it is continued, then cancels the backup.
    for pid in workers:
        os.kill(pid, signal.SIGSTOP)
    assert server.get(f"/api/jobs/{job_id}").json()["state"] == "running"
    server.proc.send_signal(signal.SIGTERM)
    # The service asks its workers to stop (SIGINT), then waits for them: continued before
    # that SIGINT (a fixed 0.5 s wait under load), the backup may finish as "succeeded".
    deadline = time.monotonic() + 60  # a hang guard
    # (one SIGINT to the worker's group: pending in the worker; its helpers may ignore it)
    while not any(_pending(pid, signal.SIGINT) for pid in workers):
        assert time.monotonic() < deadline, "the service never asked its workers to stop"
        time.sleep(0.02)
    for pid in workers:
        os.kill(pid, signal.SIGCONT)
    # uvicorn re-raises SIGTERM after its graceful shutdown (systemd counts that as a clean stop)
    assert server.proc.wait(60) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log.read_text()
    again = start(site, "after-term")
    try:
        doc = again.get(f"/api/jobs/{job_id}").json()
        assert doc["state"] == "cancelled" and doc["exit_code"] == 130, doc
        res = run_cli("check", repo=site["repo"], env=site["env"])
        assert res.code == 0, res.err + res.out
    finally:
        again.proc.send_signal(signal.SIGTERM)
        again.proc.wait(30)


def _self_signed(tmp: Path) -> tuple[str, str]:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))  # fmt: skip
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return str(cert_path), str(key_path)


def _serve(site: dict[str, Any], *extra: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    log = site["tmp"] / f"serve-{port}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "casbackup.cli.main", "--config", site["config"], "serve", "--listen",
         f"0.0.0.0:{port}", "--state-dir", site["state"], "--no-scheduler", *extra],
        env=site["env"], stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    return proc, port, log


def _wait_up(url: str, proc: subprocess.Popen[bytes], log: Path) -> httpx.Response:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return httpx.get(url + "/healthz", timeout=1, verify=False)
        except httpx.HTTPError:
            time.sleep(0.1)
    raise AssertionError(log.read_text())


@pytest.mark.slow
def test_tls_on_a_public_address_and_the_insecure_http_warning(site: dict[str, Any]) -> None:
    cert, key = _self_signed(site["tmp"])
    proc, port, log = _serve(site, "--tls-cert", cert, "--tls-key", key)
    try:
        r = _wait_up(f"https://127.0.0.1:{port}", proc, log)
        assert r.status_code == 200
        login = httpx.post(f"https://127.0.0.1:{port}/api/auth/login", verify=False,
                           json={"username": "root", "password": "root-password"})  # fmt: skip
        assert login.status_code == 200 and "secure" in login.headers["set-cookie"].lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    proc, port, log = _serve(site, "--insecure-http")
    try:
        assert _wait_up(f"http://127.0.0.1:{port}", proc, log).status_code == 200
        assert "warning: serving plain HTTP" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
