"""recover onto a rebuilt machine whose target databases already exist.

Found by recovering onto servers where the application's databases held a view and a
sequence but no table: the plan looked only at tables and let the recovery start; after the
files were restored each load was refused ('already exists and is not empty'), and the
journal, written before the first load, named both databases as the recovery's own, so the
plain rerun the operator is told to try replaced them (the view and the sequence were gone)
without --overwrite-databases.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from casbackup.errors import RecoveryError
from casbackup.recovery import plan as plan_mod
from casbackup.recovery.execute import recover
from casbackup.recovery.journal import read_journal
from casbackup.recovery.plan import RecoverOptions, build_plan
from casbackup.testing.fixtures import run_cli
from tests.engines.conftest import mariadb, my_ident, my_spec, pg_ident, pg_spec, psql, unique
from tests.verify.apps import backup, make_app


@pytest.mark.slow
def test_a_server_database_holding_only_a_view_is_refused_before_anything_is_written(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, pg_database: str, my_database: str
) -> None:
    psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);", pg_database)
    mariadb("CREATE TABLE t (id int); INSERT INTO t VALUES (1);", my_database)
    app, _local = make_app(tmp_path)
    pg = replace(pg_spec(pg_database), name="pg")
    my = replace(my_spec(my_database), name="my")
    backup(repo, app, [pg, my])
    pg_into, my_into = unique("casb_pg_into"), unique("casb_my_into")
    psql(f"CREATE DATABASE {pg_ident(pg_into)};")
    mariadb(f"CREATE DATABASE {my_ident(my_into)};")
    try:
        psql("CREATE SEQUENCE keep_me; CREATE VIEW v AS SELECT 1 AS x;", pg_into)
        mariadb("CREATE VIEW v AS SELECT 1 AS x;", my_into)
        target = tmp_path / "t"
        options = RecoverOptions(
            app="shop", target=str(target), allow_unverified=True,
            db_into={"pg": f"postgresql://{pg.user}@{pg.host}:{pg.port}/{pg_into}",
                     "my": f"mysql://{my.user}@{my.host}:{my.port}/{my_into}"},
        )  # fmt: skip
        with pytest.raises(RecoveryError) as exc:
            recover(repo, options)
        msg = str(exc.value)
        assert msg.startswith("nothing was changed")
        assert (
            f"database 'pg': postgresql://{pg.user}@{pg.host}:{pg.port}/{pg_into} already exists and is not empty"
            in msg
        )
        assert (
            f"database 'my': mysql://{my.user}@{my.host}:{my.port}/{my_into} already exists and is not empty"
            in msg
        )
        assert not target.exists()
        assert psql("SELECT count(*) FROM v;", pg_into).strip() == "1"
        assert mariadb("SELECT count(*) FROM v;", my_into).strip() == "1"
    finally:
        psql(f"DROP DATABASE IF EXISTS {pg_ident(pg_into)};")
        mariadb(f"DROP DATABASE IF EXISTS {my_ident(my_into)};")


def test_a_rerun_never_replaces_a_database_the_first_run_did_not_load(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the plan cannot see (a server that was down while planning, a database filled
    meanwhile) the load refuses; that database is then not the recovery's to replace."""
    app, local = make_app(tmp_path)
    backup(repo, app, [local])
    target = tmp_path / "t"
    theirs = target / "databases" / "local.sqlite"
    options = RecoverOptions(app="shop", target=str(target), allow_unverified=True)
    with monkeypatch.context() as patch:
        patch.setattr(plan_mod, "_preflight", lambda item, **kw: None)  # it could not see
        theirs.parent.mkdir(parents=True)
        theirs.write_bytes(b"someone else's database")
        result = recover(repo, options)
    assert not result.ok and "already exists and is not empty" in result.errors[0]
    journal = read_journal(str(target))
    assert journal is not None and journal.databases == ()  # only the files are its own
    again = build_plan(repo, replace(options, dry_run=True))
    assert not again.databases[0].overwrite
    assert any("already exists (use --overwrite-databases)" in p for p in again.problems)
    with pytest.raises(RecoveryError, match="nothing was changed"):
        recover(repo, options)
    assert theirs.read_bytes() == b"someone else's database"


@pytest.mark.slow
def test_a_dry_run_says_it_did_not_ask_the_server(  # type: ignore[no-untyped-def]
    repo, repo_path: str, tmp_path: Path, pg_database: str
) -> None:
    """Found at the terminal: the dry run printed a clean plan and exited 0 onto a server
    database that held data; the real run then refused it. A dry run connects to no server,
    and now says so."""
    psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);", pg_database)
    app, _local = make_app(tmp_path)
    pg = replace(pg_spec(pg_database), name="pg")
    backup(repo, app, [pg])
    repo.close()
    into = f"pg=postgresql://{pg.user}@{pg.host}:{pg.port}/{pg_database}"
    res = run_cli("recover", "--app", "shop", "--target", str(tmp_path / "t"), "--dry-run",
                  "--allow-unverified", "--db-into", into, repo=repo_path)  # fmt: skip
    assert res.code == 0, res.err
    assert (
        "  not checked: whether pg already holds data on the server (the recovery refuses"
        in res.out
    )


def test_an_sqlite_path_that_cannot_be_written_stops_the_plan_before_any_file(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path
) -> None:
    """helper-64's weak item: `--db-into` an SQLite path under a file (or behind another
    user's link) failed only after every file had been restored into the target."""
    app, local = make_app(tmp_path)
    backup(repo, app, [local])
    (tmp_path / "afile").write_text("a file, not a folder")
    target = tmp_path / "t"
    options = RecoverOptions(app="shop", target=str(target), allow_unverified=True,
                             db_into={"local": str(tmp_path / "afile" / "sub" / "shop.db")})  # fmt: skip
    with pytest.raises(RecoveryError) as exc:
        recover(repo, options)
    msg = str(exc.value)
    assert msg.startswith("nothing was changed"), msg
    assert f"database 'local': cannot write {tmp_path}/afile/sub/shop.db: " in msg
    assert f"{tmp_path}/afile is a file, not a folder" in msg
    assert not target.exists()
