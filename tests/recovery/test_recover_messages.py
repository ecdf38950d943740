"""What recover says when a part fails or the run is stopped: true, and what to do next.

Found on the terminal: a database whose load was refused showed as "loaded database pg into
...: 0 rows in 0 tables (FAILED: ...)" (nothing was loaded), one failure was "failed in 1
places", and Ctrl-C during the re-check said "the target holds a partial recovery" when
nothing had been restored, during a load it named neither the database nor the way on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from casbackup.errors import Interrupted
from casbackup.recovery import execute
from casbackup.recovery.execute import recover
from casbackup.recovery.plan import RecoverOptions, build_plan
from casbackup.testing.fixtures import run_cli
from tests.loopfs import tmpfs
from tests.recovery.test_recover_rerun import interrupt_while_loading
from tests.verify.apps import backup, make_app


def test_a_database_that_was_not_loaded_is_not_called_loaded(  # type: ignore[no-untyped-def]
    repo, repo_path: str, tmp_path: Path
) -> None:
    app, local = make_app(tmp_path)
    backup(repo, app, [local])
    repo.close()
    # A file system too small for the database: the load fails half-way (a path under a
    # file, used here before, is now refused by the plan, before anything is restored).
    with tmpfs(tmp_path / "small", "size=4k") as small:
        into = small / "shop.sqlite"
        res = run_cli("recover", "--app", "shop", "--target", str(tmp_path / "t"),
                      "--allow-unverified", "--db-into", f"local={into}", repo=repo_path)  # fmt: skip
    assert res.code == 30, res.err
    assert f"did not load database local into sqlite:{into} (FAILED: " in res.out, res.out
    assert "loaded database local" not in res.out
    assert "failed in 1 place: database local: " in res.err, res.err


def test_an_interruption_says_where_it_stopped_and_what_to_do(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, local = make_app(tmp_path)
    backup(repo, app, [local])
    options = RecoverOptions(app="shop", target=str(tmp_path / "t"), allow_unverified=True)

    def stop(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(execute, "recheck", stop)
        with pytest.raises(Interrupted) as exc:
            recover(repo, options)
    assert str(exc.value).startswith("recovery interrupted before anything was restored")
    assert not (tmp_path / "t" / "app").exists()
    with monkeypatch.context() as patch:
        interrupt_while_loading(patch)
        with pytest.raises(Interrupted) as exc:
            recover(repo, options)
    where = f"sqlite:{tmp_path / 't' / 'databases' / 'local.sqlite'}"
    assert str(exc.value).startswith(
        f"recovery interrupted while loading database local into {where}; the target holds a "
        "partial recovery: run the same recover again to finish it; report: "
    ), str(exc.value)
    assert recover(repo, options).ok


def test_what_the_config_has_and_the_snapshot_lacks_is_said(  # type: ignore[no-untyped-def]
    repo, repo_path: str, tmp_path: Path
) -> None:
    """Found by adding a source and a database to an application's config: the newest
    verified snapshot predated them, and recover (dry run and real) passed over both
    without a word, as if the application were whole again."""
    app, local = make_app(tmp_path)
    snap = backup(repo, app, [local])
    repo.close()
    config = tmp_path / "casbackup.toml"
    config.write_text(
        f'version = 1\n[repository]\nlocation = "{repo_path}"\n'
        'password_env = "CASBACKUP_PASSWORD"\n'
        f'[[applications]]\nname = "shop"\nsources = ["{app}", "{tmp_path / "uploads"}"]\n'
        f'[[applications.databases]]\nname = "local"\nengine = "sqlite"\npath = "{local.path}"\n'
        '[[applications.databases]]\nname = "reports"\nengine = "sqlite"\n'
        f'path = "{tmp_path / "reports.sqlite"}"\n'
    )
    expected = (
        f"source {tmp_path / 'uploads'} is in the config but not in snapshot {snap.short_id}: "
        "not recovered",
        f"database 'reports' is in the config but not in snapshot {snap.short_id}: not recovered",
    )
    for extra in (["--dry-run"], []):
        res = run_cli("--config", str(config), "recover", "--app", "shop", "--target",
                      str(tmp_path / "t"), "--allow-unverified", *extra)  # fmt: skip
        assert res.code == 0, res.err
        for line in expected:
            assert line in res.out + res.err, (extra, res.out, res.err)
    report = (tmp_path / "t" / "recovery-report.json").read_text()
    assert all(line in report for line in expected)


def test_the_verifications_warnings_are_said(repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Found with an application holding a socket: its verification passed with a warning
    (a socket cannot be made in a sandbox), kept in the record; recover said 'verified' and
    nothing of what that verification could not prove (the same goes for roles a dump's
    privileges need that the backup does not create)."""
    import socket

    from casbackup.verify.sandbox import run_verification

    app, local = make_app(tmp_path)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(app / "data" / "app.sock"))
    try:
        snap = backup(repo, app, [local])
    finally:
        sock.close()
    record = run_verification(repo, snap).record
    assert record.ok and record.warnings
    plan = build_plan(repo, RecoverOptions(app="shop", target=str(tmp_path / "t"), dry_run=True))
    assert (
        f"the verification of snapshot {snap.short_id} ({record.time[:19]}) warned: "
        f"{record.warnings[0]}" in plan.warnings
    ), plan.warnings
