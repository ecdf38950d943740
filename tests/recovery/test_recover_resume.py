"""A rerun after a partial recovery leaves the parts the earlier run finished as they are.

Found by a recovery that restored the files and the first database, then was interrupted
while loading the second: the operator fixed the restored config and let the application
take orders on the first database, and the rerun (as told, to finish the recovery) restored
every file and reloaded every database again, reverting the config and dropping the orders,
with only 'what it wrote is restored again' to say so.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from casbackup.engines.base import DatabaseSpec
from casbackup.errors import Interrupted
from casbackup.recovery import execute
from casbackup.recovery.execute import recover
from casbackup.recovery.plan import RecoverOptions, build_plan
from tests.recovery.places import landed
from tests.recovery.test_recover import rows, tree
from tests.verify.apps import backup, make_app


def second_db(root: Path) -> DatabaseSpec:
    path = root / "second.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(50)])
    conn.commit()
    conn.close()
    return DatabaseSpec(name="second", engine="sqlite", path=str(path))


def test_a_rerun_leaves_what_the_earlier_run_finished(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, local = make_app(tmp_path)
    backup(repo, app, [local, second_db(tmp_path)])
    target = tmp_path / "t"
    options = RecoverOptions(app="shop", target=str(target), allow_unverified=True)
    real = execute._restore_database

    def stopped_at_second(repo: Any, plan: Any, db: Any, *args: Any) -> Any:
        if db.record.name == "second":
            raise KeyboardInterrupt
        return real(repo, plan, db, *args)

    with monkeypatch.context() as patch:
        patch.setattr(execute, "_restore_database", stopped_at_second)
        with pytest.raises(Interrupted):
            recover(repo, options)
    # Meanwhile the operator fixes the config and the application takes an order.
    (landed(target, tmp_path / "app") / "conf" / "settings.ini").write_text("[db]\nname = fixed\n")
    conn = sqlite3.connect(target / "databases" / "local.sqlite")
    conn.execute("INSERT INTO orders (item) VALUES ('taken after the recovery')")
    conn.commit()
    conn.close()

    plan = build_plan(repo, RecoverOptions(app="shop", target=str(target), dry_run=True,
                                           allow_unverified=True))  # fmt: skip
    assert [f.done_by != "" for f in plan.files] == [True]
    assert [(d.record.name, d.done_by != "") for d in plan.databases] == [
        ("local", True), ("second", False)]  # fmt: skip
    result = recover(repo, options)
    assert result.ok, result.errors
    assert (
        landed(target, tmp_path / "app") / "conf" / "settings.ini"
    ).read_text() == "[db]\nname = fixed\n"
    assert rows(target / "databases" / "local.sqlite") == 201
    conn = sqlite3.connect(target / "databases" / "second.sqlite")
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 50
    conn.close()
    report = json.loads((target / "recovery-report.json").read_text())
    (files,) = report["files"]
    assert files["left_as_is"].startswith("restored by the earlier run started ")
    local_rep, second_rep = report["databases"]
    assert local_rep["left_as_is"].startswith("loaded by the earlier run started ")
    assert local_rep["ok"] and local_rep["row_counts"] == {"orders": 201}
    assert second_rep["ok"] and "left_as_is" not in second_rep


def test_a_part_the_earlier_run_did_not_finish_is_restored_again(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, local = make_app(tmp_path)
    backup(repo, app, [local])
    target = tmp_path / "t"
    options = RecoverOptions(app="shop", target=str(target), allow_unverified=True)
    real = execute.restore

    def half(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        (
            landed(target, tmp_path / "app") / "data" / "blob.bin"
        ).unlink()  # not there yet when it stopped
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(execute, "restore", half)
        with pytest.raises(Interrupted):
            recover(repo, options)
    result = recover(repo, options)
    assert result.ok, result.errors
    assert (
        tree(landed(target, tmp_path / "app")) == tree(app)
        and rows(target / "databases" / "local.sqlite") == 200
    )
    assert "left_as_is" not in json.loads((target / "recovery-report.json").read_text())["files"][0]


def test_a_finished_database_removed_since_is_loaded_again(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator starting over removes what the earlier run wrote but leaves its journal:
    a database it finished and that is gone now is loaded, not reported unreadable."""
    app, local = make_app(tmp_path)
    backup(repo, app, [local, second_db(tmp_path)])
    target = tmp_path / "t"
    options = RecoverOptions(app="shop", target=str(target), allow_unverified=True)
    real = execute._restore_database

    def stopped_at_second(repo: Any, plan: Any, db: Any, *args: Any) -> Any:
        if db.record.name == "second":
            raise KeyboardInterrupt
        return real(repo, plan, db, *args)

    with monkeypatch.context() as patch:
        patch.setattr(execute, "_restore_database", stopped_at_second)
        with pytest.raises(Interrupted):
            recover(repo, options)
    (target / "databases" / "local.sqlite").unlink()
    result = recover(repo, options)
    assert result.ok, result.errors
    assert rows(target / "databases" / "local.sqlite") == 200
