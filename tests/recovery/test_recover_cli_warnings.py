"""recover on the command line shows every warning of the run, not only the plan's.

Found by recovering a PostgreSQL database whose table owner the target server lacked (with
--no-globals): the report said 'owner not restored', the terminal said nothing.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from casbackup.testing.fixtures import run_cli
from casbackup.verify.sandbox import VerifyOptions, run_verification
from tests.engines.conftest import pg_ident, pg_spec, psql, unique
from tests.verify.apps import backup, make_app


def test_an_owner_the_server_lacks_is_a_warning_on_the_terminal(  # type: ignore[no-untyped-def]
    repo, repo_path: str, tmp_path: Path, pg_database: str, pg_server
) -> None:
    role = unique("casb_gone")
    psql(f"CREATE ROLE {pg_ident(role)};")
    try:
        psql(f"CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);"
             f"ALTER TABLE t OWNER TO {pg_ident(role)};", pg_database)  # fmt: skip
        app, _local = make_app(tmp_path)
        spec = replace(pg_spec(pg_database), name="orders")
        snap = backup(repo, app, [spec])
        assert run_verification(repo, snap, VerifyOptions(databases={"orders": spec})).ok
        repo.close()
        psql(f"DROP TABLE t; DROP ROLE {pg_ident(role)};", pg_database)
    finally:
        psql(f"DROP ROLE IF EXISTS {pg_ident(role)};")
    expected = (
        f"warning: database 'orders': owner not restored: ALTER TABLE public.t OWNER TO {role}: "
        f'role "{role}" does not exist'
    )
    # Roles are the server's, not a database's: a test beside this one that backs up and
    # recovers the server's globals can re-create the role meanwhile. Then try again.
    for attempt in range(3):
        psql(f"DROP ROLE IF EXISTS {pg_ident(role)};")
        into = unique("casb_pg_into")
        try:
            res = run_cli("recover", "--app", "shop", "--target", str(tmp_path / f"t{attempt}"),
                          "--no-globals", "--db-into",
                          f"orders=postgresql://{spec.user}@{spec.host}:{spec.port}/{into}",
                          repo=repo_path)  # fmt: skip
        finally:
            psql(f"DROP DATABASE IF EXISTS {pg_ident(into)};")
        assert res.code == 0, res.err
        if expected in res.err or not psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{role}';"):
            break
    psql(f"DROP ROLE IF EXISTS {pg_ident(role)};")
    assert expected in res.err, res.err
