"""End to end against the real servers: one app with files, SQLite, PostgreSQL and MariaDB.

Back up through the CLI, drop every database, `db restore` each, compare every row; the same
with names and a password that need quoting; failing dumps exit 27 and leave no snapshot.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path
from urllib.parse import quote

import pytest

from casbackup.engines.mysql import MysqlEngine
from casbackup.engines.postgresql import PostgresEngine
from casbackup.testing.fixtures import PASSWORD, CliResult, run_cli
from tests.engines import test_mysql as my
from tests.engines import test_postgresql as pg
from tests.engines.conftest import (
    MY_HOST,
    MY_PORT,
    MY_USER,
    PG_HOST,
    PG_PORT,
    PG_USER,
    mariadb,
    my_spec,
    pg_spec,
    psql,
    unique,
)
from tests.engines.test_mysql import nasty_user  # noqa: F401,F811 - a fixture


def toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def db_entry(name: str, engine: str, **fields: object) -> str:
    lines = [
        "[[applications.databases]]",
        f"name = {toml_str(name)}",
        f"engine = {toml_str(engine)}",
    ]
    for key, value in fields.items():
        lines.append(f"{key} = {value if isinstance(value, int) else toml_str(str(value))}")
    return "\n".join(lines) + "\n"


def write_config(tmp_path: Path, apps: dict[str, str]) -> Path:
    text = f"[repository]\nlocation = {toml_str(str(tmp_path / 'repo'))}\n"
    for name, databases in apps.items():
        src = tmp_path / f"src-{name}"
        (src / "conf").mkdir(parents=True, exist_ok=True)
        (src / "conf" / "app.ini").write_text(f"[app]\nname = {name}\n")
        (src / "index.html").write_text("<h1>hello</h1>\n" * 50)
        text += (
            f"[[applications]]\nname = {toml_str(name)}\nsources = [{toml_str(str(src))}]\n"
            'excludes = ["*.sqlite3"]\n' + databases
        )
    path = tmp_path / "casbackup.toml"
    path.write_text(text)
    # init takes the repository from -r (it does not read the config's [repository]).
    init = run_cli("init", "--insecure-test-kdf", repo=str(tmp_path / "repo"), env=cli_env(path))
    assert init.code == 0, init.err
    return path


def cli_env(config: Path, **extra: str) -> dict[str, str]:
    return {"CASBACKUP_CONFIG": str(config), **extra}


def cli(config: Path, *args: str, **env: str) -> CliResult:
    return run_cli(*args, env=cli_env(config, **env))


def snapshot_count(config: Path) -> int:
    out = cli(config, "--json", "snapshots")
    assert out.code == 0, out.err
    return len(json.loads(out.out))


def sqlite_rows(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT * FROM items ORDER BY id").fetchall()
    finally:
        conn.close()


def make_sqlite(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price REAL, raw BLOB)")
    conn.executemany(
        "INSERT INTO items VALUES (?, ?, ?, ?)",
        [(i, f"item {i} ✓", i * 1.25, bytes([i % 256]) * 10) for i in range(1, 2001)],
    )
    conn.commit()
    conn.close()


@pytest.mark.slow
def test_app_with_three_databases_round_trip(
    tmp_path: Path, pg_database: str, my_database: str, pg_cleanup: list[str]
) -> None:
    psql(pg.SCHEMA, pg_database)
    my.make_schema(my_database)
    lite = tmp_path / "shop.sqlite3"
    make_sqlite(lite)
    databases = (
        db_entry("files", "sqlite", path=str(lite))
        + db_entry("orders", "postgresql", host=PG_HOST, port=PG_PORT, user=PG_USER, database=pg_database)
        + db_entry("stock", "mariadb", host=MY_HOST, port=MY_PORT, user=MY_USER, database=my_database)
    )  # fmt: skip
    config = write_config(tmp_path, {"shop": databases})
    before = (sqlite_rows(lite), pg.snapshot_rows(pg_database), my.all_rows(my_database))

    result = cli(config, "--json", "backup", "--app", "shop")
    assert result.code == 0, result.err
    summary = json.loads(result.out.strip().splitlines()[-1])
    records = {d["name"]: d for d in summary["databases"]}
    assert {n: r["engine"] for n, r in records.items()} == {
        "files": "sqlite", "orders": "postgresql", "stock": "mysql"}  # fmt: skip
    assert records["orders"]["row_counts"] == pg.EXPECTED_COUNTS
    assert records["stock"]["row_counts"] == my.EXPECTED
    assert records["files"]["row_counts"] == {"items": 2000}
    assert all(r["server_version"] and r["format"] and r["size"] > 0 for r in records.values())
    assert summary["files_total"] == 2  # the sqlite file itself is excluded: dumped, not copied
    listing = cli(config, "ls", "latest").out
    assert "/.databases/orders.pgdump" in listing and "/.databases/stock.sql" in listing

    lite.unlink()
    PostgresEngine().drop(pg_spec(pg_database))
    MysqlEngine().drop(my_spec(my_database))
    for name in ("files", "orders", "stock"):
        out = cli(config, "db", "restore", "latest", "--app", "shop", "--database", name)
        assert out.code == 0, out.err
        assert f"restored database {name}" in out.out and "warning" not in out.err
    assert (sqlite_rows(lite), pg.snapshot_rows(pg_database), my.all_rows(my_database)) == before

    # A second restore onto the now non-empty databases is refused unless --overwrite.
    again = cli(config, "db", "restore", "latest", "--app", "shop", "--database", "orders")
    assert again.code == 27 and "already exists and is not empty" in again.err
    forced = cli(
        config, "db", "restore", "latest", "--app", "shop", "--database", "stock", "--overwrite"
    )
    assert forced.code == 0, forced.err
    assert my.all_rows(my_database) == before[2]

    # Into another database by URL, and into another SQLite file.
    other = unique("casb_into")
    pg_cleanup.append(other)
    url = f"postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{other}"
    into = cli(
        config, "db", "restore", "latest", "--app", "shop", "--database", "orders", "--into", url
    )
    assert into.code == 0, into.err
    assert pg.snapshot_rows(other) == before[1]
    copy = tmp_path / "copy.sqlite3"
    into = cli(
        config,
        "db",
        "restore",
        "latest",
        "--app",
        "shop",
        "--database",
        "files",
        "--into",
        str(copy),
    )
    assert into.code == 0, into.err
    assert sqlite_rows(copy) == before[0]


def test_names_and_password_that_need_quoting(
    tmp_path: Path,
    pg_cleanup: list[str],
    my_cleanup: list[str],
    nasty_user: tuple[str, str],  # noqa: F811
) -> None:
    user, my_db = nasty_user
    pg_db = unique("casb pg \"q\" 'x' $1;")
    pg_cleanup.append(pg_db)
    psql(f"CREATE DATABASE {pg.pg_ident(pg_db)};")
    psql("CREATE TABLE \"t;'x\" (id int PRIMARY KEY, v text);"
         "INSERT INTO \"t;'x\" SELECT i, md5(i::text) FROM generate_series(1, 700) i;", pg_db)  # fmt: skip
    mariadb("CREATE TABLE `t;'x` (id INT PRIMARY KEY, v TEXT);"
            "INSERT INTO `t;'x` SELECT seq, MD5(seq) FROM seq_1_to_500;", my_db)  # fmt: skip
    password = my.NASTY_PASSWORD
    databases = (
        db_entry("pg", "postgresql", host=PG_HOST, port=PG_PORT, user=PG_USER, database=pg_db,
                 password_env="CASB_T_PGPW")
        + db_entry("my", "mysql", host=MY_HOST, port=MY_PORT, user=user, database=my_db,
                   password_env="CASB_T_MYPW")
    )  # fmt: skip
    config = write_config(tmp_path, {"quoted.app-1": databases})
    env = {"CASB_T_PGPW": password, "CASB_T_MYPW": password}
    out = cli(config, "backup", "--app", "quoted.app-1", **env)
    assert out.code == 0, out.err
    pg_before = psql('SELECT * FROM "t;\'x" ORDER BY id;', pg_db)
    my_before = mariadb("SELECT * FROM `t;'x` ORDER BY id", my_db)
    PostgresEngine().drop(pg_spec(pg_db))
    MysqlEngine().drop(my_spec(my_db))
    for name in ("pg", "my"):
        res = cli(
            config, "db", "restore", "latest", "--app", "quoted.app-1", "--database", name, **env
        )
        assert res.code == 0, res.err
    assert psql('SELECT * FROM "t;\'x" ORDER BY id;', pg_db) == pg_before
    assert mariadb("SELECT * FROM `t;'x` ORDER BY id", my_db) == my_before
    # --into with a percent-encoded name; the password comes from the environment, never argv.
    target = unique('restored_ "q"')
    my_cleanup.append(target)
    url = f"mysql://{quote(user)}@{MY_HOST}:{MY_PORT}/{quote(target, safe='')}"
    res = cli(config, "db", "restore", "latest", "--app", "quoted.app-1", "--database", "my",
              "--into", url, **env)  # fmt: skip
    assert res.code == 0, res.err
    assert mariadb("SELECT * FROM `t;'x` ORDER BY id", target) == my_before
    secret_url = f"mysql://{user}:{quote(password, safe='')}@{MY_HOST}/{my_db}"
    refused = cli(config, "db", "restore", "latest", "--app", "quoted.app-1", "--database", "my",
                  "--into", secret_url, **env)  # fmt: skip
    assert refused.code == 2 and "must not contain a password" in refused.err


def fake_dump_tool(tmp_path: Path) -> dict[str, str]:
    """A mariadb-dump that streams part of a real dump and is then killed by SIGKILL."""
    real = shutil.which("mariadb-dump")
    assert real
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "mariadb-dump"
    script.write_text(f'#!/bin/sh\n"{real}" "$@" | head -c 300000\nkill -9 $$\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


@pytest.mark.slow
def test_failing_dumps_exit_27_and_leave_no_snapshot(
    tmp_path: Path, pg_server: None, my_database: str, nasty_user: tuple[str, str],  # noqa: F811
) -> None:  # fmt: skip
    user, my_db = nasty_user
    mariadb("CREATE TABLE big (id INT PRIMARY KEY, b BLOB);"
            "INSERT INTO big SELECT seq, REPEAT(UNHEX(MD5(seq)), 64) FROM seq_1_to_4000;", my_database)  # fmt: skip
    mariadb("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1);", my_db)
    missing = unique("casb_missing")
    config = write_config(tmp_path, {
        "good": db_entry("big", "mariadb", host=MY_HOST, port=MY_PORT, user=MY_USER, database=my_database),
        "wrongpw": db_entry("my", "mysql", host=MY_HOST, port=MY_PORT, user=user, database=my_db,
                            password_env="CASB_T_MYPW"),
        "nodb": db_entry("pg", "postgresql", host=PG_HOST, port=PG_PORT, user=PG_USER, database=missing),
    })  # fmt: skip
    env = {"CASB_T_MYPW": "not the password"}
    cases = {
        "wrongpw": ("Access denied for user", env),
        "nodb": (f'database "{missing}" does not exist', env),
        "good": ("mariadb-dump was killed by signal 9", {**env, **fake_dump_tool(tmp_path)}),
    }
    for app, (reason, app_env) in cases.items():
        out = cli(config, "backup", "--app", app, **app_env)
        assert out.code == 27, (app, out.err)
        (line,) = [ln for ln in out.err.splitlines() if ln.startswith("error:")]
        assert reason in line and "no snapshot was saved" in line, line
        assert "Traceback" not in out.err
    assert snapshot_count(config) == 0

    # --all goes on after a failure, saves what it can, and fails the run.
    out = cli(config, "--json", "backup", "--all", **env)
    assert out.code == 27, out.err
    docs = [json.loads(line) for line in out.out.splitlines()]
    docs = [d for d in docs if d["message_type"] in ("summary", "error")]  # not progress
    assert [(d["message_type"], d["app"]) for d in docs] == [
        ("summary", "good"), ("error", "wrongpw"), ("error", "nodb")]  # fmt: skip
    assert "2 of 3 applications failed: wrongpw, nodb" in out.err
    assert snapshot_count(config) == 1


def test_ctrl_c_during_a_waiting_dump_is_an_interruption(pg_database: str, tmp_path: Path) -> None:
    """Found by helper-54 on a real serve, reproduced with the CLI: Ctrl-C while pg_dump's
    row counts waited on a locked table exited 27 ('psql exited with status 3: ... canceling
    statement due to user request'): the terminal's SIGINT reaches psql too, and its failure
    was reported as the database's. It is the interruption: exit 130, as elsewhere."""
    import signal
    import subprocess
    import sys
    import time

    from tests.engines.conftest import PG_HOST, PG_PORT, PG_USER, psql

    psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);", pg_database)
    entry = db_entry("orders", "postgresql", host=PG_HOST, port=PG_PORT, user=PG_USER,
                     database=pg_database)  # fmt: skip
    config = write_config(tmp_path, {"shop": entry})
    locker = subprocess.Popen(
        ["psql", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, "-d", pg_database, "-c",
         "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60); COMMIT;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        env = {**os.environ, **cli_env(config), "CASBACKUP_PASSWORD": PASSWORD}
        # Not a fixed wait: a backup that starts before the lock is taken dumps at once and
        # ends before the Ctrl-C (exit 0). Then: one of its sessions waits on that lock.
        locks_on_t = (
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname = 't' AND l.granted = {} AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database());"
        )

        def until_locks(granted: str) -> None:
            deadline = time.monotonic() + 60  # a hang guard
            while psql(locks_on_t.format(granted), pg_database).strip() == "0":
                assert locker.poll() is None and time.monotonic() < deadline, granted
                time.sleep(0.05)

        until_locks("true")  # the lock is taken
        backup = subprocess.Popen(
            [sys.executable, "-m", "casbackup.cli.main", "backup", "--app", "shop"],
            env=env, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        assert backup.stderr is not None
        for line in backup.stderr:  # until the dump (and its waiting count) has started
            if b"dumping database orders" in line:
                break
        until_locks("false")  # the dump (or its count) waits on it
        os.killpg(backup.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        err = backup.stderr.read().decode()
        assert backup.wait(timeout=60) == 130, err
        assert "interrupted" in err and "psql exited" not in err
    finally:
        locker.kill()
        locker.wait()
        psql(  # its session sleeps on in the server: end it so the database can be dropped
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{pg_database}' AND pid <> pg_backend_pid();"
        )
