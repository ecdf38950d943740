"""Running recover again after an interrupted (or failed) recovery of the same snapshot.

The rerun takes over what the earlier run wrote (its journal in the target says which parts)
and restores it again; a target holding a user's data, or another snapshot's unfinished
recovery, is still refused, saying what to do.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from casbackup.errors import Interrupted, RecoveryError
from casbackup.maintenance.tags import TagChange, change_tags
from casbackup.recovery import execute
from casbackup.recovery.execute import recover
from casbackup.recovery.journal import JOURNAL_NAME, database_locks, read_journal, target_lock
from casbackup.recovery.plan import RecoverOptions, build_plan
from casbackup.verify.sandbox import run_verification
from tests.recovery.places import landed
from tests.recovery.test_recover import tree
from tests.verify.apps import backup, make_app


def rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM orders").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def shop(repo, tmp_path: Path):  # type: ignore[no-untyped-def]
    app, db = make_app(tmp_path)
    snap = backup(repo, app, [db])
    assert run_verification(repo, snap).ok
    return app, snap


def interrupt_while_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next recovery stops (as Ctrl-C or a kill would) once it starts on the database,
    after writing part of it."""

    def killed(repo: Any, plan: Any, db: Any, *args: Any) -> None:
        os.makedirs(os.path.dirname(db.spec.path), exist_ok=True)
        Path(db.spec.path).write_bytes(b"half a database")
        raise KeyboardInterrupt

    monkeypatch.setattr(execute, "_restore_database", killed)


def test_a_rerun_finishes_an_interrupted_recovery(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, shop, monkeypatch
) -> None:
    app, snap = shop
    target = tmp_path / "t"
    options = RecoverOptions(app="shop", target=str(target))
    with monkeypatch.context() as patch:
        interrupt_while_loading(patch)
        with pytest.raises(Interrupted):
            recover(repo, options)
    journal = read_journal(str(target))
    assert journal is not None and journal.snapshot == snap.id
    assert journal.files == (str(landed(target, tmp_path / "app")),)
    assert journal.databases == (f"sqlite:{target}/databases/local.sqlite",)
    # The files were restored whole before the stop: left as they are (a kill in the middle
    # of the files: test_recover_resume.py); the database it began is loaded again.
    plan = build_plan(repo, RecoverOptions(app="shop", target=str(target), dry_run=True))
    assert plan.problems == ()
    assert [f.resumed for f in plan.files] == [True] and plan.databases[0].overwrite
    assert plan.files[0].done_by and not plan.databases[0].done_by
    assert any("unfinished recovery of this snapshot" in w for w in plan.warnings)

    result = recover(repo, options)
    assert result.ok, result.errors
    assert tree(landed(target, tmp_path / "app")) == tree(app)
    assert rows(target / "databases" / "local.sqlite") == 200
    assert not (target / JOURNAL_NAME).exists()  # finished: a rerun is a new recovery
    with pytest.raises(RecoveryError, match="already exists in the target and is not empty"):
        recover(repo, options)


def test_a_failed_recovery_can_be_run_again(repo, tmp_path: Path, shop, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "t"
    options = RecoverOptions(app="shop", target=str(target))

    def failed(repo: Any, plan: Any, db: Any, options: Any, reporter: Any, errors: list[str],
               warnings: list[str]) -> dict[str, Any]:  # fmt: skip
        errors.append("database local: the server went away")
        return {"name": "local", "ok": False, "error": "the server went away", "row_counts": {},
                "engine": "sqlite", "target": db.where, "dump_size": 0, "dump_blake3": ""}  # fmt: skip

    with monkeypatch.context() as patch:
        patch.setattr(execute, "_restore_database", failed)
        assert not recover(repo, options).ok
    assert (target / JOURNAL_NAME).exists()  # kept: the recovery is not finished
    result = recover(repo, options)
    assert result.ok and rows(target / "databases" / "local.sqlite") == 200


def test_another_snapshots_unfinished_recovery_is_refused(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, shop, monkeypatch
) -> None:
    app, first = shop
    target = tmp_path / "t"
    with monkeypatch.context() as patch:
        interrupt_while_loading(patch)
        with pytest.raises(Interrupted):
            recover(repo, RecoverOptions(app="shop", target=str(target)))
    (app / "data" / "later.txt").write_text("later\n")
    second = backup(repo, app, [])
    assert run_verification(repo, second).ok
    with pytest.raises(RecoveryError) as exc:
        recover(repo, RecoverOptions(app="shop", target=str(target)))
    msg = str(exc.value)
    assert f"unfinished recovery of 'shop' from snapshot {first.short_id}" in msg
    assert f"--snapshot {first.short_id}" in msg and str(target / JOURNAL_NAME) in msg
    assert not (landed(target, tmp_path / "app") / "data" / "later.txt").exists()
    # As told: finish the first one.
    result = recover(repo, RecoverOptions(app="shop", target=str(target), snapshot=first.id))
    assert result.ok and not (target / JOURNAL_NAME).exists()


def test_a_users_data_is_still_refused_and_the_message_says_what_to_do(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, shop
) -> None:
    target = tmp_path / "t"
    (landed(target, tmp_path / "app")).mkdir(parents=True)
    (landed(target, tmp_path / "app") / "precious").write_text("keep me")
    # A journal that is not one (damaged, or not ours) gives no right to replace anything.
    (target / JOURNAL_NAME).write_text("{not json")
    with pytest.raises(RecoveryError) as exc:
        recover(repo, RecoverOptions(app="shop", target=str(target)))
    assert (
        "already exists in the target and is not empty (remove it, or choose another --target)"
        in str(exc.value)
    )
    assert (landed(target, tmp_path / "app") / "precious").read_text() == "keep me"


def test_ctrl_c_while_restoring_files_stops_the_whole_recovery(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, shop, monkeypatch
) -> None:
    """Found with a real SIGINT during the files: restore's Interrupted is a CasError, so the
    recovery noted it as a failed part, went on to load every database and exited 30."""
    target = tmp_path / "t"
    real_restore = execute.restore

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise Interrupted("restore interrupted; the target holds a partial restore")

    monkeypatch.setattr(execute, "restore", interrupted)
    with pytest.raises(Interrupted) as exc:
        recover(repo, RecoverOptions(app="shop", target=str(target)))
    assert exc.value.exit_code == 130 and "recovery interrupted" in str(exc.value)
    assert not (target / "databases" / "local.sqlite").exists()  # no database was loaded
    assert (target / JOURNAL_NAME).exists()
    monkeypatch.setattr(execute, "restore", real_restore)
    assert recover(repo, RecoverOptions(app="shop", target=str(target))).ok


def test_a_tag_change_between_the_runs_does_not_lock_the_target(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, shop, monkeypatch
) -> None:
    """Found by tagging the snapshot ('incident') after an interrupted recovery: the tag gave
    it a new id, the journal named the old one, and the rerun was refused as 'an unfinished
    recovery of snapshot X', advising --snapshot X, which named the same snapshot and was
    refused again."""
    app, snap = shop
    target = tmp_path / "t"
    options = RecoverOptions(app="shop", target=str(target))
    with monkeypatch.context() as patch:
        interrupt_while_loading(patch)
        with pytest.raises(Interrupted):
            recover(repo, options)
    with repo.locked(exclusive=True):
        change_tags(repo, [snap.id], TagChange(add=("incident",)))
    result = recover(repo, options)
    assert result.ok, result.errors
    assert (
        tree(landed(target, tmp_path / "app")) == tree(app)
        and rows(target / "databases" / "local.sqlite") == 200
    )


def test_a_second_recovery_into_the_same_target_is_refused_before_it_plans(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, shop
) -> None:
    """Found by starting the same recover in two terminals: both planned on the empty target,
    then each restored over the other ('exists in the target'), both failed with half of
    each in the target, and the later report replaced the other's."""
    target = tmp_path / "t"
    options = RecoverOptions(app="shop", target=str(target))
    with target_lock(str(target)):  # the first recovery, running
        with pytest.raises(RecoveryError) as exc:
            recover(repo, options)
        assert str(exc.value) == (
            f"nothing was changed: another recovery into {target} is running (process "
            f"{os.getpid()}): wait for it to end, or stop it and run this again"
        )
        assert not target.exists()
        assert recover(repo, replace(options, dry_run=True)).plan.problems == ()  # reads only
    assert recover(repo, options).ok  # once it ended


def test_a_second_recovery_into_the_same_database_is_refused_before_it_restores(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, shop
) -> None:
    """Found by starting two recoveries of one application into two targets, both told to
    load its database into one PostgreSQL database: both found it absent, and the slower
    one failed after restoring every file ('database "..." already exists'). Now the
    second is refused with nothing changed."""
    into = tmp_path / "shared" / "local.sqlite"
    options = RecoverOptions(app="shop", target=str(tmp_path / "t2"), db_into={"local": str(into)})
    with database_locks([f"sqlite:{into}"]):  # the first recovery, loading it
        with pytest.raises(RecoveryError) as exc:
            recover(repo, options)
        assert str(exc.value) == (
            f"nothing was changed: another recovery is loading database sqlite:{into} "
            f"(process {os.getpid()}): wait for it to end, or stop it and run this again"
        )
        assert not (tmp_path / "t2").exists() and not into.exists()
    assert recover(repo, options).ok and rows(into) == 200  # once it ended


def test_a_rerun_finishes_an_interrupted_recovery_in_place(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, shop, monkeypatch
) -> None:
    """In place, the journal is in the state folder (never in /): a rerun finds it there,
    leaves the sources the stopped run finished and loads the database it began."""
    import shutil

    from casbackup.engines.base import DatabaseSpec
    from casbackup.recovery.journal import journal_path
    from casbackup.repo.localstate import state_root

    app, _snap = shop
    expected = tree(app)
    shutil.rmtree(app)
    db = tmp_path / "shop.sqlite"
    db.unlink()  # the database beside the folder went with the machine too
    options = RecoverOptions(app="shop", target="/", configured_sources=(str(app),),
                             configured={"local": DatabaseSpec("local", "sqlite", path=str(db))},
                             report=str(tmp_path / "report"))  # fmt: skip
    with monkeypatch.context() as patch:
        interrupt_while_loading(patch)
        with pytest.raises(Interrupted):
            recover(repo, options)
    assert journal_path("/") == os.path.join(state_root(), "recover-in-place.json")
    journal = read_journal("/")
    assert journal is not None and journal.files == (str(app),)
    assert journal.databases == (f"sqlite:{db}",) and db.read_bytes() == b"half a database"
    assert not os.path.exists("/" + JOURNAL_NAME)
    result = recover(repo, options)
    assert result.ok, result.errors
    assert tree(app) == expected and rows(db) == 200
    assert read_journal("/") is None
