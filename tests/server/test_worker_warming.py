"""The service's backup jobs (server/worker.py, the scheduled nightly backups too) warm the
application's sources while the worker derives the key and opens the repository, as
`casbackup backup --app` does (archiver/warm.py)."""

from __future__ import annotations

import base64
import io
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from casbackup.archiver import warm
from casbackup.server import worker
from casbackup.testing.fixtures import PASSWORD, make_repo, open_repo
from tests.archiver.test_warm import record_stops_and_walks


def site(tmp_path: Path, *lines: str) -> Path:
    """An application "shop" (its sources, an SQLite database among them), a repository,
    and the config; returns the config's path."""
    src = tmp_path / "shop"
    (src / "keep").mkdir(parents=True)
    (src / "keep" / "a.txt").write_text("a" * 100)
    (src / "x.tmp").write_text("scratch")
    conn = sqlite3.connect(src / "shop.db")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    make_repo(str(tmp_path / "repo")).close()
    cfg = tmp_path / "casbackup.toml"
    cfg.write_text(
        "\n".join([
            "[[applications]]", 'name = "shop"', f'sources = ["{src}"]', 'excludes = ["*.tmp"]',
            *lines, "", "[[applications.databases]]", 'name = "main"', 'engine = "sqlite"',
            f'path = "{src / "shop.db"}"', "",
        ])
    )  # fmt: skip
    return cfg


def run_worker(tmp_path: Path, cfg: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any,
               kind: str = "backup") -> tuple[int, list[dict[str, Any]]]:  # fmt: skip
    """worker.main() in this process (so the warmer can be watched): its exit code and
    the JSON lines it wrote."""
    spec = {"kind": kind, "location": str(tmp_path / "repo"), "config": str(cfg), "app": "shop",
            "password_b64": base64.b64encode(PASSWORD.encode()).decode(), "params": {}}  # fmt: skip
    monkeypatch.setattr(worker, "die_with_parent", lambda: None)  # not this test's process
    monkeypatch.setattr(worker.signal, "signal", lambda *_a: None)
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(spec) + "\n"))
    capsys.readouterr()
    code = worker.main()
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    return code, lines


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[warm.SourceWarmer]:
    """The warmers started (they do run), the probe never finding the caches warm."""
    monkeypatch.setattr(warm, "WARM_S_PER_ENTRY", 0.0)
    monkeypatch.setattr(warm, "PROBE_ENTRIES", 5)
    seen: list[warm.SourceWarmer] = []
    real = warm.SourceWarmer.start

    def start(self: warm.SourceWarmer) -> None:
        seen.append(self)
        real(self)

    monkeypatch.setattr(warm.SourceWarmer, "start", start)
    return seen


def test_a_backup_job_warms_the_apps_sources_with_its_excludes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, started: list[Any]
) -> None:
    """Before the repository is opened, over the sources, leaving out the excludes and the
    database the engine dumps; and the backup it overlapped stored the right files."""
    opened: list[int] = []
    real_open = worker.access.open_repository

    def open_repository(*args: Any) -> Any:
        opened.append(len(started))
        return real_open(*args)

    monkeypatch.setattr(worker.access, "open_repository", open_repository)
    cfg = site(tmp_path)
    code, lines = run_worker(tmp_path, cfg, monkeypatch, capsys)
    assert code == 0 and lines[-1]["t"] == "result", lines
    assert opened == [1]  # the warmer was already running
    (warmer,) = started
    src = tmp_path / "shop"
    assert warmer._roots == [os.fsencode(src)]
    excluded = warmer._excluder.excluded  # type: ignore[union-attr]
    assert excluded(str(src / "x.tmp")) and excluded(str(src / "shop.db"))
    assert excluded(str(src / "shop.db-wal")) and not excluded(str(src / "keep"))
    repo = open_repo(str(tmp_path / "repo"))
    try:
        snap = repo.resolve_snapshot("latest", app="shop")
        assert repo.find_node(snap.root, f"{src}/keep/a.txt") is not None
        with pytest.raises(worker.NotFound):
            repo.find_node(snap.root, f"{src}/x.tmp")
    finally:
        repo.close()


def test_an_app_read_from_fs_snapshots_and_other_jobs_are_not_warmed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, started: list[Any]
) -> None:
    cfg = site(tmp_path, 'snapshot = "btrfs"')
    run_worker(tmp_path, cfg, monkeypatch, capsys)  # fails here (no btrfs): not the point
    assert started == []
    cfg.write_text(cfg.read_text().replace('snapshot = "btrfs"', ""))
    code, lines = run_worker(tmp_path, cfg, monkeypatch, capsys, kind="check")
    assert code == 0 and lines[-1]["t"] == "result", lines
    assert started == []


@pytest.mark.parametrize("where", ["start", "visit", "setup"])
def test_a_warmer_that_fails_never_fails_a_backup_job(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: Any,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    def boom(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("warmer broken")

    if where == "start":
        monkeypatch.setattr(warm.SourceWarmer, "start", boom)
    elif where == "visit":  # in the warmer's threads
        monkeypatch.setattr(warm, "WARM_S_PER_ENTRY", 0.0)
        monkeypatch.setattr(warm.SourceWarmer, "_visit", boom)
    else:
        monkeypatch.setattr(warm, "warming_ahead", boom)
    with caplog.at_level("DEBUG", logger="casbackup"):
        code, lines = run_worker(tmp_path, site(tmp_path), monkeypatch, capsys)
    assert code == 0 and lines[-1]["t"] == "result", lines
    assert not any("warmer broken" in json.dumps(line) for line in lines)
    # Never the job's failure, but a debug record keeps the traceback for whoever looks.
    if where != "visit":  # a thread may not reach its first folder before the job ends
        assert any(
            r.levelname == "DEBUG" and r.exc_info and "warmer broken" in str(r.exc_info[1])
            for r in caplog.records
        )


def test_a_first_backup_job_stops_warming_before_its_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any, started: list[Any]
) -> None:
    """A service job that reads every file (the application's first backup) stops its
    warmer before the walk, as `casbackup backup --app` does; the next job, with a parent,
    keeps it while it walks."""
    seen = record_stops_and_walks(monkeypatch)
    cfg = site(tmp_path)
    for first in (True, False):
        seen.clear()
        code, lines = run_worker(tmp_path, cfg, monkeypatch, capsys)
        assert code == 0 and lines[-1]["t"] == "result", lines
        assert "walk" in seen and "stop" in seen
        assert (seen.index("stop") < seen.index("walk")) is first, seen
