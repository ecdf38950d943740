"""Two configured locations of one repository are one repository to the service.

An application's own ``[applications.repository]`` that named the default repository again
(through a symlink, with ``./`` or a trailing slash) had its own job queue: on a real serve a
prune started beside a running backup and failed with 'repository is locked' (exit 11), and
the service held the repository open twice.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from casbackup.access import canonical_location
from casbackup.server.app import create_app
from casbackup.server.settings import Settings
from casbackup.testing.fixtures import PASSWORD, make_repo
from tests.server.conftest import make_config


def _client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blog_repo: str) -> TestClient:
    """A service whose workers note their kind in tmp_path/started and wait for tmp_path/go;
    blog's own repository is ``blog_repo``."""
    monkeypatch.setenv("CASBACKUP_TEST_REPO_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "started").mkdir()
    fake = tmp_path / "fake-python"
    fake.write_text(
        f"#!{sys.executable}\nimport json, os, sys, time\n"
        "spec = json.loads(sys.stdin.readline())\n"
        f"open(os.path.join({str(tmp_path / 'started')!r}, spec['kind']), 'w').close()\n"
        f"while not os.path.exists({str(tmp_path / 'go')!r}):\n    time.sleep(0.02)\n"
        'print(json.dumps({"t": "result", "result": {}}))\n'
    )
    fake.chmod(0o755)
    config = Path(make_config(tmp_path, str(tmp_path / "repo")))
    config.write_text(
        config.read_text() + f'\n[applications.repository]\nlocation = "{blog_repo}"\n'
    )
    return TestClient(create_app(Settings(
        state_dir=tmp_path / "st", config_path=str(config), cheap_password_hashing=True,
        run_scheduler=False, job_python=str(fake),
    )))  # fmt: skip


def _prune_waits_for_the_backup(client: TestClient, tmp_path: Path) -> None:
    jobs = client.app.state.service.jobs  # type: ignore[attr-defined]
    backup = jobs.submit("backup", app="shop", params={}, created_by="t")
    deadline = time.monotonic() + 60
    while not (tmp_path / "started" / "backup").exists():
        assert time.monotonic() < deadline, "the backup never started"
        time.sleep(0.02)
    prune = jobs.submit("prune", app=None, repo_key="app:blog", params={}, created_by="t")
    time.sleep(1.0)  # time enough for the prune's worker to start, were it let
    assert jobs.get(prune["id"])["state"] == "queued"
    assert not (tmp_path / "started" / "prune").exists()
    (tmp_path / "go").touch()
    for job in (backup, prune):
        while jobs.get(job["id"])["state"] in ("queued", "running"):
            assert time.monotonic() < deadline + 60
            time.sleep(0.05)
        assert jobs.get(job["id"])["state"] == "succeeded"


@pytest.mark.parametrize("spelling", ["link/", "./repo", "repo/"])
def test_a_second_spelling_of_the_default_repository_shares_its_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spelling: str
) -> None:
    make_repo(str(tmp_path / "repo")).close()
    (tmp_path / "link").symlink_to(tmp_path / "repo")
    with _client(tmp_path, monkeypatch, f"{tmp_path}/{spelling}") as client:
        registry = client.app.state.service.registry  # type: ignore[attr-defined]
        assert list(registry.handles) == ["default"]  # opened once
        assert registry.repo_key_for("blog") == "default"
        assert registry.handle("app:blog") is registry.handle("default")  # the old key works
        _prune_waits_for_the_backup(client, tmp_path)


def test_two_places_of_one_repository_share_a_queue_by_its_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What no spelling shows (two mounts of one export; here a copy, which has the same id
    and is serialised with it, needlessly but safely) is told by the repository's id."""
    make_repo(str(tmp_path / "repo")).close()
    shutil.copytree(tmp_path / "repo", tmp_path / "mirror")
    with _client(tmp_path, monkeypatch, str(tmp_path / "mirror")) as client:
        registry = client.app.state.service.registry  # type: ignore[attr-defined]
        assert sorted(registry.handles) == ["app:blog", "default"]
        assert registry.handle("app:blog").identity() == registry.handle("default").identity()
        _prune_waits_for_the_backup(client, tmp_path)


def test_an_unreadable_repository_is_known_by_its_place(tmp_path: Path) -> None:
    from casbackup.access import PasswordSource
    from casbackup.server.repos import RepoHandle

    handle = RepoHandle("default", str(tmp_path / "not-mounted") + "/", PasswordSource())
    assert handle.identity() == f"at:{tmp_path / 'not-mounted'}"
    make_repo(str(tmp_path / "not-mounted")).close()  # mounted now: its id from here on
    assert handle.identity().startswith("id:")


def test_canonical_s3_locations() -> None:
    same = [
        "s3:HOST.example/bkt/p/",
        "s3:https://host.example:443/bkt/p",
        "s3:https://host.example/bkt/p",
    ]
    assert {canonical_location(s) for s in same} == {"s3:https://host.example/bkt/p"}
    assert canonical_location("s3:http://h:80/bkt/") == "s3:http://h/bkt"
    assert canonical_location("s3:http://h:8333/bkt") == "s3:http://h:8333/bkt"
    assert canonical_location("s3:http://h/bkt/a") != canonical_location("s3:http://h/bkt/b")


def test_a_hanging_storage_does_not_freeze_who_asks_what_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A storage that does not answer (a hard NFS mount gone away, a stalled connection) held
    the scheduler's thread and every API request that queues a job in ``identity()`` for as
    long as it hung: each waits at most IDENTITY_WAIT now, and one read at a time is made."""
    import threading

    from casbackup import access
    from casbackup.access import PasswordSource
    from casbackup.server import repos
    from casbackup.server.repos import RepoHandle

    location = str(tmp_path / "repo")
    make_repo(location).close()
    release = threading.Event()
    opened: list[str] = []
    real_open = access.open_backend

    class Hanging:
        def __init__(self, inner: object) -> None:
            self.inner = inner

        def get(self, name: str) -> bytes:
            release.wait(30)
            return self.inner.get(name)  # type: ignore[attr-defined]

        def close(self) -> None:
            self.inner.close()  # type: ignore[attr-defined]

    def hanging_open(loc: str | None, s3: object = None) -> Hanging:
        opened.append(str(loc))
        return Hanging(real_open(loc, s3))  # type: ignore[arg-type]

    monkeypatch.setattr(access, "open_backend", hanging_open)
    monkeypatch.setattr(repos, "IDENTITY_WAIT", 0.3, raising=False)
    handle = RepoHandle("default", location, PasswordSource())
    started = time.monotonic()
    assert handle.identity() == f"at:{canonical_location(location)}"
    assert handle.identity() == f"at:{canonical_location(location)}"
    assert time.monotonic() - started < 30  # a hang guard: the open hangs until released
    assert len(opened) == 1  # the second call waited on the read already under way
    release.set()
    deadline = time.monotonic() + 10
    while not handle.identity().startswith("id:") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert handle.identity().startswith("id:")
