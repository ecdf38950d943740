"""Partial backups and failed auto-verifies as episodes, through the real service.

Before, the worker told a partial backup's ``warning`` and a failed auto-verify's
``verify_failure`` to the notifiers itself, every run: a nightly backup with one folder
that could not be read sent the same warning every morning, and one whose snapshots
failed verification the same way sent a notice per run (its message names the new
snapshot's id, which the digits-only episode matching would have called news anyway).
Now both are the service's (server/notices.py): a partial backup is told when it leaves
out an entry the last one told did not name, and once a week; a failed auto-verify is a
failure episode of its application.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from casbackup.server.notices import REMIND_PARTIAL_S
from casbackup.testing.fixtures import make_repo
from tests.archiver.faultyfs import faulty_mount
from tests.server.test_failure_episodes import _backup
from tests.server.test_jobs import _events, _notified_app


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[Path]:
    yield from faulty_mount(tmp_path)


def _sources(config: str, *extra: Path) -> None:
    """Give the config's first application ('shop') the ``extra`` sources too."""
    text = Path(config).read_text()
    shop = text.split('sources = ["', 1)[1].split('"', 1)[0]
    listed = ", ".join(f'"{p}"' for p in (shop, *extra))
    Path(config).write_text(text.replace(f'sources = ["{shop}"]', f"sources = [{listed}]", 1))


def test_a_repeating_partial_backup_is_one_episode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_repo(str(tmp_path / "repo")).close()
    settings, app, events = _notified_app(tmp_path, monkeypatch, str(tmp_path / "repo"))
    # A second source on a mount that is not there tonight; a third that is, for now.
    gone, later = tmp_path / "mnt-gone", tmp_path / "mnt-later"
    later.mkdir()
    (later / "x.txt").write_text("x")
    _sources(str(settings.config_path), gone, later)
    with app() as client:
        service = client.app.state.service
        service.accounts.add_user("op", "password-123", "admin")
        h = {"Authorization": f"Bearer {service.accounts.create_token('op')[0]}"}
        runs = [_backup(client, h) for _ in range(3)]
        assert [(d["state"], d["exit_code"]) for d in runs] == [("succeeded", 3)] * 3, runs
        assert any("not told again" in line for line in runs[1]["log"]), runs[1]["log"]
        got = _events(client, events)
        assert [(e["event"], e["warnings"]) for e in got] == [
            ("warning", [f"{gone}: source does not exist"])
        ]
        assert got[0]["snapshot"] == runs[0]["snapshot_id"]
        # The dashboard shows the snapshots as partial.
        page = client.get("/apps/shop", headers=h).text
        assert f'data-testid="snapshot-partial:{runs[0]["snapshot_id"][:8]}"' in page
        snap_page = client.get(f"/snapshots/{runs[0]['snapshot_id']}", headers=h).text
        assert 'data-testid="snapshot-partial"' in snap_page
        assert f"{gone}: source does not exist" in snap_page
        # Another entry left out: news.
        shutil.rmtree(later)
        assert _backup(client, h)["exit_code"] == 3
        assert len(_events(client, events)) == 2
        assert _backup(client, h)["exit_code"] == 3
        assert len(_events(client, events)) == 2
        # A week on, the same: told again once.
        real = service.clock
        service.clock = lambda: real() + REMIND_PARTIAL_S + 60
        _backup(client, h)
        _backup(client, h)
        assert len(_events(client, events)) == 3
        service.clock = real
        # Everything back: the episode ends; the next entry left out is news again.
        gone.mkdir()
        later.mkdir()
        clean = _backup(client, h)
        assert (clean["state"], clean["exit_code"]) == ("succeeded", 0), clean
        page = client.get("/apps/shop", headers=h).text
        assert f"snapshot-partial:{clean['snapshot_id'][:8]}" not in page
        gone.rmdir()
        assert _backup(client, h)["exit_code"] == 3
        got = _events(client, events)
    assert [e["event"] for e in got] == ["warning"] * 4
    assert got[-1]["warnings"] == [f"{gone}: source does not exist"]


def test_a_repeating_auto_verify_failure_is_one_episode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_repo(str(tmp_path / "repo")).close()
    settings, app, events = _notified_app(tmp_path, monkeypatch, str(tmp_path / "repo"))
    config = Path(str(settings.config_path))
    config.write_text(
        config.read_text().replace(
            "[[applications.notify]]",
            '[applications.verification]\nrequired_files = ["never-there.txt"]\n'
            "auto_verify = true\n\n[[applications.notify]]",
            1,
        )
    )
    with app() as client:
        service = client.app.state.service
        service.accounts.add_user("op", "password-123", "admin")
        h = {"Authorization": f"Bearer {service.accounts.create_token('op')[0]}"}
        runs = [_backup(client, h) for _ in range(3)]
        assert [d["state"] for d in runs] == ["failed"] * 3, runs
        assert all("failed verification" in str(d["error"]) for d in runs), runs
        assert any("not told again" in line for line in runs[2]["log"]), runs[2]["log"]
        got: list[dict[str, Any]] = _events(client, events)
    assert [e["event"] for e in got] == ["verify_failure"], got
    assert "never-there.txt" in got[0]["message"] and got[0]["snapshot"]


def test_a_partial_backup_of_a_failing_mount_through_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, faulty: Path
) -> None:
    """The application's second source is a FUSE mount whose entries fail with EIO, one of
    them under a name that is not UTF-8: the job succeeds with exit 3, its log and its
    notice name each entry, and the notice is sent once for the two runs."""
    make_repo(str(tmp_path / "repo")).close()
    settings, app, events = _notified_app(tmp_path, monkeypatch, str(tmp_path / "repo"))
    _sources(str(settings.config_path), faulty)
    with app() as client:
        service = client.app.state.service
        service.accounts.add_user("op", "password-123", "admin")
        h = {"Authorization": f"Bearer {service.accounts.create_token('op')[0]}"}
        runs = [_backup(client, h) for _ in range(2)]
        assert [(d["state"], d["exit_code"]) for d in runs] == [("succeeded", 3)] * 2, [
            (d["error"], d["log"][-3:]) for d in runs
        ]
        assert runs[0]["error"] == "5 files or folders could not be read", runs[0]
        for doc in runs:
            assert any("eio-\\xe9.txt: Input/output error" in line for line in doc["log"]), doc
        # The snapshot records the name as it is; the pages and the API show it.
        sid = runs[0]["snapshot_id"]
        api = client.get("/api/snapshots", params={"app": "shop"}, headers=h)
        assert api.status_code == 200, api.text
        page = client.get("/apps/shop", headers=h)
        assert page.status_code == 200 and f"snapshot-partial:{sid[:8]}" in page.text
        snap_page = client.get(f"/snapshots/{sid}", headers=h)
        assert snap_page.status_code == 200, snap_page.text
        assert "eio-\\xe9.txt: Input/output error" in snap_page.text
        got = _events(client, events)
    assert [e["event"] for e in got] == ["warning"]
    assert len(got[0]["warnings"]) == 5
