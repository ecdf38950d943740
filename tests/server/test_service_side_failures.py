"""A job that fails outside the library's error handling: failed with one line, lock released.

Found by making the service's side of a running backup raise (a line for its job log met a fault
of the service's own, through a test seam): the job was recorded failed at once, and its
worker, killed when the job's thread ended (PR_SET_PDEATHSIG), left its repository lock
behind and its backup half done. Now the service stops the worker as a cancel does and waits
for it. An unexpected exception in the worker itself gets one line in the job as well.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from casbackup.server.app import create_app
from casbackup.server.jobs import JobManager
from casbackup.server.settings import Settings
from casbackup.testing.fixtures import PASSWORD, make_repo
from tests.server.conftest import make_config

# The worker, with its readers' first batch never stored: it waits, holding the lock, until
# a stop (or, before the fix, the service's SIGKILL) ends it.
_STALLING = """
import runpy, time, casbackup.repo.blobstore as b
from casbackup.server.worker import emit
def stall(self, blobs):
    emit({"t": "info", "message": "stalled"})  # the lock is held here
    time.sleep(3600)
b.BlobStore.store_sealed_batch = stall
runpy.run_module("casbackup.server.worker", run_name="__main__")
"""

_RAISING = """
import runpy, casbackup.repo.blobstore as b
def boom(self, blobs):
    raise RuntimeError("boom from the test seam")
b.BlobStore.store_sealed_batch = boom
runpy.run_module("casbackup.server.worker", run_name="__main__")
"""


@contextmanager
def _service(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker: str) -> Iterator[Any]:
    """(client, headers) of a service whose workers run ``worker`` (Python source)."""
    monkeypatch.setenv("CASBACKUP_TEST_REPO_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_repo(str(tmp_path / "repo")).close()
    fake = tmp_path / "worker-python"
    fake.write_text(f"#!{sys.executable}\n{worker}")
    fake.chmod(0o755)
    settings = Settings(
        state_dir=tmp_path / "state", config_path=make_config(tmp_path, str(tmp_path / "repo")),
        cheap_password_hashing=True, run_scheduler=False, job_python=str(fake),
    )  # fmt: skip
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        service.accounts.add_user("op", "password-123", "admin")
        token, _ = service.accounts.create_token("op")
        yield client, {"Authorization": f"Bearer {token}"}


def _backup(client: Any, headers: dict[str, str]) -> dict[str, Any]:
    job = client.post("/api/backup", json={"app_name": "shop"}, headers=headers).json()["job_id"]
    deadline = time.monotonic() + 120  # a hang guard, not a time limit
    while (doc := client.get(f"/api/jobs/{job}", headers=headers).json())["state"] in (
        "queued",
        "running",
    ):
        assert time.monotonic() < deadline, doc
        time.sleep(0.05)
    return doc  # type: ignore[no-any-return]


def test_a_failure_on_the_service_side_stops_the_worker_and_frees_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = JobManager._log

    def failing(self: JobManager, job_id: int, level: str, message: str) -> None:
        if message == "stalled":
            raise sqlite3.InterfaceError("a fault of the service's own")
        real(self, job_id, level, message)

    monkeypatch.setattr(JobManager, "_log", failing)
    with _service(tmp_path, monkeypatch, _STALLING) as (client, headers):
        doc = _backup(client, headers)
    # The worker was stopped and waited for: it released its lock on the way out.
    assert list((tmp_path / "repo" / "locks").iterdir()) == []
    assert doc["state"] == "failed", doc
    assert doc["error"] == (
        "the service failed while running the job: InterfaceError: a fault of the service's own"
    )


def test_an_unexpected_error_in_the_worker_is_one_line_and_frees_the_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _service(tmp_path, monkeypatch, _RAISING) as (client, headers):
        doc = _backup(client, headers)
    assert doc["state"] == "failed" and doc["exit_code"] == 1, doc
    assert doc["error"] == (
        "unexpected error in the job's process: RuntimeError: boom from the test seam"
    )
    assert list((tmp_path / "repo" / "locks").iterdir()) == []
