"""recover from a repository damaged after verification: it refuses, says why and what to do.

A source whose folder listing cannot be read (a damaged tree pack, a lost index) must stop the
recovery before the target is touched; it must never be left out with a warning and a
report that says the recovery succeeded.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from casbackup.errors import RecoveryError
from casbackup.recovery.execute import recover
from casbackup.recovery.plan import RecoverOptions, build_plan
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.testing.fixtures import flip_stored_byte, open_repo
from casbackup.verify.sandbox import VerifyOptions, run_verification
from tests.verify.apps import backup, corrupt_file, make_app


def damage_tree(repo: Repository, repo_path: str, snap: Snapshot, folder: str) -> None:
    """Flip a byte of the stored listing (tree) of `folder` in `snap`."""
    node = repo.find_node(snap.root, folder)
    assert node is not None and node.subtree is not None
    loc = repo.locate(node.subtree)
    flip_stored_byte(repo_path, loc.pack, loc.offset, loc.stored_len, 0x40)


@pytest.fixture
def two(repo, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Two verified snapshots of "shop"; the second one holds data/new.bin."""
    app, db = make_app(tmp_path)
    first = backup(repo, app, [db])
    assert run_verification(repo, first).ok
    (app / "data" / "new.bin").write_bytes(os.urandom(30_000))
    second = backup(repo, app, [db])
    assert run_verification(repo, second).ok
    return app, first, second


def test_a_source_whose_listing_is_damaged_stops_the_recovery(  # type: ignore[no-untyped-def]
    repo, repo_path: str, tmp_path: Path, two
) -> None:
    app, first, second = two
    # The listing that holds the source itself: the source cannot even be found.
    damage_tree(repo, repo_path, second, str(app.parent))
    fresh = open_repo(repo_path)
    target = tmp_path / "t"
    with pytest.raises(RecoveryError) as exc:
        recover(fresh, RecoverOptions(app="shop", target=str(target)))
    msg = str(exc.value)
    assert exc.value.exit_code == 30 and msg.startswith("nothing was changed: ")
    assert f"source {app} cannot be read from snapshot {second.short_id}" in msg
    assert f"recover it with --snapshot {first.short_id}" in msg
    assert not target.exists()
    plan = build_plan(fresh, RecoverOptions(app="shop", target=str(target), dry_run=True))
    assert plan.files == () and len(plan.problems) == 1
    assert plan.fallback.startswith(f"the next older verified snapshot is {first.short_id}")


def test_a_damaged_subfolder_listing_stops_the_recovery(  # type: ignore[no-untyped-def]
    repo, repo_path: str, tmp_path: Path, two
) -> None:
    app, first, second = two
    damage_tree(repo, repo_path, second, f"{app}/data")
    fresh = open_repo(repo_path)
    target = tmp_path / "t"
    with pytest.raises(RecoveryError) as exc:  # was IntegrityError (22), from the planning
        recover(fresh, RecoverOptions(app="shop", target=str(target)))
    msg = str(exc.value)
    assert f"cannot be read from snapshot {second.short_id}" in msg and "damaged" in msg
    assert f"--snapshot {first.short_id}" in msg
    assert not target.exists()


def test_a_failed_recheck_names_the_older_verified_snapshot(  # type: ignore[no-untyped-def]
    repo, repo_path: str, tmp_path: Path, two
) -> None:
    app, first, second = two
    corrupt_file(repo, repo_path, second, f"{app}/data/new.bin")
    result = recover(
        open_repo(repo_path),
        RecoverOptions(app="shop", target=str(tmp_path / "t"), report=str(tmp_path / "rep")),
    )
    assert not result.ok and not (tmp_path / "t").exists()
    assert f"recover it with --snapshot {first.short_id}" in result.errors[0]


def test_no_advice_without_an_older_verified_snapshot(  # type: ignore[no-untyped-def]
    repo, repo_path: str, tmp_path: Path
) -> None:
    app, db = make_app(tmp_path)
    snap = backup(repo, app, [db])
    assert run_verification(repo, snap).ok
    damage_tree(repo, repo_path, snap, f"{app}/data")
    with pytest.raises(RecoveryError) as exc:
        recover(open_repo(repo_path), RecoverOptions(app="shop", target=str(tmp_path / "t")))
    assert "cannot be read" in str(exc.value) and "--snapshot" not in str(exc.value)


def test_an_unreadable_verification_record_is_said(  # type: ignore[no-untyped-def]
    repo, repo_path: str, tmp_path: Path, two, monkeypatch
) -> None:
    """The newest verification of the chosen snapshot failed, and that record was damaged
    afterwards: a machine that never saw it (a rebuilt one) trusts the older passing record,
    so the plan must at least say that a record could not be read."""
    app, _first, second = two
    failed = run_verification(repo, second, VerifyOptions(required_files=("no/such/file",)))
    assert not failed.ok
    path = Path(repo_path) / "verifications" / failed.record.id
    os.chmod(path, 0o600)
    path.write_bytes(path.read_bytes()[:-5])  # truncated: unreadable
    # A machine that never saw the record (else it notices the record is gone: records.py).
    monkeypatch.setenv("CASBACKUP_STATE_DIR", str(tmp_path / "rebuilt-state"))
    plan = build_plan(open_repo(repo_path), RecoverOptions(app="shop", target=str(tmp_path / "t")))
    assert plan.snapshot.id == second.id
    assert any(
        f"verification record {failed.record.id[:8]} is unreadable" in w for w in plan.warnings
    )
    assert any(
        f"verification state of snapshot {second.short_id} may be out of date" in w
        and f"casbackup verify {second.short_id}" in w
        for w in plan.warnings
    ), plan.warnings
