"""recover and snapshots rewritten to take files out (`casbackup rewrite` without --forget).

A rewritten copy keeps its original's time, so neither is newer than the other. Found by
rewriting a verified snapshot to take out a leaked key and verifying the copy: recover chose
between the two by id order, and here chose the original, putting the key back on the rebuilt
machine; with only the original verified, it said nothing of the copy.
"""

from __future__ import annotations

from pathlib import Path

from casbackup.archiver.excludes import Excluder
from casbackup.maintenance.rewrite import rewrite_snapshots
from casbackup.recovery.execute import recover
from casbackup.recovery.plan import RecoverOptions, build_plan
from casbackup.verify.sandbox import run_verification
from tests.verify.apps import backup, make_app


def _leaked_and_rewritten(repo, tmp_path: Path):  # type: ignore[no-untyped-def]
    app, local = make_app(tmp_path)
    (app / "conf" / "id_rsa").write_text("PRIVATE KEY\n")
    original = backup(repo, app, [local])
    assert run_verification(repo, original).ok
    with repo.locked(exclusive=True):
        done = rewrite_snapshots(repo, [original], Excluder(["id_rsa"]))
    copy = repo.resolve_snapshot(done.rewritten[0].new)
    return app, original, copy


def test_the_verified_rewritten_copy_is_chosen_over_its_original(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path
) -> None:
    _app, original, copy = _leaked_and_rewritten(repo, tmp_path)
    assert copy.start_ns == original.start_ns
    assert run_verification(repo, copy).ok
    plan = build_plan(repo, RecoverOptions(app="shop", target=str(tmp_path / "t"), dry_run=True))
    assert plan.snapshot.id == copy.id  # whichever of the two ids sorts last
    result = recover(repo, RecoverOptions(app="shop", target=str(tmp_path / "t")))
    assert result.ok and not (tmp_path / "t" / "app" / "conf" / "id_rsa").exists()


def test_an_unverified_rewritten_copy_is_said(repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _app, original, copy = _leaked_and_rewritten(repo, tmp_path)
    plan = build_plan(repo, RecoverOptions(app="shop", target=str(tmp_path / "t"), dry_run=True))
    assert plan.snapshot.id == original.id
    assert any(
        f"snapshot {copy.short_id}" in w and "rewritten copy" in w and "not verified" in w
        for w in plan.warnings
    ), plan.warnings
