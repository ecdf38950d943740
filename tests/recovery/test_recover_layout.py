"""Where recover puts an application's sources: one rule for one source and for several.

An application whose sources have different parents (/etc/myapp, /var/lib/myapp,
/srv/myapp/uploads) came back as TARGET/<basename>, except that two sources with one
basename became TARGET/etc_myapp and TARGET/var_lib_myapp; `--target /` put them at
/etc_myapp and /uploads, so there was no way to put a machine's application back in place.
Now each source goes to TARGET/<its path>, and --in-place (the target /) puts each source the
config lists back at its path; the plan, printed first, says where each goes.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from casbackup.recovery.execute import report_base
from casbackup.recovery.plan import RecoverOptions
from casbackup.testing.fixtures import run_cli
from tests.recovery.places import landed
from tests.recovery.test_recover import tree

SOURCES = ("etc/myapp", "var/lib/myapp", "srv/myapp/uploads")


def _rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM notes").fetchone()[0])
    finally:
        conn.close()


def _config(root: Path, sources: list[Path]) -> Path:
    config = root / "casbackup.toml"
    listed = ", ".join(f'"{s}"' for s in sources)
    config.write_text(
        f'[repository]\nlocation = "{root / "repo"}"\n[[applications]]\nname = "myapp"\n'
        f'sources = [{listed}]\n[[applications.databases]]\nname = "notes"\n'
        f'engine = "sqlite"\npath = "{root / "live" / "var/lib/myapp" / "notes.db"}"\n'
    )
    return config


@pytest.fixture
def machine(tmp_path: Path) -> tuple[dict[str, str], list[Path]]:
    """An application in three folders with different parents, one of them holding its
    SQLite database, backed up and verified."""
    live = tmp_path / "live"
    sources = [live / s for s in SOURCES]
    for i, src in enumerate(sources):
        (src / "sub").mkdir(parents=True)
        (src / f"file{i}.txt").write_text(f"source {i}\n")
        (src / "sub" / "data.bin").write_bytes(os.urandom(5000 + i))
    conn = sqlite3.connect(sources[1] / "notes.db")
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO notes (body) VALUES (?)", [(f"n{i}",) for i in range(50)])
    conn.commit()
    conn.close()
    env = {"CASBACKUP_CONFIG": str(_config(tmp_path, sources))}
    assert run_cli("init", "--insecure-test-kdf", env=env).code == 0
    done = run_cli("backup", "--app", "myapp", "--auto-verify", env=env)
    assert done.code == 0, done.err
    return env, sources


def test_each_source_lands_at_its_own_path_below_the_target(tmp_path: Path, machine) -> None:  # type: ignore[no-untyped-def]
    env, sources = machine
    expected = {str(s): tree(s) for s in sources}
    target = tmp_path / "rebuilt"
    out = run_cli("recover", "--app", "myapp", "--target", str(target), env=env)
    assert out.code == 0, out.err
    for src in sources:
        assert f"  files  {src} -> {landed(target, src)}  (" in out.out, out.out
        got = tree(landed(target, src))
        if src == sources[1]:
            got.pop("notes.db")  # the dump's load, not the file's bytes
        assert got == {k: v for k, v in expected[str(src)].items() if k != "notes.db"}
    # The plan is printed before the first part is restored.
    assert out.out.index("  files  ") < out.out.index("restored ")
    assert _rows(landed(target, sources[1]) / "notes.db") == 50
    assert sorted(os.listdir(target)) == ["recovery-report.json", "recovery-report.md", "tmp"]


def test_one_source_lands_as_one_of_several_does(tmp_path: Path) -> None:
    src = tmp_path / "srv" / "single"
    src.mkdir(parents=True)
    (src / "a.txt").write_text("a\n")
    config = tmp_path / "c.toml"
    config.write_text(
        f'[repository]\nlocation = "{tmp_path / "repo"}"\n[[applications]]\nname = "one"\n'
        f'sources = ["{src}"]\n'
    )
    env = {"CASBACKUP_CONFIG": str(config)}
    assert run_cli("init", "--insecure-test-kdf", env=env).code == 0
    assert run_cli("backup", "--app", "one", "--auto-verify", env=env).code == 0
    target = tmp_path / "rebuilt"
    out = run_cli("recover", "--app", "one", "--target", str(target), env=env)
    assert out.code == 0, out.err
    assert (landed(target, src) / "a.txt").read_text() == "a\n"


def test_in_place_puts_each_source_back_at_its_path(tmp_path: Path, machine) -> None:  # type: ignore[no-untyped-def]
    env, sources = machine
    expected = {str(s): tree(s) for s in sources}
    gone = tmp_path / "lost"
    os.rename(tmp_path / "live", gone)  # the machine's disk is lost
    report = tmp_path / "reports" / "rec"
    out = run_cli("recover", "--app", "myapp", "--in-place", "--report", str(report), env=env)
    assert out.code == 0, out.err
    for src in sources:
        assert f"  files  {src} -> {src}  (" in out.out, out.out
        got, want = tree(src), dict(expected[str(src)])
        got.pop("notes.db", None), want.pop("notes.db", None)
        assert got == want
    assert _rows(sources[1] / "notes.db") == 50
    assert f"  report {report}.json and {report}.md" in out.out
    assert (tmp_path / "reports" / "rec.json").exists()
    assert not os.path.exists("/.casbackup-recovery-journal.json")


def test_in_place_restores_only_sources_the_config_lists(tmp_path: Path, machine) -> None:  # type: ignore[no-untyped-def]
    env, sources = machine
    os.rename(tmp_path / "live", tmp_path / "lost")
    # The config no longer lists the uploads: the snapshot's path alone must not put files
    # on this machine.
    _config(tmp_path, sources[:2])
    out = run_cli("recover", "--app", "myapp", "--in-place", env=env)
    assert out.code == 30, (out.out, out.err)
    assert out.err.count("\n") == 1 and out.err.startswith("error: nothing was changed: ")
    assert f"source {sources[2]} is not among the sources the config gives 'myapp'" in out.err
    assert not (tmp_path / "live").exists()
    below = run_cli("recover", "--app", "myapp", "--target", str(tmp_path / "t"), env=env)
    assert below.code == 0, below.err  # below a target, every source comes back
    assert (landed(tmp_path / "t", sources[2]) / "file2.txt").read_text() == "source 2\n"


def test_in_place_refuses_what_is_there(tmp_path: Path, machine) -> None:  # type: ignore[no-untyped-def]
    env, sources = machine
    out = run_cli("recover", "--app", "myapp", "--in-place", "--dry-run", env=env)
    assert out.code == 30
    for src in sources:
        assert f"problem: {src} already exists and is not empty" in out.out


def test_target_or_in_place_is_asked_for(machine) -> None:  # type: ignore[no-untyped-def]
    env, _ = machine
    neither = run_cli("recover", "--app", "myapp", env=env)
    both = run_cli("recover", "--app", "myapp", "--in-place", "--target", "/tmp/x", env=env)
    assert neither.code == both.code == 2
    assert "give either --target DIR or --in-place" in neither.err
    assert "exclude each other" in both.err


def test_the_report_of_a_recovery_in_place_goes_to_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert report_base(RecoverOptions(app="my/app", target="/")) == str(
        tmp_path / "recovery-report-my_app"
    )
    assert report_base(RecoverOptions(app="a", target="t")) == str(
        tmp_path / "t" / "recovery-report"
    )


def test_an_sqlite_database_outside_the_sources_goes_to_its_config_path_below_the_target(
    repo, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    from casbackup.recovery.execute import recover
    from casbackup.verify.sandbox import run_verification
    from tests.verify.apps import backup, make_app

    app, db = make_app(tmp_path)  # the database lives beside the folder, not in it
    assert run_verification(repo, backup(repo, app, [db])).ok
    target = tmp_path / "t"
    options = RecoverOptions(app="shop", target=str(target), configured={"local": db})
    result = recover(repo, options)
    assert result.ok, result.errors
    assert result.plan.databases[0].spec.path == str(landed(target, Path(db.path or "")))
    conn = sqlite3.connect(landed(target, Path(db.path or "")))
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 200
    conn.close()


def test_the_folders_above_the_sources_come_back_as_the_snapshot_recorded_them(
    tmp_path: Path,
) -> None:
    # Found by recovering /srv/myapp/uploads: TARGET/srv came back 0755 (0777 under umask
    # 0), owned by the user who recovered it and dated the day of the recovery, although
    # the backup records /srv (mode, owner, times) as it records every folder above a source.
    live = tmp_path / "live"
    sources = [live / s for s in SOURCES]
    for i, src in enumerate(sources):
        src.mkdir(parents=True)
        (src / f"file{i}.txt").write_text(f"source {i}\n")
    conn = sqlite3.connect(sources[1] / "notes.db")  # the config's database
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.commit()
    conn.close()
    recorded = {live / "srv": 0o750, live / "var" / "lib": 0o711, live / "etc": 0o755,
                sources[2]: 0o701}  # fmt: skip
    for folder, mode in recorded.items():
        folder.chmod(mode)
        if os.geteuid() == 0:
            os.chown(folder, 4321, 4322)
    for folder in [*recorded, live / "var"]:
        os.utime(folder, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    env = {"CASBACKUP_CONFIG": str(_config(tmp_path, sources))}
    assert run_cli("init", "--insecure-test-kdf", env=env).code == 0
    done = run_cli("backup", "--app", "myapp", "--no-auto-verify", env=env)
    assert done.code == 0, done.err
    target = tmp_path / "rebuilt"
    out = run_cli("recover", "--app", "myapp", "--target", str(target),
                  "--allow-unverified", env=env)  # fmt: skip
    assert out.code == 0, out.err
    for folder, mode in recorded.items():
        st = (target / str(folder).lstrip("/")).stat()
        assert oct(st.st_mode & 0o7777) == oct(mode), folder
        assert st.st_mtime_ns == 1_000_000_000_000_000_000, folder
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_gid) == (4321, 4322), folder
    top = str(tmp_path).split("/")[1]  # /tmp, say: recorded too, as it is on this machine
    assert (target / top).stat().st_mode & 0o7777 == os.stat("/" + top).st_mode & 0o7777
