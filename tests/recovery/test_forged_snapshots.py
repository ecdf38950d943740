"""A snapshot never steers (issue 12, kind 6): what it stores is shown, never followed.

Each snapshot here is forged with the key through the library, as someone holding it (one
compromised client of a shared repository) could. Its stored application definition names a
database server (a listener in the test that counts connections) and a password file (whose
reads are detected). recover, its dry run, verify and db restore must connect to nothing and
read nothing the snapshot names; every path it stores must stay inside its tree.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from casbackup.engines.base import DatabaseSpec
from casbackup.errors import DatabaseError, RecoveryError
from casbackup.recovery.execute import recover
from casbackup.recovery.layout import dest_paths
from casbackup.recovery.plan import RecoverOptions
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import DatabaseRecord
from casbackup.repo.tree import Node, NodeKind
from casbackup.testing.fixtures import run_cli
from casbackup.verify.sandbox import VerifyOptions, run_verification
from tests.recovery.forged import (
    Listener,
    Secret,
    forge,
    hostile_definition,
    pg_record,
    sqlite_bytes,
)


def settled(server: Listener) -> int:
    time.sleep(0.3)  # a connection made just before is counted by the accepting thread
    return server.connections


def test_recover_dry_run_connects_nowhere_and_reads_no_secret(  # type: ignore[no-untyped-def]
    repo: Repository, tmp_path: Path, listener: Listener, secret: Secret
) -> None:
    forge(repo, databases=[pg_record()], definition=hostile_definition(listener, secret),
          dumps={"orders.pgdump": b"PGDMP"})  # fmt: skip
    target = tmp_path / "target"
    options = RecoverOptions(app="shop", target=str(target), dry_run=True, allow_unverified=True)
    result = recover(repo, options)
    assert settled(listener) == 0 and not secret.read()
    assert not target.exists()
    (problem,) = [p for p in result.plan.problems if "orders" in p]
    assert "--db-into orders=CONNECTION" in problem
    assert f"postgresql://postgres@127.0.0.1:{listener.port}/orders" in problem  # shown


def test_recover_refuses_before_touching_anything(  # type: ignore[no-untyped-def]
    repo: Repository, tmp_path: Path, listener: Listener, secret: Secret
) -> None:
    forge(repo, databases=[pg_record()], definition=hostile_definition(listener, secret),
          dumps={"orders.pgdump": b"PGDMP"})  # fmt: skip
    target = tmp_path / "target"
    with pytest.raises(RecoveryError, match="nothing was changed.*--db-into orders=CONNECTION"):
        recover(repo, RecoverOptions(app="shop", target=str(target), allow_unverified=True))
    assert settled(listener) == 0 and not secret.read()
    assert not target.exists()


def test_the_local_config_decides_and_the_stored_location_is_shown(  # type: ignore[no-untyped-def]
    repo: Repository, tmp_path: Path, listener: Listener, secret: Secret
) -> None:
    forge(repo, databases=[pg_record()], definition=hostile_definition(listener, secret),
          dumps={"orders.pgdump": b"PGDMP"})  # fmt: skip
    local = Listener()
    try:
        mine = DatabaseSpec(name="orders", engine="postgresql", host="127.0.0.1",
                            port=local.port, user="shop", database="orders_here")  # fmt: skip
        options = RecoverOptions(app="shop", target=str(tmp_path / "t"), dry_run=True,
                                 allow_unverified=True, configured={"orders": mine})  # fmt: skip
        plan = recover(repo, options).plan
        # A dry run connects to no server at all, not even the configured one.
        assert settled(local) == 0 and settled(listener) == 0 and not secret.read()
    finally:
        local.close()
    (db,) = plan.databases
    assert db.where == f"postgresql://shop@127.0.0.1:{local.port}/orders_here"
    assert db.stored == f"postgresql://postgres@127.0.0.1:{listener.port}/orders"
    assert db.spec.password_file is None and plan.problems == ()
    # A bare --db-into name is a database on the config's server, not on the snapshot's.
    options = RecoverOptions(app="shop", target=str(tmp_path / "t"), dry_run=True,
                             allow_unverified=True, configured={"orders": mine},
                             db_into={"orders": "other_db"})  # fmt: skip
    (db,) = recover(repo, options).plan.databases
    assert (db.spec.host, db.spec.port, db.spec.database) == ("127.0.0.1", local.port, "other_db")


def test_recover_cli_dry_run(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, tmp_path: Path, listener: Listener, secret: Secret
) -> None:
    forge(repo, databases=[pg_record()], definition=hostile_definition(listener, secret),
          dumps={"orders.pgdump": b"PGDMP"})  # fmt: skip
    repo.close()
    target = tmp_path / "target"
    res = run_cli("recover", "--app", "shop", "--target", str(target), "--dry-run",
                  "--allow-unverified", repo=repo_path)  # fmt: skip
    # 0, or 30 where a dry run's exit code also says that the real run would refuse.
    assert res.code in (0, 30) and "Traceback" not in res.err, res.err
    assert "problem: database 'orders'" in res.out and "dry run: nothing was changed" in res.out
    assert settled(listener) == 0 and not target.exists()
    if secret.atime_works:
        assert not secret.read()


def test_verify_loads_no_dump_into_a_server_the_snapshot_names(  # type: ignore[no-untyped-def]
    repo: Repository, tmp_path: Path, listener: Listener, secret: Secret
) -> None:
    snap = forge(repo, databases=[pg_record()], definition=hostile_definition(listener, secret),
                 dumps={"orders.pgdump": b"PGDMP"})  # fmt: skip
    with pytest.raises(DatabaseError) as exc:
        run_verification(repo, snap, VerifyOptions(sandbox_dir=str(tmp_path / "sb")))
    assert settled(listener) == 0 and not secret.read()
    problem = str(exc.value)  # no server here: nothing verified, nothing recorded
    assert "no postgresql server" in problem and "--db-server" in problem
    assert f"127.0.0.1:{listener.port}" in problem  # shown, not used


def test_verify_cli_uses_the_config_server_not_the_snapshots(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, tmp_path: Path, listener: Listener, secret: Secret
) -> None:
    forge(repo, databases=[pg_record()], definition=hostile_definition(listener, secret),
          dumps={"orders.pgdump": b"PGDMP"})  # fmt: skip
    repo.close()
    local = Listener()
    config = tmp_path / "casbackup.toml"
    config.write_text(
        'version = 1\n[[applications]]\nname = "shop"\nsources = ["/srv/app"]\n'
        '[[applications.databases]]\nname = "orders"\nengine = "postgresql"\n'
        f'host = "127.0.0.1"\nport = {local.port}\nuser = "shop"\ndatabase = "orders"\n'
    )
    try:
        res = run_cli("--config", str(config), "verify", "--app", "shop", repo=repo_path)
        assert settled(local) >= 1  # the configured server was tried (and is no PostgreSQL)
    finally:
        local.close()
    # The configured server is no PostgreSQL: nothing verified, nothing recorded (27).
    assert res.code == 27 and "database 'orders': the postgresql server" in res.err
    assert settled(listener) == 0
    if secret.atime_works:
        assert not secret.read()


@pytest.mark.parametrize("how", ["dotdot", "symlink"])
def test_verify_resolves_a_stored_dump_path_inside_the_sandbox(  # type: ignore[no-untyped-def]
    repo: Repository, tmp_path: Path, how: str
) -> None:
    outside = tmp_path / "outside.sqlite"
    data = sqlite_bytes(outside, 3)  # a valid database the stored path points at
    if how == "dotdot":
        # sandbox = tmp/sb/casbackup-verify-X/files: four levels up is tmp_path.
        path = "/.databases/../../../../outside.sqlite"
        snap = forge(repo, definition=None, dumps={"real.sqlite": data},
                     databases=[DatabaseRecord("lite", "sqlite", "sqlite", "3", path, len(data),
                                               {"t": 3})])  # fmt: skip
    else:
        path = "/.databases/outside.sqlite"
        link = Node(name=b".databases", kind=NodeKind.SYMLINK, mode=0o777,
                    link_target=str(tmp_path).encode())  # fmt: skip
        snap = forge(repo, definition=None, databases_node=link,
                     databases=[DatabaseRecord("lite", "sqlite", "sqlite", "3", path, len(data),
                                               {"t": 3})])  # fmt: skip
    rec = run_verification(repo, snap, VerifyOptions(sandbox_dir=str(tmp_path / "sb"))).record
    (check,) = rec.databases
    assert not check.ok and not rec.ok
    assert "refused" in check.problem and path in check.problem


def test_verify_resolves_stored_required_files_inside_the_sandbox(  # type: ignore[no-untyped-def]
    repo: Repository, tmp_path: Path
) -> None:
    (tmp_path / "outside").write_text("x")
    # From sandbox/files/srv/app five levels up is tmp_path.
    wanted = "../../../../../outside"
    snap = forge(repo, databases=[], definition={"verification": {"required_files": [wanted]}})
    rec = run_verification(repo, snap, VerifyOptions(sandbox_dir=str(tmp_path / "sb"))).record
    assert not rec.ok
    ((path, problem),) = [(f.path, f.problem) for f in rec.failures]
    # Refused as a path leaving the tree (or, equally safe, matching nothing in it).
    assert path == wanted and ("refused" in problem or "missing" in problem)


def test_recover_keeps_a_stored_sqlite_path_inside_the_target(  # type: ignore[no-untyped-def]
    repo: Repository, tmp_path: Path
) -> None:
    data = sqlite_bytes(tmp_path / "lite.sqlite", 3)
    escape = "/srv/app/../../escaped.sqlite"  # mapped naively: target/app/../../ = tmp_path
    forge(repo, dumps={"lite.sqlite": data},
          definition={"databases": [{"name": "lite", "engine": "sqlite", "path": escape}]},
          databases=[DatabaseRecord("lite", "sqlite", "sqlite", "3", "/.databases/lite.sqlite",
                                    len(data), {"t": 3})])  # fmt: skip
    target = tmp_path / "t"
    result = recover(repo, RecoverOptions(app="shop", target=str(target), allow_unverified=True))
    assert result.ok, result.errors
    (db,) = result.plan.databases
    assert db.spec.path == str(target / "databases" / "lite.sqlite")
    assert not (tmp_path / "escaped.sqlite").exists()
    assert (target / "databases" / "lite.sqlite").exists()


def test_recover_refuses_a_dump_path_outside_the_tree(repo: Repository, tmp_path: Path) -> None:
    forge(repo, databases=[pg_record(path="/.databases/../../x")], definition=None,
          dumps={"orders.pgdump": b"PGDMP"})  # fmt: skip
    options = RecoverOptions(app="shop", target=str(tmp_path / "t"), dry_run=True,
                             allow_unverified=True, db_into={"orders": "postgresql://u@h/db"})  # fmt: skip
    problems = recover(repo, options).plan.problems
    assert any("/.databases/../../x" in p and "refused" in p for p in problems), problems


def test_stored_source_paths_stay_below_the_target(tmp_path: Path) -> None:
    target = str(tmp_path / "t")
    dests = dest_paths(target, ("/srv/..", "/.", "/", "/a\0b/c", "../../etc", "/x//../y"))
    for dest in dests.values():
        rest = os.path.relpath(dest, target).split("/")
        assert rest[0] != ".." and "\0" not in dest and not any(p in ("", ".", "..") for p in rest)
        assert os.path.normpath(dest) == dest, dest  # nothing that resolves elsewhere


def test_db_restore_needs_a_local_target(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, tmp_path: Path, listener: Listener, secret: Secret
) -> None:
    data = sqlite_bytes(tmp_path / "lite.sqlite", 3)
    planted = tmp_path / "planted.sqlite"
    definition = hostile_definition(listener, secret)
    definition["databases"].append({"name": "lite", "engine": "sqlite", "path": str(planted)})
    forge(repo, definition=definition,
          dumps={"orders.pgdump": b"PGDMP", "lite.sqlite": data},
          databases=[pg_record(), DatabaseRecord("lite", "sqlite", "sqlite", "3",
                                                 "/.databases/lite.sqlite", len(data), {"t": 3})])  # fmt: skip
    repo.close()
    for name in ("orders", "lite"):
        res = run_cli("db", "restore", "latest", "--app", "shop", "--database", name,
                      repo=repo_path, env={"CASBACKUP_CONFIG": ""})  # fmt: skip
        assert res.code == 2, res.err
        assert "does not define database" in res.err and "--into" in res.err
    assert settled(listener) == 0 and not planted.exists()
    if secret.atime_works:
        assert not secret.read()
    into = tmp_path / "chosen.sqlite"
    res = run_cli("db", "restore", "latest", "--app", "shop", "--database", "lite", "--into",
                  str(into), repo=repo_path, env={"CASBACKUP_CONFIG": ""})  # fmt: skip
    assert res.code == 0, res.err
    assert into.exists() and not planted.exists()
    assert os.path.getsize(into) > 0


def test_a_malformed_database_record_is_named_not_a_traceback(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, tmp_path: Path
) -> None:
    bad = DatabaseRecord(["not", "a", "name"], "postgresql", "custom", "15",  # type: ignore[arg-type]
                         "/.databases/x", "big", "rows")  # type: ignore[arg-type]  # fmt: skip
    snap = forge(repo, databases=[bad], definition=None)
    options = RecoverOptions(app="shop", target=str(tmp_path / "t"), dry_run=True,
                             allow_unverified=True)  # fmt: skip
    problems = recover(repo, options).plan.problems
    assert any("malformed" in p for p in problems), problems
    rec = run_verification(repo, snap, VerifyOptions(sandbox_dir=str(tmp_path / "sb"))).record
    (check,) = rec.databases
    assert not check.ok and "malformed" in check.problem and not rec.ok
    repo.close()
    res = run_cli("recover", "--app", "shop", "--target", str(tmp_path / "t"), "--dry-run",
                  "--allow-unverified", repo=repo_path)  # fmt: skip
    assert res.code in (0, 30) and "malformed" in res.out and "Traceback" not in res.err


def test_recover_cli_plan_shows_the_stored_location_and_uses_the_config(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, tmp_path: Path, listener: Listener, secret: Secret
) -> None:
    forge(repo, databases=[pg_record()], definition=hostile_definition(listener, secret),
          dumps={"orders.pgdump": b"PGDMP"})  # fmt: skip
    repo.close()
    config = tmp_path / "casbackup.toml"
    config.write_text(
        'version = 1\n[[applications]]\nname = "shop"\nsources = ["/srv/app"]\n'
        '[[applications.databases]]\nname = "orders"\nengine = "postgresql"\n'
        'host = "db.example.invalid"\nuser = "shop"\ndatabase = "orders_here"\n'
    )
    res = run_cli("--config", str(config), "recover", "--app", "shop", "--target",
                  str(tmp_path / "t"), "--dry-run", "--allow-unverified", repo=repo_path)  # fmt: skip
    assert res.code == 0, res.err
    assert "-> postgresql://shop@db.example.invalid/orders_here" in res.out
    assert (f"the snapshot says it lived at postgresql://postgres@127.0.0.1:{listener.port}/orders"
            ": shown, not used") in res.out  # fmt: skip
    assert "problem:" not in res.out
    assert settled(listener) == 0
    if secret.atime_works:
        assert not secret.read()
