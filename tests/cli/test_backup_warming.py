"""`backup --app` and `backup --all` warm what each application's backup reads
(archiver/warm.py): its sources with its excludes, one application ahead, never an
application read from file-system snapshots, and never at the cost of the backup."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from casbackup.archiver import application, warm
from casbackup.cli.main import cli
from casbackup.testing.fixtures import PASSWORD, make_repo
from tests.archiver.test_warm import record_stops_and_walks


def app_block(name: str, src: Path, *lines: str) -> str:
    return "\n".join(["[[applications]]", f'name = "{name}"', f'sources = ["{src}"]', *lines, ""])


def make_site(tmp_path: Path, apps: dict[str, tuple[str, ...]]) -> Path:
    """One source folder per application (``name -> extra config lines``), a repository,
    and the config; returns the config's path."""
    blocks = []
    for name, lines in apps.items():
        src = tmp_path / name
        (src / "keep").mkdir(parents=True)
        (src / "keep" / f"{name}.txt").write_text(f"{name} data\n" * 50)
        (src / "x.tmp").write_text("scratch")
        (src / "x.log").write_text("log")
        blocks.append(app_block(name, src, *lines))
    make_repo(str(tmp_path / "repo")).close()
    cfg = tmp_path / "casbackup.toml"
    cfg.write_text("\n".join(blocks))
    return cfg


def backup(tmp_path: Path, cfg: Path, *args: str) -> Any:
    argv = ["-r", str(tmp_path / "repo"), "--config", str(cfg), "-q", "backup", *args]
    return CliRunner().invoke(cli, argv, env={"CASBACKUP_PASSWORD": PASSWORD})


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """("warm", warmer) when a warmer starts (it does start), ("backup", app) when an
    application's backup starts, in the order they happened."""
    seen: list[tuple[str, Any]] = []
    real_start, real_backup = warm.SourceWarmer.start, application.backup_application

    def start(self: warm.SourceWarmer) -> None:
        seen.append(("warm", self))
        real_start(self)

    def backup_application(repo, options, reporter=None):  # type: ignore[no-untyped-def]
        seen.append(("backup", options.app))
        return real_backup(repo, options, reporter) if reporter else real_backup(repo, options)

    monkeypatch.setattr(warm.SourceWarmer, "start", start)
    monkeypatch.setattr(application, "backup_application", backup_application)
    return seen


def roots(warmer: warm.SourceWarmer) -> list[str]:
    return sorted(os.fsdecode(r) for r in warmer._roots)


@pytest.mark.parametrize("snapshot", [None, "btrfs"])
def test_an_app_backup_warms_its_sources_unless_read_from_fs_snapshots(
    tmp_path: Path, events: list[tuple[str, Any]], snapshot: str | None
) -> None:
    """The nightly `backup --app NAME` warms the application's sources with its excludes,
    as a backup of PATHS does; an application read from file-system snapshots is not
    warmed (the live folders are not what it reads)."""
    lines = (
        ('excludes = ["*.tmp"]', f'snapshot = "{snapshot}"')
        if snapshot
        else ('excludes = ["*.tmp"]',)
    )
    cfg = make_site(tmp_path, {"site": lines})
    result = backup(tmp_path, cfg, "--app", "site", "--exclude", "*.log")
    warmers = [w for kind, w in events if kind == "warm"]
    if snapshot:
        assert warmers == []
        return
    assert result.exit_code == 0, result.output
    (warmer,) = warmers
    assert roots(warmer) == [str(tmp_path / "site")]
    excluded = warmer._excluder.excluded  # type: ignore[union-attr]
    assert excluded(str(tmp_path / "site" / "x.tmp")) and excluded(str(tmp_path / "site" / "x.log"))
    assert not excluded(str(tmp_path / "site" / "keep"))


def test_backup_all_warms_each_application_one_ahead(
    tmp_path: Path, events: list[tuple[str, Any]]
) -> None:
    """The first application's sources are warmed while the repository is opened, each
    next one's when the one before it starts, each with its own excludes; an application
    read from file-system snapshots is skipped (its own backup fails here: no btrfs)."""
    cfg = make_site(tmp_path, {
        "one": ('excludes = ["*.tmp"]',),
        "two": ('snapshot = "btrfs"',),
        "three": ('excludes = ["*.log"]',),
    })  # fmt: skip
    backup(tmp_path, cfg, "--all")
    order = [(kind, roots(x) if kind == "warm" else x) for kind, x in events]
    assert order == [
        ("warm", [str(tmp_path / "one")]),
        ("backup", "one"),
        ("warm", [str(tmp_path / "three")]),  # as "two" starts: "three" is next
        ("backup", "two"),
        ("backup", "three"),
    ]
    one, three = (w._excluder for kind, w in events if kind == "warm")
    assert one.excluded(str(tmp_path / "one" / "x.tmp"))  # type: ignore[union-attr]
    assert not one.excluded(str(tmp_path / "one" / "x.log"))  # type: ignore[union-attr]
    assert three.excluded(str(tmp_path / "three" / "x.log"))  # type: ignore[union-attr]
    assert not three.excluded(str(tmp_path / "three" / "x.tmp"))  # type: ignore[union-attr]


def test_backup_all_with_warming_stores_every_application_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end, warmers really running (the probe never finds the caches warm): every
    application's snapshot holds its files, without what it excludes."""
    monkeypatch.setattr(warm, "WARM_S_PER_ENTRY", 0.0)
    monkeypatch.setattr(warm, "PROBE_ENTRIES", 5)
    apps = {name: ('excludes = ["*.tmp"]',) for name in ("one", "two", "three")}
    cfg = make_site(tmp_path, apps)
    for name in apps:
        for d in range(20):
            sub = tmp_path / name / "tree" / f"d{d}"
            sub.mkdir(parents=True)
            for f in range(10):
                (sub / f"f{f}").write_text(f"{name} {d} {f}\n")
    result = backup(tmp_path, cfg, "--all")
    assert result.exit_code == 0, result.output
    for name in apps:
        target = tmp_path / "restored" / name
        argv = [
            "-r",
            str(tmp_path / "repo"),
            "-q",
            "restore",
            "latest",
            "--app",
            name,
            "-t",
            str(target),
        ]
        restored = CliRunner().invoke(cli, argv, env={"CASBACKUP_PASSWORD": PASSWORD})
        assert restored.exit_code == 0, restored.output
        src = tmp_path / name
        copy = target / str(src).lstrip("/")
        want = {p.relative_to(src): p.read_bytes() for p in src.rglob("*") if p.is_file()}
        del want[Path("x.tmp")]
        got = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*") if p.is_file()}
        assert got == want and len(want) == 202


@pytest.mark.parametrize("args", [["--all"], ["--app", "one"], ["PATH"]])
@pytest.mark.parametrize("where", ["start", "visit", "setup"])
def test_a_warmer_that_fails_never_fails_the_backup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], where: str
) -> None:
    def boom(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("warmer broken")

    if where == "start":
        monkeypatch.setattr(warm.SourceWarmer, "start", boom)
    elif where == "visit":  # in the warmer's threads
        monkeypatch.setattr(warm, "WARM_S_PER_ENTRY", 0.0)
        monkeypatch.setattr(warm.SourceWarmer, "_visit", boom)
    else:
        monkeypatch.setattr(warm, "warmer_for", boom)
    cfg = make_site(tmp_path, {"one": ('excludes = ["*.tmp"]',), "two": ()})
    args = [str(tmp_path / "one") if a == "PATH" else a for a in args]
    result = backup(tmp_path, cfg, *args)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "warmer broken" not in result.output


@pytest.mark.parametrize("how", ["paths", "app"])
def test_a_first_backup_stops_warming_before_its_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A backup that reads every file (no parent snapshot) stops the warmer as soon as it
    knows: its walk stats every entry itself, and warming again costs the CPU it is bound
    by. A backup with a parent keeps the warmer running while it walks."""
    cfg = make_site(tmp_path, {"site": ()})
    seen = record_stops_and_walks(monkeypatch)
    args = ("--app", "site") if how == "app" else (str(tmp_path / "site"),)
    first = backup(tmp_path, cfg, *args)
    assert first.exit_code == 0, first.output
    assert "walk" in seen and seen.index("stop") < seen.index("walk")
    seen.clear()
    again = backup(tmp_path, cfg, *args)
    assert again.exit_code == 0, again.output
    assert "stop" in seen and seen.index("walk") < seen.index("stop")  # at the command's end


def test_backup_all_stops_each_first_backups_own_warmer_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --all, an application's first backup stops its own warmer before its walk
    (as PATHS and --app do), while the next application's warmer goes on; a later run,
    which has parents, keeps each warmer until that application's backup is done."""
    cfg = make_site(tmp_path, {"one": (), "two": ()})
    seen = record_stops_and_walks(monkeypatch, names=True)
    first = backup(tmp_path, cfg, "--all")
    assert first.exit_code == 0, first.output
    walks = [app for kind, app in seen if kind == "walk"]
    assert walks == ["one", "two"]
    for app in walks:  # each app's own warmer stopped before its walk
        assert seen.index(("stop", app)) < seen.index(("walk", app))
    # "two"'s warmer was not stopped by "one"'s first backup: only once "two" itself began.
    assert seen.index(("walk", "one")) < seen.index(("stop", "two"))
    seen.clear()
    again = backup(tmp_path, cfg, "--all")
    assert again.exit_code == 0, again.output
    assert seen.index(("walk", "one")) < seen.index(("stop", "one"))  # kept while it walked
