"""Small promises found by trying the CLI as a new user (init, backup, forget, prune)."""

from __future__ import annotations

from pathlib import Path

import pytest

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.errors import NotFound, RecoveryError
from casbackup.recovery.plan import RecoverOptions, choose_snapshot
from casbackup.testing.fixtures import make_repo, run_cli
from tests.cli.conftest import init_repo


def test_prune_says_one_snapshot_uses(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    repo = init_repo(str(tmp_path / "repo"))
    assert run_cli("backup", str(src), repo=repo).code == 0
    res = run_cli("prune", "--dry-run", repo=repo)
    assert res.code == 0, res.err
    assert res.out.splitlines()[0].startswith("1 snapshot uses ")
    assert run_cli("backup", str(src), repo=repo).code == 0
    res = run_cli("prune", "--dry-run", repo=repo)
    assert res.out.splitlines()[0].startswith("2 snapshots use ")


def test_a_mistyped_app_names_the_applications_there(tmp_path: Path) -> None:
    # `find settings.ini --app shpo` said "0 matches in 0 snapshots searched" and `snapshots
    # --app shpo` "0 snapshots": read as "never backed up". verify, stats, ls and recover
    # said only "no snapshot of application 'shpo'", not what to type instead.
    src = tmp_path / "src"
    src.mkdir()
    (src / "settings.ini").write_text("x")
    repo = init_repo(str(tmp_path / "repo"))
    assert run_cli("backup", str(src), "--app", "shop", repo=repo).code == 0
    hint = "no snapshot of application 'shpo' in the repository (applications with snapshots here: shop)"
    for args in (["snapshots"], ["find", "settings.ini"]):
        res = run_cli(*args, "--app", "shpo", repo=repo)
        assert res.code == 0 and f"warning: {hint}" in res.err.splitlines(), (args, res.err)
    for args, code in (
        (["verify", "--app", "shpo"], 23),
        (["stats", "--app", "shpo"], 23),
        (["ls", "latest", "--app", "shpo"], 23),
        (["restore", "latest", "--app", "shpo", "--target", str(tmp_path / "r")], 23),
        (["recover", "--app", "shpo", "--target", str(tmp_path / "r"), "--dry-run"], 30),
    ):
        res = run_cli(*args, repo=repo)
        assert res.code == code and res.err == f"error: {hint}\n", (args, res.err)
    # The application that is there lists as before, without a warning.
    res = run_cli("snapshots", "--app", "shop", repo=repo)
    assert res.code == 0 and res.err == "" and "1 snapshot" in res.out
    empty = init_repo(str(tmp_path / "empty"))
    res = run_cli("ls", "latest", "--app", "shop", repo=empty)
    assert res.err == "error: no snapshot of application 'shop' in the repository\n"


def test_the_service_names_no_other_application(tmp_path: Path) -> None:
    # The service's users may be limited to some applications: a job's error about one
    # without snapshots must not list the names of the others (they answer 404).
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    repo = make_repo(str(tmp_path / "repo"))
    run_backup(repo, BackupOptions(paths=(str(src),), app="secret-payroll"))
    with pytest.raises(NotFound, match="payroll"):
        repo.resolve_snapshot("latest", app="shop")
    with pytest.raises(NotFound) as caught:
        repo.resolve_snapshot("latest", app="shop", name_apps=False)
    assert str(caught.value) == "no snapshot of application 'shop' in the repository"
    options = RecoverOptions(app="shop", target=str(tmp_path / "t"), name_apps=False)
    with pytest.raises(RecoveryError) as failed:
        choose_snapshot(repo, options)
    assert "payroll" not in str(failed.value)


def test_db_restore_onto_data_names_the_option_that_replaces_it(tmp_path: Path) -> None:
    # It said "(use overwrite to replace it)": no such word on the command line.
    import sqlite3

    app = tmp_path / "app"
    app.mkdir()
    with sqlite3.connect(app / "notes.db") as db:
        db.execute("CREATE TABLE t (x)")
        db.execute("INSERT INTO t VALUES (1)")
    repo = init_repo(str(tmp_path / "repo"))
    config = tmp_path / "casbackup.toml"
    config.write_text(
        f'[repository]\nlocation = "{repo}"\n\n[[applications]]\nname = "notes"\n'
        f'sources = ["{app}"]\n\n[[applications.databases]]\nname = "notes"\n'
        f'engine = "sqlite"\npath = "{app / "notes.db"}"\n'
    )
    env = {"CASBACKUP_CONFIG": str(config)}
    assert run_cli("backup", "--app", "notes", env=env).code == 0
    res = run_cli("db", "restore", "latest", "--app", "notes", "--database", "notes", env=env)
    assert res.code == 27 and "already exists and is not empty" in res.err, res.err
    assert "db restore --overwrite" in res.err and "use overwrite" not in res.err
    res = run_cli("db", "restore", "latest", "--app", "notes", "--database", "notes",
                  "--overwrite", env=env)  # fmt: skip
    assert res.code == 0, res.err


def test_apps_without_a_config_does_not_call_each_not_in_config(tmp_path: Path) -> None:
    # On a rebuilt machine (repository and passphrase only), `apps` listed
    # "shop (not in config)": there was no config at all to be missing from.
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    repo = init_repo(str(tmp_path / "repo"))
    assert run_cli("backup", str(src), "--app", "shop", repo=repo).code == 0
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg"), "CASBACKUP_CONFIG": ""}
    res = run_cli("apps", repo=repo, env=env)
    assert res.code == 0 and "shop" in res.out and "not in config" not in res.out, res.out
    config = tmp_path / "casbackup.toml"
    config.write_text(f'[[applications]]\nname = "blog"\nsources = ["{src}"]\n')
    res = run_cli("apps", repo=repo, env={**env, "CASBACKUP_CONFIG": str(config)})
    assert "shop (not in config)" in res.out, res.out
