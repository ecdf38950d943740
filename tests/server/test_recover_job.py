"""POST /api/disaster-recovery brings back the server databases the config defines.

Found by recovering through the service an application with a PostgreSQL database defined in
the config: the job failed with "database 'pg': the config does not define it, so give
--db-into pg=CONNECTION", an option the API does not have, about a database the config does
define; the worker never handed the config's definitions to the recovery, so no server
database could be recovered through the service at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.engines.conftest import (  # noqa: F401 - pg_server: the fixture
    PG_HOST,
    PG_PORT,
    PG_USER,
    pg_ident,
    pg_server,
    psql,
    unique,
)


@pytest.mark.slow
@pytest.mark.usefixtures("pg_server")
def test_the_service_recovers_a_postgresql_database_the_config_defines(  # type: ignore[no-untyped-def]
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fastapi.testclient import TestClient

    from casbackup.server.app import create_app
    from casbackup.server.settings import Settings
    from casbackup.testing.fixtures import PASSWORD, make_repo
    from tests.server.conftest import make_config, run_job

    db = unique("casb_pg_dr")
    psql(f"CREATE DATABASE {pg_ident(db)};")
    try:
        psql("CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders "
             "SELECT g FROM generate_series(1, 321) g;", db)  # fmt: skip
        monkeypatch.setenv("CASBACKUP_TEST_REPO_PASSWORD", PASSWORD)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        make_repo(str(tmp_path / "repo")).close()
        extra = (f'\n[[applications.databases]]\nname = "pg"\nengine = "postgresql"\n'
                 f'host = "{PG_HOST}"\nport = {PG_PORT}\nuser = "{PG_USER}"\ndatabase = "{db}"\n')  # fmt: skip
        config = make_config(tmp_path, str(tmp_path / "repo"), extra=extra)
        settings = Settings(state_dir=tmp_path / "st", config_path=config,
                            cheap_password_hashing=True, run_scheduler=False)  # fmt: skip
        with TestClient(create_app(settings)) as client:
            service = client.app.state.service  # type: ignore[attr-defined]
            service.accounts.add_user("root", "password-123", "admin")
            h = {"Authorization": f"Bearer {service.accounts.create_token('root')[0]}"}

            def run(path: str, body: dict[str, Any]) -> dict[str, Any]:
                return run_job(client, h, path, body)

            backup = run("/api/backup", {"app_name": "blog"})
            assert backup["state"] == "succeeded", backup
            psql(f"DROP DATABASE {pg_ident(db)};")  # the server lost it
            body = {"app_name": "blog", "dry_run": False, "allow_unverified": True}
            done = run("/api/disaster-recovery", body)
            assert done["state"] == "succeeded", done.get("error")
            (pg,) = done["result"]["report"]["databases"]
            assert pg["ok"] and pg["row_counts"] == {"public.orders": 321}
            # The database is back and the application wrote to it: a second recovery is
            # refused in the API's words, and replaces it only when told to.
            psql("INSERT INTO orders VALUES (1000);", db)
            again = run("/api/disaster-recovery", {**body, "target": "again"})
            assert again["state"] == "failed"
            assert "'overwrite_databases': true" in again["error"], again["error"]
            assert "--overwrite" not in again["error"]
            assert psql("SELECT count(*) FROM orders;", db).strip() == "322"
            forced = {**body, "target": "forced", "overwrite_databases": True}
            done = run("/api/disaster-recovery", forced)
            assert done["state"] == "succeeded", done.get("error")
        assert psql("SELECT count(*) FROM orders;", db).strip() == "321"
    finally:
        psql(f"DROP DATABASE IF EXISTS {pg_ident(db)};")


@pytest.mark.slow
@pytest.mark.usefixtures("pg_server")
def test_the_service_recovers_into_another_database_as_recover_db_into_does(  # type: ignore[no-untyped-def]
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request had no db_into (nor globals, nor in_place): a database could be recovered
    only over the one the config names, which an operator rehearsing beside the live one
    cannot do. A db_into may not send the service's own secrets where the request says."""
    import sqlite3

    from fastapi.testclient import TestClient

    from casbackup.server.app import create_app
    from casbackup.server.settings import Settings
    from casbackup.testing.fixtures import PASSWORD, make_repo
    from tests.server.conftest import make_config, run_job

    db, copy = unique("casb_pg_live"), unique("casb_pg_copy")
    psql(f"CREATE DATABASE {pg_ident(db)};")
    try:
        psql("CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders "
             "SELECT g FROM generate_series(1, 77) g;", db)  # fmt: skip
        monkeypatch.setenv("CASBACKUP_TEST_REPO_PASSWORD", PASSWORD)
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
        monkeypatch.setenv("SECRET_OF_THE_SERVICE", "not-for-you")
        make_repo(str(tmp_path / "repo")).close()
        lite = tmp_path / "lite.db"
        conn = sqlite3.connect(lite)
        conn.execute("CREATE TABLE t (x)")
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(9)])
        conn.commit()
        conn.close()
        extra = (f'\n[[applications.databases]]\nname = "pg"\nengine = "postgresql"\n'
                 f'host = "{PG_HOST}"\nport = {PG_PORT}\nuser = "{PG_USER}"\ndatabase = "{db}"\n'
                 f'\n[[applications.databases]]\nname = "lite"\nengine = "sqlite"\n'
                 f'path = "{lite}"\n')  # fmt: skip
        config = make_config(tmp_path, str(tmp_path / "repo"), extra=extra)
        settings = Settings(state_dir=tmp_path / "st", config_path=config,
                            cheap_password_hashing=True, run_scheduler=False)  # fmt: skip
        with TestClient(create_app(settings)) as client:
            service = client.app.state.service  # type: ignore[attr-defined]
            service.accounts.add_user("root", "password-123", "admin")
            h = {"Authorization": f"Bearer {service.accounts.create_token('root')[0]}"}
            assert run_job(client, h, "/api/backup", {"app_name": "blog"})["state"] == "succeeded"
            body = {"app_name": "blog", "dry_run": False, "allow_unverified": True,
                    "db_into": [f"pg={copy}", "lite=db/lite.sqlite"], "globals": False}  # fmt: skip
            done = run_job(client, h, "/api/disaster-recovery", body)
            assert done["state"] == "succeeded", done.get("error")
            assert done["params"]["globals"] is False
            sq, pg = sorted(done["result"]["report"]["databases"], key=lambda d: d["name"])
            assert pg["target"].endswith(f"/{copy}") and pg["row_counts"] == {"public.orders": 77}
            assert "globals" not in pg or pg["globals"] == []
            assert sq["target"] == f"sqlite:{tmp_path / 'recovery' / 'blog' / 'db' / 'lite.sqlite'}"
            assert psql("SELECT count(*) FROM orders;", copy).strip() == "77"
            # Refused, each in one line naming why: a password source the request chose, an
            # SQLite file outside the target, a line that is no NAME=CONNECTION.
            for into, why in (
                (f"pg=postgresql://{PG_USER}@127.0.0.2:{PG_PORT}/x?password_env="
                 "SECRET_OF_THE_SERVICE", "db_into may not name password_env"),
                (f"lite={tmp_path / 'elsewhere.db'}", "only at a path inside the target"),
            ):  # fmt: skip
                bad = {**body, "target": "bad", "db_into": [into]}
                failed = run_job(client, h, "/api/disaster-recovery", bad)
                assert failed["state"] == "failed" and why in failed["error"], failed["error"]
                assert "\n" not in failed["error"] and "--db-into" not in failed["error"]
            assert not (tmp_path / "elsewhere.db").exists()
            bad = {**body, "db_into": ["no-equals-sign"]}
            res = client.post("/api/disaster-recovery", json=bad, headers=h)
            assert res.status_code == 400 and "db_into" in res.json()["detail"], res.text
    finally:
        psql(f"DROP DATABASE IF EXISTS {pg_ident(db)};")
        psql(f"DROP DATABASE IF EXISTS {pg_ident(copy)};")


def test_the_service_recovers_in_place(env) -> None:  # type: ignore[no-untyped-def]
    """in_place (as recover --in-place) puts the application's source back at its path."""
    import shutil

    from tests.server.conftest import run_job

    client, h = env.client, env.h("admin")
    assert run_job(client, h, "/api/backup", {"app_name": "blog"})["state"] == "succeeded"
    blog = env.tmp / "blog"
    before = sorted(p.relative_to(blog) for p in blog.rglob("*"))
    shutil.rmtree(blog)
    body = {"app_name": "blog", "dry_run": False, "allow_unverified": True, "in_place": True}
    done = run_job(client, h, "/api/disaster-recovery", body)
    assert done["state"] == "succeeded", done.get("error")
    assert done["result"]["plan"]["target"] == "/"
    assert sorted(p.relative_to(blog) for p in blog.rglob("*")) == before
    # The report is in the recovery directory, not in the service's current folder.
    report = env.tmp / "recovery" / "blog" / "recovery-report.json"
    assert done["result"]["report_files"][0] == str(report) and report.exists()
    assert not os.path.exists("recovery-report-blog.json")
