"""A job meets a repository another process holds (a prune from cron, a second service's
forget): it waits for the lock, saying so in its log, rather than failing at once. Before,
the nightly backup that met the nightly cron prune failed with exit 11 and the day had no
backup."""

from __future__ import annotations

import time
from typing import Any

import pytest

from casbackup.errors import LockError, RepositoryBusy
from casbackup.repo.lock import acquire_waiting
from casbackup.testing.fixtures import make_repo, open_repo
from tests.server.conftest import Env
from tests.server.test_jobs import wait_job


def _log(env: Env, job_id: int) -> list[str]:
    rows = env.client.get(f"/api/jobs/{job_id}/log", headers=env.h("viewer")).json()
    return [r["message"] for r in rows]


def test_a_backup_waits_for_a_prune_of_another_process(env: Env) -> None:
    other = open_repo(env.repo)  # this test's process: a live owner, like a cron prune
    held = other.lock(exclusive=True, command="casbackup prune")
    try:
        r = env.client.post("/api/backup", json={"app_name": "shop"}, headers=env.h("operator"))
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + 120
        while not any("waiting up to 1h for the repository" in m for m in _log(env, job_id)):
            doc = env.client.get(f"/api/jobs/{job_id}", headers=env.h("viewer")).json()
            assert doc["state"] in ("queued", "running"), doc  # it did not give up at once
            assert time.monotonic() < deadline, doc
            time.sleep(0.1)
        assert any("casbackup prune" in m for m in _log(env, job_id))  # says who holds it
    finally:
        held.release()
        other.close()
    doc = wait_job(env, job_id)
    assert doc["state"] == "succeeded" and doc["snapshot_id"], doc


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


def test_waiting_gives_up_after_its_time_and_says_how_long(tmp_path: Any) -> None:
    repo = make_repo(str(tmp_path / "repo"))
    holder = repo.lock(exclusive=True, command="casbackup prune")
    clock, heard = _Clock(), []
    try:
        with pytest.raises(RepositoryBusy, match=r"casbackup prune.*\(waited 1m for it\)"):
            acquire_waiting(repo, exclusive=False, command="backup", wait_s=60,
                            on_wait=heard.append, sleep=clock.sleep,
                            clock=lambda: clock.now)  # fmt: skip
        assert len(heard) == 1 and "casbackup prune" in heard[0]  # told once, not per try
        assert clock.pauses[:4] == [1, 2, 4, 8] and max(clock.pauses) <= 30
        assert sum(clock.pauses) == 60
        # Without a wait, refused at once, as before.
        with pytest.raises(RepositoryBusy):
            repo.lock(command="backup")
    finally:
        holder.release()
    with repo.lock(command="backup", wait_s=60):  # free: taken at once
        pass
    repo.close()


def test_a_lock_that_waiting_cannot_help_is_not_waited_for(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = make_repo(str(tmp_path / "repo"))

    def refuse(self: Any) -> None:
        raise LockError("could not remove the stale lock locks/x: permission denied")

    monkeypatch.setattr("casbackup.repo.lock.Lock.acquire", refuse)
    clock = _Clock()
    with pytest.raises(LockError, match="stale lock"):
        acquire_waiting(repo, exclusive=True, command="prune", wait_s=60, sleep=clock.sleep,
                        clock=lambda: clock.now)  # fmt: skip
    assert clock.pauses == []
    repo.close()


def test_a_job_waiting_for_the_lock_can_be_cancelled(env: Env) -> None:
    import os

    other = open_repo(env.repo)
    held = other.lock(exclusive=True, command="casbackup prune")
    try:
        r = env.client.post("/api/backup", json={"app_name": "shop"}, headers=env.h("operator"))
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + 120
        while not any("waiting up to" in m for m in _log(env, job_id)):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        env.client.post(f"/api/jobs/{job_id}/cancel", headers=env.h("operator"))
        doc = wait_job(env, job_id)
        assert doc["state"] == "cancelled" and doc["exit_code"] == 130, doc
        # The waiting job left no lock of its own behind: only the holder's is there.
        assert os.listdir(os.path.join(env.repo, "locks")) == [str(held.name).split("/")[1]]
    finally:
        held.release()
        other.close()
