"""The source warmer (archiver/warm.py) lists and stats what the walk will, and no more."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from casbackup.archiver import warm
from casbackup.archiver.excludes import Excluder
from casbackup.archiver.warm import SourceWarmer, warming


def make_tree(root: Path, folders: int = 6, files: int = 5) -> int:
    """Folders of files (one nested level); the number of entries below ``root``."""
    count = 0
    for d in range(folders):
        sub = root / f"d{d}" / "inner"
        sub.mkdir(parents=True)
        count += 2
        for f in range(files):
            (sub / f"f{f}").write_bytes(b"x")
            (root / f"d{d}" / f"g{f}").write_bytes(b"y")
            count += 2
    (root / "link").symlink_to("d0")  # not followed: a symlink to a folder is an entry
    return count + 1


def finish(warmer: SourceWarmer) -> None:
    """Wait for the warmer's threads to end by themselves, those the probe thread starts
    while it runs included (listed again after each join: a list taken before the probe
    ended missed them, and the test went on while they still counted entries)."""
    deadline = time.monotonic() + 10
    while alive := [t for t in list(warmer._threads) if t.is_alive()]:
        alive[0].join(max(0.0, deadline - time.monotonic()))
        assert time.monotonic() < deadline, "a warmer thread did not end"


@pytest.fixture
def never_warm(monkeypatch: pytest.MonkeyPatch) -> None:
    """A probe that always finds the caches cold (a test tree is always in memory)."""
    monkeypatch.setattr(warm, "WARM_S_PER_ENTRY", 0.0)
    monkeypatch.setattr(warm, "PROBE_ENTRIES", 5)


def test_visits_every_entry_once(tmp_path: Path, never_warm: None) -> None:
    total = make_tree(tmp_path)
    warmer = SourceWarmer([str(tmp_path)], threads=3)
    warmer.start()
    finish(warmer)
    assert warmer.entries == total
    assert not warmer.warm


def test_excluded_folders_are_not_entered(tmp_path: Path, never_warm: None) -> None:
    total = make_tree(tmp_path)
    warmer = SourceWarmer([str(tmp_path)], excluder=Excluder([str(tmp_path / "d1")]))
    warmer.start()
    finish(warmer)
    assert warmer.entries == total - 11  # d1 is listed in its parent, never itself


def test_warm_caches_stop_it_after_the_probe(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(warm, "WARM_S_PER_ENTRY", 1.0)  # anything counts as fast
    monkeypatch.setattr(warm, "PROBE_ENTRIES", 5)
    total = make_tree(tmp_path)
    warmer = SourceWarmer([str(tmp_path)])
    warmer.start()
    finish(warmer)
    assert warmer.warm
    assert len(warmer._threads) == 1  # the others were never started
    assert 5 <= warmer.entries < total


def test_missing_and_unreadable_sources_are_ignored(tmp_path: Path, never_warm: None) -> None:
    (tmp_path / "file").write_bytes(b"z")
    with warming([str(tmp_path / "missing"), str(tmp_path / "file")]) as warmer:
        finish(warmer)
    assert warmer.entries == 0


def test_stop_ends_the_threads(tmp_path: Path, never_warm: None, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    make_tree(tmp_path, folders=30)
    entered, gate = threading.Event(), threading.Event()
    real = warm.SourceWarmer._visit

    def slow(self, folder, device):  # type: ignore[no-untyped-def]
        entered.set()
        gate.wait(5)
        return real(self, folder, device)

    monkeypatch.setattr(warm.SourceWarmer, "_visit", slow)
    with warming([os.fspath(tmp_path)]) as warmer:
        assert entered.wait(5)  # listing the source itself when the block ends
    gate.set()
    finish(warmer)
    assert warmer.entries == 31  # the source's own entries; none of its folders entered


def test_it_stops_after_max_entries(tmp_path: Path, never_warm: None, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(warm, "MAX_ENTRIES", 20)
    total = make_tree(tmp_path, folders=10)
    warmer = SourceWarmer([str(tmp_path)], threads=1)
    warmer.start()
    finish(warmer)
    assert 20 <= warmer.entries < total


def test_warmer_for_leaves_out_what_the_backup_leaves_out(tmp_path: Path) -> None:
    """Its excludes and the database files it dumps through their engine (with SQLite's
    companions), and its one_file_system rule."""
    from casbackup.archiver.backup_options import BackupOptions

    db = str(tmp_path / "app" / "notes.db")
    options = BackupOptions(paths=(str(tmp_path / "app"),), excludes=("*.tmp", "!keep.tmp"),
                            database_files=(db,), one_file_system=True)  # fmt: skip
    warmer = warm.warmer_for(options, max_entries=7)
    assert warmer is not None and warmer._roots == [os.fsencode(tmp_path / "app")]
    excluded = warmer._excluder.excluded  # type: ignore[union-attr]
    assert excluded(str(tmp_path / "app" / "a.tmp")) and not excluded(
        str(tmp_path / "app" / "keep.tmp")
    )
    assert excluded(db) and excluded(db + "-wal") and not excluded(str(tmp_path / "app" / "x"))
    assert warmer._one_file_system and warmer._max_entries == 7


def test_warmer_for_a_backup_read_from_fs_snapshots_is_none(tmp_path: Path) -> None:
    from dataclasses import replace

    from casbackup.archiver.application import source_options
    from casbackup.config.model import AppConfig

    app = AppConfig(name="site", sources=(str(tmp_path),))
    assert warm.warmer_for(source_options(app)) is not None
    assert warm.warmer_for(source_options(replace(app, snapshot="lvm"))) is None
    read_from = replace(source_options(app), read_from=((str(tmp_path), "/snap"),))
    assert warm.warmer_for(read_from) is None


def test_warm_ahead_warms_one_backup_ahead_within_one_budget(
    tmp_path: Path, never_warm: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start: the first backup; begin(k): k's own (kept, or started), k + 1's, and the
    warmers of backups before k stopped. The warmers running share MAX_ENTRIES."""
    from casbackup.archiver.backup_options import BackupOptions

    monkeypatch.setattr(warm, "MAX_ENTRIES", 1000)
    sources = []
    for name in "abcd":
        make_tree(tmp_path / name)
        sources.append(BackupOptions(paths=(str(tmp_path / name),)))
    ahead = warm.WarmAhead([sources[0], None, sources[2], sources[3]])
    ahead.start()
    assert ahead.started == [0]
    first = ahead._warmers[0]
    finish(first)
    ahead.begin(0)  # the next one is not warmed (None)
    assert ahead.started == [0] and list(ahead._warmers) == [0]
    ahead.begin(1)
    assert ahead.started == [0, 2] and list(ahead._warmers) == [2]
    assert first._stopped
    assert ahead._warmers[2]._max_entries == 1000  # the first one's entries no longer count
    finish(ahead._warmers[2])
    ahead.begin(2)
    assert ahead.started == [0, 2, 3]
    assert ahead._warmers[3]._max_entries == 1000 - ahead._warmers[2].entries
    ahead.begin(3)
    assert list(ahead._warmers) == [3]
    ahead.stop()
    assert ahead._warmers == {}


def test_warm_ahead_never_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from casbackup.archiver.backup_options import BackupOptions

    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("no")

    monkeypatch.setattr(warm.SourceWarmer, "start", boom)
    with caplog.at_level("DEBUG", logger="casbackup.archiver.warm"):
        with warm.warming_ahead([BackupOptions(paths=(str(tmp_path),))] * 3) as ahead:
            ahead.begin(0)
            ahead.begin(1)
    assert ahead.started == []
    # Swallowed, but not silently: a debug record with the traceback says why.
    failures = [r for r in caplog.records if r.exc_info and "not warmed" in r.getMessage()]
    assert failures and all(r.levelname == "DEBUG" for r in failures)


def test_a_warmer_thread_that_fails_stops_and_logs_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("visit failed")

    (tmp_path / "d").mkdir()
    monkeypatch.setattr(warm, "WARM_S_PER_ENTRY", 0.0)
    monkeypatch.setattr(warm.SourceWarmer, "_visit", boom)
    with caplog.at_level("DEBUG", logger="casbackup.archiver.warm"):
        warmer = warm.SourceWarmer([str(tmp_path)])
        warmer.start()
        deadline = time.monotonic() + 10
        while any(t.is_alive() for t in warmer._threads) and time.monotonic() < deadline:
            time.sleep(0.01)  # the thread ends on its own once its first visit raised
        warmer.stop()
    assert any(r.exc_info and "stopped early" in r.getMessage() for r in caplog.records)


def test_stop_while_a_thread_is_being_started_never_raises(
    tmp_path: Path, never_warm: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """stop() from the backup's thread while the probe thread is starting the others: a
    thread listed but not started yet made join() raise 'cannot join thread before it is
    started', and `backup --all` failed with exit 1 (seen in CI once a first backup began
    to stop its warmer before its walk)."""
    make_tree(tmp_path / "src")
    in_window = threading.Event()

    class SlowStart(threading.Thread):
        def start(self) -> None:
            in_window.set()  # listed in the warmer's threads, not running yet
            time.sleep(0.3)
            super().start()

    def slow_thread(target, args=(), kwargs=None, *, name=None, daemon=True):  # type: ignore[no-untyped-def]
        return SlowStart(target=target, args=args, kwargs=kwargs, name=name, daemon=daemon)

    monkeypatch.setattr(warm, "quiet_thread", slow_thread)
    warmer = SourceWarmer([str(tmp_path / "src")])
    starter = threading.Thread(target=warmer.start)
    starter.start()
    assert in_window.wait(10)
    warmer.stop()  # raised RuntimeError before
    starter.join(10)
    finish(warmer)


def record_stops_and_walks(monkeypatch: pytest.MonkeyPatch, *, names: bool = False) -> list[Any]:
    """What a backup command does with its warmers, in order: "stop" when a warmer is asked
    to stop, "walk" when a backup's walk starts; with ``names``, ("stop", name of the
    warmer's first source) and ("walk", name of the backup's first path)."""
    from casbackup.archiver.walk import Walker

    seen: list[Any] = []
    real_stop, real_roots = warm.SourceWarmer.stop, Walker._archive_roots

    def stop(self: warm.SourceWarmer, wait_s: float = 0.5) -> None:
        seen.append(("stop", os.path.basename(os.fsdecode(self._roots[0]))) if names else "stop")
        real_stop(self, wait_s)

    def archive_roots(self, *args):  # type: ignore[no-untyped-def]
        seen.append(("walk", os.path.basename(self.options.paths[0])) if names else "walk")
        return real_roots(self, *args)

    monkeypatch.setattr(warm.SourceWarmer, "stop", stop)
    monkeypatch.setattr(Walker, "_archive_roots", archive_roots)
    return seen
