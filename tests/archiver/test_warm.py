"""The source warmer (archiver/warm.py) lists and stats what the walk will, and no more."""

from __future__ import annotations

import os
import threading
from pathlib import Path

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
    """Wait for the warmer's threads to end by themselves."""
    for thread in list(warmer._threads):
        thread.join(10)
        assert not thread.is_alive()


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


def _config(tmp_path: Path, app_lines: str) -> Path:
    cfg = tmp_path / "casbackup.toml"
    cfg.write_text(f'[[applications]]\nname = "site"\n{app_lines}\n')
    return cfg


@pytest.mark.parametrize("snapshot", [None, "btrfs"])
def test_an_app_backup_warms_its_sources_unless_read_from_fs_snapshots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, snapshot: str | None
) -> None:
    """The nightly `backup --app NAME` warms the application's sources with its excludes,
    as a backup of PATHS does; an application read from file-system snapshots is not
    warmed (the live folders are not what it reads)."""
    import contextlib

    from click.testing import CliRunner

    from casbackup.cli import cmd_backup
    from casbackup.cli.main import cli
    from casbackup.testing.fixtures import PASSWORD, make_repo

    src = tmp_path / "src"
    (src / "keep").mkdir(parents=True)
    (src / "keep" / "a.txt").write_text("a")
    make_repo(str(tmp_path / "repo")).close()
    lines = f'sources = ["{src}"]\nexcludes = ["*.tmp"]'
    if snapshot:
        lines += f'\nsnapshot = "{snapshot}"'
    cfg = _config(tmp_path, lines)
    seen: list[tuple[tuple[str, ...], object]] = []

    def recording(paths, *, excluder=None, one_file_system=False):  # type: ignore[no-untyped-def]
        seen.append((tuple(paths), excluder))
        return contextlib.nullcontext()

    monkeypatch.setattr(cmd_backup, "warming", recording)
    monkeypatch.setenv("CASBACKUP_PASSWORD", PASSWORD)
    args = ["-r", str(tmp_path / "repo"), "--config", str(cfg), "-q", "backup", "--app", "site"]
    result = CliRunner().invoke(cli, args)
    if snapshot:
        assert seen == []
        return
    assert result.exit_code == 0, result.output
    ((paths, excluder),) = seen
    assert paths == (str(src),)
    assert excluder.excluded(str(src / "x.tmp")) and not excluder.excluded(str(src / "keep"))  # type: ignore[attr-defined]
