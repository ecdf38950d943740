"""The disaster drill, as an operator runs it: back up, verify, lose everything, recover.

An application with files, a config file, a symlink, an SQLite database inside its folder, a
PostgreSQL and a MariaDB database. After the backup and `verify`, the folder is deleted and
both server databases are dropped; `recover` runs from an empty folder with only the repository,
its passphrase and the operator's command line (no config file: where the server databases go
and where their passwords come from is given with --db-server / --db-into, never taken from
the snapshot) and must bring back every file and every row, and say so in its report.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from casbackup.testing.fixtures import run_cli
from tests.engines.conftest import (
    MY_HOST,
    MY_PORT,
    MY_USER,
    PG_HOST,
    PG_PORT,
    PG_USER,
    mariadb,
    my_spec,
    pg_copy,
    pg_spec,
    psql,
)
from tests.recovery.places import landed
from tests.recovery.test_recover import tree
from tests.verify.apps import backup, make_app

PG_ROWS, MY_ROWS = 2500, 777


def _fill(pg_db: str, my_db: str) -> None:
    psql(
        "CREATE TABLE customers (id int PRIMARY KEY, name text, note text);"
        f"INSERT INTO customers SELECT g, 'customer ' || g, repeat('x', g % 50) "
        f"FROM generate_series(1, {PG_ROWS}) g;"
        "CREATE TABLE orders (id serial PRIMARY KEY, customer int REFERENCES customers(id));"
        "INSERT INTO orders (customer) SELECT (g % 100) + 1 FROM generate_series(1, 400) g;",
        pg_db,
    )
    values = ",".join(f"({i},'user {i}')" for i in range(1, MY_ROWS + 1))
    mariadb(
        f"CREATE TABLE users (id int PRIMARY KEY, name varchar(40)); INSERT INTO users VALUES {values};",
        my_db,
    )


@pytest.mark.slow
def test_disaster_drill(  # type: ignore[no-untyped-def]
    repo,
    repo_path: str,
    tmp_path: Path,
    pg_database: str,
    my_database: str,
) -> None:
    _fill(pg_database, my_database)
    app, local = make_app(tmp_path, rows=321)
    inside = app / "data" / "shop.sqlite"
    os.replace(local.path, inside)  # type: ignore[arg-type]
    local = replace(local, path=str(inside))
    pg = replace(pg_spec(pg_database), name="pg", password_env="DRILL_PG_PASSWORD")
    my = replace(my_spec(my_database), name="my")
    env = {"DRILL_PG_PASSWORD": "unused-with-trust-auth", "CASBACKUP_CONFIG": ""}
    os.environ["DRILL_PG_PASSWORD"] = env["DRILL_PG_PASSWORD"]
    try:
        snap = backup(repo, app, [local, pg, my])
    finally:
        del os.environ["DRILL_PG_PASSWORD"]
    repo.close()
    expected_files = tree(app)
    expected_pg = {t: pg_copy(pg_database, t) for t in ("customers", "orders")}
    expected_my = mariadb("SELECT id, name FROM users ORDER BY id;", my_database)

    servers = ("--db-server", f"postgresql=postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}",
               "--db-server", f"mysql=mysql://{MY_USER}@{MY_HOST}:{MY_PORT}")  # fmt: skip
    verified = run_cli("verify", "--app", "shop", *servers, repo=repo_path, env=env)
    assert verified.code == 0, verified.err
    assert f"snapshot {snap.short_id}: verified OK" in verified.out
    listing = run_cli("snapshots", repo=repo_path)
    assert "Verified" in listing.out and " ok " in listing.out

    # The disaster.
    shutil.rmtree(app)
    psql(f'DROP DATABASE "{pg_database}";')
    mariadb(f"DROP DATABASE `{my_database}`;")

    target = tmp_path / "rebuilt"
    recover = ("recover", "--app", "shop", "--target", str(target))
    unplaced = run_cli(*recover, repo=repo_path, env=env)
    assert unplaced.code == 30 and "--db-into pg=CONNECTION" in unplaced.err
    assert "--db-into my=CONNECTION" in unplaced.err and not target.exists()
    into = ("--db-into", f"pg=postgresql://{PG_USER}@{PG_HOST}:{PG_PORT}/{pg_database}"
            "?password_env=DRILL_PG_PASSWORD",
            "--db-into", f"my=mysql://{MY_USER}@{MY_HOST}:{MY_PORT}/{my_database}")  # fmt: skip
    missing_pw = run_cli(*recover, *into, repo=repo_path, env={"CASBACKUP_CONFIG": ""})
    assert missing_pw.code == 30 and "DRILL_PG_PASSWORD" in missing_pw.err
    assert not target.exists()

    plan = run_cli(*recover, *into, "--dry-run", repo=repo_path, env=env)
    assert plan.code == 0, plan.err
    assert "dry run: nothing was changed" in plan.out and not target.exists()

    done = run_cli(*recover, *into, repo=repo_path, env=env)
    assert done.code == 0, done.err + done.out

    # Every file, the config file, the symlink; the SQLite file is the dump's consistent copy,
    # so its header (change counter) differs from the live file's: its rows are compared below.
    restored = tree(landed(target, tmp_path / "app"))
    assert restored.pop("data/shop.sqlite").startswith(b"SQLite format 3")  # type: ignore[union-attr]
    expected_files.pop("data/shop.sqlite")
    assert restored == expected_files
    conn = sqlite3.connect(landed(target, tmp_path / "app") / "data" / "shop.sqlite")
    assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == 321
    conn.close()
    assert {t: pg_copy(pg_database, t) for t in ("customers", "orders")} == expected_pg
    assert mariadb("SELECT id, name FROM users ORDER BY id;", my_database) == expected_my

    report = json.loads((target / "recovery-report.json").read_text())
    assert report["ok"] and report["errors"] == []
    assert report["verification"]["ok"] and report["snapshot"]["id"] == snap.id
    dbs = {d["name"]: d for d in report["databases"]}
    assert dbs["pg"]["row_counts"] == {"public.customers": PG_ROWS, "public.orders": 400}
    assert dbs["my"]["row_counts"] == {"users": MY_ROWS}
    assert dbs["local"]["row_counts"] == {"orders": 321}
    assert all(d["ok"] and d["row_counts"] == d["expected_row_counts"] for d in dbs.values())
    md = (target / "recovery-report.md").read_text()
    assert "SUCCEEDED" in md and f"| {PG_ROWS + 400} | ok |" in md

    again = run_cli(*recover, *into, repo=repo_path, env=env)
    assert again.code == 30 and "nothing was changed" in again.err
