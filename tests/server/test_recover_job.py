"""POST /api/disaster-recovery brings back the server databases the config defines.

Found by recovering through the service an application with a PostgreSQL database defined in
the config: the job failed with "database 'pg': the config does not define it, so give
--db-into pg=CONNECTION", an option the API does not have, about a database the config does
define; the worker never handed the config's definitions to the recovery, so no server
database could be recovered through the service at all.
"""

from __future__ import annotations

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
