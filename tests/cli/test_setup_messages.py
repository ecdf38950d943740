"""Messages a newcomer meets while setting casbackup up (a config file, a second repository
for an off-site copy): each says where what it used came from and what to do, exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from casbackup.testing.fixtures import PASSWORD, run_cli
from tests.cli.conftest import assert_one_error
from tests.engines.conftest import (  # noqa: F401 - fixtures
    mariadb_server,
    my_database,
    pg_database,
    pg_server,
)

NO_ENV_PASSWORD = {"CASBACKUP_PASSWORD": ""}  # set but empty is not set


def _two_repos(tmp_path: Path) -> tuple[str, str, Path, Path]:
    """The config's repository (passphrase PASSWORD in main.pass) and an off-site one
    (its own passphrase in other.pass), and the config file naming the first."""
    main, other = str(tmp_path / "main"), str(tmp_path / "other")
    main_pass, other_pass = tmp_path / "main.pass", tmp_path / "other.pass"
    main_pass.write_text(PASSWORD + "\n")
    other_pass.write_text("the off-site passphrase\n")
    assert run_cli("init", "--insecure-test-kdf", repo=main).code == 0
    made = run_cli("--password-file", str(other_pass), "init", "--insecure-test-kdf", repo=other,
                   env=NO_ENV_PASSWORD)  # fmt: skip
    assert made.code == 0, made.err
    config = tmp_path / "casbackup.toml"
    config.write_text(f'[repository]\nlocation = "{main}"\npassword_file = "{main_pass}"\n')
    return main, other, main_pass, other_pass


def test_wrong_passphrase_from_the_config_for_another_repository(tmp_path: Path) -> None:
    """-r names the off-site repository, the passphrase silently came from the config's
    [repository]: the message said only 'wrong passphrase', for a passphrase never given."""
    _main, other, main_pass, _ = _two_repos(tmp_path)
    res = run_cli("snapshots", repo=other,
                  env={**NO_ENV_PASSWORD, "CASBACKUP_CONFIG": str(tmp_path / "casbackup.toml")})  # fmt: skip
    assert_one_error(res, 12)
    assert res.err == (
        f"error: wrong passphrase (password file {main_pass}, from the config file): no key "
        "file of this repository opens with it; for a repository other than the config's, "
        "give its passphrase with --password-file, --password-command or CASBACKUP_PASSWORD\n"
    )


def test_wrong_passphrase_says_which_source_was_tried(tmp_path: Path) -> None:
    _main, other, main_pass, _ = _two_repos(tmp_path)
    res = run_cli("--password-file", str(main_pass), "snapshots", repo=other, env=NO_ENV_PASSWORD)
    assert res.code == 12
    assert res.err == (
        f"error: wrong passphrase (password file {main_pass}): no key file of this repository "
        "opens with it\n"
    )
    res = run_cli("snapshots", repo=other, env={"CASBACKUP_PASSWORD": "not it"})
    assert res.err == (
        "error: wrong passphrase (the variable CASBACKUP_PASSWORD): no key file of this "
        "repository opens with it\n"
    )


def test_copy_says_which_repository_refused_which_passphrase(tmp_path: Path) -> None:
    """Both repositories of a copy answered 'wrong passphrase' alike: which one was it?"""
    main, other, main_pass, other_pass = _two_repos(tmp_path)
    res = run_cli("--password-file", str(other_pass), "copy", "--from-repo", main,
                  "--from-password-file", str(other_pass), repo=other, env=NO_ENV_PASSWORD)  # fmt: skip
    assert res.code == 12
    assert res.err == (
        f"error: wrong passphrase for --from-repo {main} (password file {other_pass}): no key "
        "file of this repository opens with it\n"
    )
    res = run_cli("--password-file", str(other_pass), "copy", "--from-repo", main, repo=other,
                  env={**NO_ENV_PASSWORD, "CASBACKUP_FROM_PASSWORD": "not it"})  # fmt: skip
    assert res.err == (
        f"error: wrong passphrase for --from-repo {main} (the variable "
        "CASBACKUP_FROM_PASSWORD): no key file of this repository opens with it\n"
    )
    res = run_cli("--password-file", str(main_pass), "copy", "--from-repo", main,
                  "--from-password-file", str(main_pass), repo=other, env=NO_ENV_PASSWORD)  # fmt: skip
    assert res.err == (
        f"error: wrong passphrase (password file {main_pass}): no key file of this repository "
        "opens with it\n"
    )


def test_copy_help_says_what_the_variable_holds() -> None:
    """The help said '--from-password-file ... [env: CASBACKUP_FROM_PASSWORD]': a variable
    holding a file name, as CASBACKUP_PASSWORD_FILE does; it holds the passphrase itself."""
    for command in ("copy", "init"):
        text = " ".join(run_cli(command, "--help").out.split())
        assert "--from-password-file FILE" in text, text
        assert "or the passphrase itself in CASBACKUP_FROM_PASSWORD" in text, text


def _cli_in(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """casbackup run from ``cwd`` with no config file anywhere it looks by default."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("CASBACKUP_")}
    full.update(XDG_CONFIG_HOME=str(cwd / "xdg"), HOME=str(cwd), **env)
    return subprocess.run([sys.executable, "-m", "casbackup.cli.main", *args], cwd=cwd,
                          env=full, capture_output=True, text=True, timeout=120)  # fmt: skip


def test_no_repository_and_no_config_file_found(tmp_path: Path) -> None:
    """'... or set [repository] location in the config file' when no config file was
    found at all (written to /etc/casbackup/casbackup.toml, never named): which file?"""
    for args in (["snapshots"], ["init"], ["backup", str(tmp_path)]):
        res = _cli_in(tmp_path, *args, CASBACKUP_PASSWORD=PASSWORD)
        assert res.returncode == 2, res.stderr
        assert res.stderr == (
            "error: no repository given: use -r/--repo or CASBACKUP_REPO, or name it in a "
            "config file's [repository] location (none found: give --config FILE, set "
            "CASBACKUP_CONFIG, or create ./casbackup.toml or ~/.config/casbackup/config.toml)\n"
        )


def test_no_repository_in_the_config_file_found(tmp_path: Path) -> None:
    (tmp_path / "casbackup.toml").write_text('[[applications]]\nname = "a"\nsources = ["/x"]\n')
    res = _cli_in(tmp_path, "snapshots", CASBACKUP_PASSWORD=PASSWORD)
    assert res.returncode == 2, res.stderr
    assert res.stderr == (
        "error: no repository given: use -r/--repo or CASBACKUP_REPO, or set [repository] "
        f"location in {tmp_path / 'casbackup.toml'}\n"
    )


def _options() -> list[tuple[str, click.Option]]:
    from casbackup.cli.main import cli

    found: list[tuple[str, click.Option]] = []

    def walk(command: click.Command, path: str) -> None:
        if isinstance(command, click.Group):
            for name in command.list_commands(click.Context(command)):
                sub = command.get_command(click.Context(command), name)
                assert sub is not None
                walk(sub, f"{path} {name}")
            return
        found.extend(
            (path, p) for p in command.params if isinstance(p, click.Option) and not p.hidden
        )

    walk(cli, "casbackup")
    return found


def test_every_option_says_what_it_does_and_names_its_value() -> None:
    """`casbackup init --help` listed --compression and --compression-level with no word,
    `user add --role` too; `backup -e TEXT  Exclude paths matching PATTERN` named its value
    twice, differently."""
    problems = []
    for path, option in _options():
        if not option.help:
            problems.append(f"{path} {option.opts[-1]}: no help")
        if not option.is_flag and "PATTERN" in (option.help or ""):
            if option.metavar != "PATTERN":
                problems.append(f"{path} {option.opts[-1]}: shows {option.metavar or 'TEXT'}")
    assert not problems, problems


@pytest.mark.slow
def test_verify_with_a_backup_account_that_may_not_make_scratch_databases(
    my_database: str,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """The config's MariaDB account may dump its database but not create the scratch
    database verify loads the dump into: "cannot be used: ... Access denied for user
    ... to database 'casb_verify_probe_...'" said what, not what to do."""
    from tests.engines.conftest import MY_HOST, MY_PORT, mariadb, unique
    from tests.engines.test_backup_integration import cli, db_entry, write_config

    user = unique("casb_bk")
    mariadb("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1);", my_database)
    mariadb(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'bk pw'; "
            f"GRANT SELECT, LOCK TABLES, SHOW VIEW, EVENT, TRIGGER ON `{my_database}`.* "
            f"TO '{user}'@'%'; GRANT SELECT ON mysql.proc TO '{user}'@'%';")  # fmt: skip
    try:
        entry = db_entry("orders", "mysql", host=MY_HOST, port=MY_PORT, user=user,
                         database=my_database, password_env="BK_PW")  # fmt: skip
        config = write_config(tmp_path, {"shop": entry})
        assert cli(config, "backup", "--app", "shop", BK_PW="bk pw").code == 0
        res = cli(config, "verify", "--app", "shop", BK_PW="bk pw")
        assert_one_error(res, 27, "Access denied for user")
        assert res.err.rstrip().endswith(
            "(verify loads each dump into a database casb_verify_<hex> there and drops it: "
            "GRANT ALL ON `casb\\_verify\\_%`.* TO the account, or name another with "
            "--db-server mysql=URL)"
        ), res.err
        mariadb(f"GRANT ALL ON `casb\\_verify\\_%`.* TO '{user}'@'%';")  # what it says
        res = cli(config, "verify", "--app", "shop", BK_PW="bk pw")
        assert res.code == 0, res.err
    finally:
        mariadb(f"DROP USER IF EXISTS '{user}'@'%';")


@pytest.mark.slow
def test_verify_with_a_postgresql_account_that_may_not_create_databases(
    pg_database: str,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """A PostgreSQL backup role that may read everything (pg_read_all_data) but not create
    databases: the probe (DROP DATABASE IF EXISTS of a name that does not exist) passed,
    the load into the scratch database failed, and verify RECORDED A FAILED VERIFICATION
    ("permission denied to create database"): a good snapshot called damaged because of
    this machine's server, which recover then skips. It is a server problem: exit 27,
    nothing recorded, and the grant named."""
    from tests.engines.conftest import PG_HOST, PG_PORT, psql, unique
    from tests.engines.test_backup_integration import cli, db_entry, write_config

    role = unique("casb_bk")
    psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);", pg_database)
    psql(f"CREATE ROLE {role} LOGIN PASSWORD 'bk pw'; GRANT pg_read_all_data TO {role};")
    try:
        entry = db_entry("orders", "postgresql", host=PG_HOST, port=PG_PORT, user=role,
                         database=pg_database, password_env="BK_PW")  # fmt: skip
        config = write_config(tmp_path, {"shop": entry})
        backup = cli(config, "backup", "--app", "shop", BK_PW="bk pw")
        assert backup.code == 0, backup.err
        res = cli(config, "verify", "--app", "shop", BK_PW="bk pw")
        assert_one_error(res, 27, "nothing was recorded")
        assert res.err.rstrip().endswith(
            f"the postgresql server for scratch databases cannot be used: role {role} may not "
            "create databases (verify loads each dump into a database casb_verify_<hex> there "
            "and drops it: ALTER ROLE the_account CREATEDB, or name another with --db-server "
            "postgresql=URL)"
        ), res.err
        (snap,) = json.loads(cli(config, "--json", "snapshots").out)
        assert snap["verification"] is None  # nothing recorded about the snapshot
        psql(f"ALTER ROLE {role} CREATEDB;")  # what the message says
        res = cli(config, "verify", "--app", "shop", BK_PW="bk pw")
        assert res.code == 0, res.err
    finally:
        psql(f"DROP ROLE IF EXISTS {role};")


@pytest.mark.slow
def test_a_refused_db_restore_creates_no_role(
    pg_database: str,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    """`db restore` into the live, non-empty database (no --into, no --overwrite) is refused,
    but it created the backup's missing roles first ("roles from the backup: 1 created"):
    a restore that loads nothing changed the server."""
    from tests.engines.conftest import PG_HOST, PG_PORT, PG_USER, psql, unique
    from tests.engines.test_backup_integration import cli, db_entry, write_config

    role = unique("casb_approle")
    psql(f"CREATE ROLE {role} LOGIN; CREATE TABLE t (id int); GRANT SELECT ON t TO {role};",
         pg_database)  # fmt: skip
    try:
        entry = db_entry("orders", "postgresql", host=PG_HOST, port=PG_PORT, user=PG_USER,
                         database=pg_database)  # fmt: skip
        config = write_config(tmp_path, {"shop": entry})
        assert cli(config, "backup", "--app", "shop").code == 0
        psql(f"REVOKE ALL ON t FROM {role}; DROP ROLE {role};", pg_database)
        res = cli(config, "db", "restore", "latest", "--app", "shop", "--database", "orders")
        assert_one_error(res, 27)
        assert res.err == (
            f"error: database 'orders': {pg_database} already exists and is not empty (to "
            "replace it: db restore --overwrite, recover --overwrite-databases)\n"
        )
        assert psql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{role}';").strip() == "0"
    finally:
        if psql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{role}';").strip() != "0":
            psql(f"DROP OWNED BY {role}; DROP ROLE {role};", pg_database)


def test_recover_plan_of_an_sqlite_database_in_the_sources(tmp_path: Path) -> None:
    """The plan of a restore drill onto an empty target said the SQLite database goes to
    its place "replacing what is there": there is nothing there, and the drill's operator
    could not tell what would be overwritten. It is the copy restored with the files, if
    any (the live file is left out of the file walk)."""
    import sqlite3

    src = tmp_path / "srv" / "app"
    (src / "data").mkdir(parents=True)
    (src / "app.py").write_text("print('hi')\n")
    conn = sqlite3.connect(src / "data" / "app.db")
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    conn.close()
    config = tmp_path / "casbackup.toml"
    config.write_text(
        f'[repository]\nlocation = "{tmp_path / "repo"}"\n[[applications]]\nname = "app"\n'
        f'sources = ["{src}"]\n[[applications.databases]]\nname = "lite"\nengine = "sqlite"\n'
        f'path = "{src / "data" / "app.db"}"\n'
    )
    env = {"CASBACKUP_CONFIG": str(config)}
    assert run_cli("init", "--insecure-test-kdf", env=env).code == 0
    assert run_cli("backup", "--app", "app", "--auto-verify", env=env).code == 0
    target = tmp_path / "rebuilt"
    plan = run_cli("recover", "--app", "app", "--target", str(target), "--dry-run", env=env)
    assert plan.code == 0, plan.err
    assert (
        f"  db     lite (sqlite, dump 8.0 KiB, 1 table) -> sqlite:{target}{src}/data/app.db, "
        "over any copy restored with the files\n"
    ) in plan.out, plan.out
    over = run_cli("recover", "--app", "app", "--target", str(target), "--dry-run",
                   "--overwrite-databases", env=env)  # fmt: skip
    assert f"-> sqlite:{target}{src}/data/app.db, replacing what is there\n" in over.out
