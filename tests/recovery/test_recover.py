"""recover with files and SQLite: choosing the snapshot, re-checking, restoring, reporting."""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from casbackup.errors import RecoveryError
from casbackup.recovery.execute import recover
from casbackup.recovery.plan import RecoverOptions, build_plan
from casbackup.verify.sandbox import run_verification
from tests.recovery.places import landed
from tests.verify.apps import backup, corrupt_file, make_app


def rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM orders").fetchone()[0])
    finally:
        conn.close()


def tree(root: Path) -> dict[str, bytes | str]:
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = p.read_bytes()
            else:
                out[rel] = "dir"
    return out


@pytest.fixture
def shop(repo, tmp_path: Path):  # type: ignore[no-untyped-def]
    app, db = make_app(tmp_path)
    snap = backup(repo, app, [db])
    assert run_verification(repo, snap).ok
    return app, db, snap


def test_recovers_files_and_database_and_reports_it(repo, tmp_path: Path, shop) -> None:  # type: ignore[no-untyped-def]
    app, db, snap = shop
    expected = tree(app)
    target = tmp_path / "rebuilt"
    result = recover(repo, RecoverOptions(app="shop", target=str(target)))
    assert result.ok, result.errors
    assert tree(landed(target, tmp_path / "app")) == expected
    restored_db = target / "databases" / "local.sqlite"
    assert rows(restored_db) == 200
    report = json.loads((target / "recovery-report.json").read_text())
    assert report["ok"] and report["snapshot"]["id"] == snap.id
    assert report["verification"]["ok"] and report["verification"]["snapshot_id"] == snap.id
    assert (
        report["files"][0]["source"] == str(app) and report["files"][0]["bytes"] == 150_000 + 17 + 6
    )
    (dbrep,) = report["databases"]
    assert dbrep["ok"] and dbrep["row_counts"] == {"orders": 200} == dbrep["expected_row_counts"]
    assert len(dbrep["dump_blake3"]) == 64 and dbrep["target"] == f"sqlite:{restored_db}"
    assert report["recheck"]["files"] == 5 and report["recheck"]["problems"] == []
    blob = next(m for m in report["recheck"]["manifest"] if m["path"].endswith("blob.bin"))
    assert blob["restored_to"] == str(landed(target, tmp_path / "app") / "data" / "blob.bin")
    assert any("outside the recovered sources" in w for w in report["warnings"])
    md = (target / "recovery-report.md").read_text()
    assert "SUCCEEDED" in md and "| local | sqlite |" in md and snap.short_id in md


def test_refuses_an_unverified_snapshot(repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app, db = make_app(tmp_path)
    snap = backup(repo, app, [db])
    target = tmp_path / "t"
    with pytest.raises(RecoveryError) as exc:
        recover(repo, RecoverOptions(app="shop", target=str(target)))
    assert exc.value.exit_code == 30
    msg = str(exc.value)
    assert f"snapshot {snap.short_id}" in msg and "never verified" in msg
    assert "no snapshot of it is verified" in msg and "--allow-unverified" in msg
    assert not target.exists()
    result = recover(repo, RecoverOptions(app="shop", target=str(target), allow_unverified=True))
    assert result.ok and rows(target / "databases" / "local.sqlite") == 200
    assert result.report is not None and result.report["verification"] is None


def test_a_damaged_newer_snapshot_fails_verify_and_recover_uses_the_older_one(  # type: ignore[no-untyped-def]
    repo, repo_path: str, tmp_path: Path, shop
) -> None:
    app, db, first = shop
    (app / "data" / "new.bin").write_bytes(os.urandom(40_000))
    second = backup(repo, app, [db])
    corrupt_file(repo, repo_path, second, f"{app}/data/new.bin")
    rec = run_verification(repo, second).record
    assert not rec.ok and [f.path for f in rec.failures] == [f"{app}/data/new.bin"]

    plan = build_plan(repo, RecoverOptions(app="shop", target=str(tmp_path / "t"), dry_run=True))
    assert plan.snapshot.id == first.id
    assert any(second.short_id in w and "not verified" in w for w in plan.warnings)

    with pytest.raises(RecoveryError) as exc:
        recover(
            repo, RecoverOptions(app="shop", target=str(tmp_path / "t"), snapshot=second.id[:10])
        )
    msg = str(exc.value)
    assert f"{second.short_id}" in msg and "verification FAILED" in msg
    assert f"the newest verified one is {first.short_id}" in msg

    result = recover(repo, RecoverOptions(app="shop", target=str(tmp_path / "t")))
    assert (
        result.ok and not (landed(tmp_path / "t", tmp_path / "app") / "data" / "new.bin").exists()
    )


def test_damage_after_verification_stops_before_the_target_is_touched(  # type: ignore[no-untyped-def]
    repo, repo_path: str, tmp_path: Path, shop
) -> None:
    app, _db, snap = shop
    corrupt_file(repo, repo_path, snap, f"{app}/data/blob.bin")
    target = tmp_path / "t"
    result = recover(
        repo, RecoverOptions(app="shop", target=str(target), report=str(tmp_path / "rep"))
    )
    assert not result.ok
    assert any(f"{app}/data/blob.bin" in e for e in result.errors)
    assert not target.exists()  # the report went elsewhere; nothing was restored
    report = json.loads((tmp_path / "rep.json").read_text())
    assert not report["ok"] and report["files"] == [] and report["databases"] == []
    assert "FAILED" in (tmp_path / "rep.md").read_text()
    with pytest.raises(RecoveryError, match="failed in"):
        result.raise_if_failed()


def test_dry_run_changes_nothing(repo, tmp_path: Path, shop) -> None:  # type: ignore[no-untyped-def]
    app, _db, snap = shop
    target = tmp_path / "t"
    result = recover(repo, RecoverOptions(app="shop", target=str(target), dry_run=True))
    assert result.report is None and not target.exists()
    (item,) = result.plan.files
    assert (item.source, item.target, item.files, item.bytes) == (
        str(app),
        str(landed(target, tmp_path / "app")),
        4,
        150_023,
    )
    (db,) = result.plan.databases
    assert db.where == f"sqlite:{target}/databases/local.sqlite" and not db.overwrite


def test_non_empty_targets_are_refused_up_front(repo, tmp_path: Path, shop) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "t"
    (landed(target, tmp_path / "app")).mkdir(parents=True)
    (landed(target, tmp_path / "app") / "precious").write_text("keep me")
    (target / "databases").mkdir()
    existing_db = target / "databases" / "local.sqlite"
    existing_db.write_bytes(b"x" * 10)
    with pytest.raises(RecoveryError) as exc:
        recover(repo, RecoverOptions(app="shop", target=str(target)))
    assert "nothing was changed" in str(exc.value)
    assert f"{landed(target, tmp_path / 'app')} already exists" in str(
        exc.value
    ) and "local.sqlite already exists" in str(exc.value)
    assert (landed(target, tmp_path / "app") / "precious").read_text() == "keep me"
    assert existing_db.read_bytes() == b"x" * 10
    (landed(target, tmp_path / "app") / "precious").unlink()
    result = recover(repo, RecoverOptions(app="shop", target=str(target), overwrite_databases=True))
    assert result.ok and rows(existing_db) == 200


def test_no_databases_and_db_into(repo, tmp_path: Path, shop) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "t"
    result = recover(repo, RecoverOptions(app="shop", target=str(target), databases=False))
    assert result.ok and not (target / "databases").exists()
    assert result.report is not None and result.report["databases"] == []
    elsewhere = tmp_path / "elsewhere.db"
    result = recover(repo, RecoverOptions(app="shop", target=str(tmp_path / "t2"),
                                          db_into={"local": str(elsewhere)}))  # fmt: skip
    assert result.ok and rows(elsewhere) == 200


def test_a_sqlite_database_inside_the_sources_replaces_its_raw_copy(repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app, db = make_app(tmp_path)
    inside = app / "data" / "shop.sqlite"
    os.replace(db.path, inside)  # type: ignore[arg-type]
    os.chmod(inside, 0o640)
    db = replace(db, path=str(inside))
    snap = backup(repo, app, [db])
    run_verification(repo, snap)
    target = tmp_path / "t"
    result = recover(repo, RecoverOptions(app="shop", target=str(target)))
    assert result.ok, result.errors
    restored = landed(target, tmp_path / "app") / "data" / "shop.sqlite"
    assert rows(restored) == 200 and os.stat(restored).st_mode & 0o777 == 0o640
    assert result.plan.databases[0].overwrite


def test_an_sqlite_database_without_a_stored_definition_goes_inside_the_target(
    repo, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    app, db = make_app(tmp_path)
    snap = backup(repo, app, [db])
    run_verification(repo, snap)
    # A definition without databases (an older program, or a hand-made snapshot): an SQLite
    # database needs no outside location, it is rebuilt inside the target.
    from casbackup.recovery import plan as plan_mod

    real = plan_mod.definition_specs
    plan_mod.definition_specs = lambda d: {}  # type: ignore[assignment]
    try:
        result = recover(repo, RecoverOptions(app="shop", target=str(tmp_path / "t")))
    finally:
        plan_mod.definition_specs = real  # type: ignore[assignment]
    assert result.ok, result.errors
    assert rows(tmp_path / "t" / "databases" / "local.sqlite") == 200


def test_unknown_application_and_foreign_snapshot(repo, tmp_path: Path, shop) -> None:  # type: ignore[no-untyped-def]
    app, db, snap = shop
    with pytest.raises(RecoveryError, match="no snapshot of application 'other'"):
        recover(repo, RecoverOptions(app="other", target=str(tmp_path / "t")))
    other = backup(repo, app, [db], name="other")
    with pytest.raises(RecoveryError, match="belongs to other"):
        recover(repo, RecoverOptions(app="shop", target=str(tmp_path / "t"), snapshot=other.id))
