"""recover onto targets that cannot take it: read-only, full, not a folder; and a report that
cannot be written where asked. The recovery refuses before reading the snapshot when it can
tell, and otherwise says what is back; the report always lands somewhere, and says so."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from casbackup.errors import RecoveryError
from casbackup.recovery import execute
from casbackup.recovery.execute import recover
from casbackup.recovery.plan import RecoverOptions, build_plan
from casbackup.verify.sandbox import run_verification
from tests.loopfs import tmpfs
from tests.recovery.places import landed
from tests.verify.apps import backup, make_app


@pytest.fixture
def shop(repo, tmp_path: Path):  # type: ignore[no-untyped-def]
    app, db = make_app(tmp_path)
    for i in range(20):  # 20 x 100 KB: more than the 1 MB file system below takes
        (app / "data" / f"big{i:02d}.bin").write_bytes(os.urandom(100_000))
    snap = backup(repo, app, [db])
    assert run_verification(repo, snap).ok
    return app, snap


@pytest.fixture
def mounts() -> Iterator[Callable[[Path, str], Path]]:
    """``mounts(where, options)``: a real tmpfs there (tests/loopfs.py: root and mount(8),
    else skipped), unmounted after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda where, options: stack.enter_context(tmpfs(where, options))


def test_a_read_only_target_is_refused_before_anything_is_read(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, shop, mounts, monkeypatch
) -> None:
    ro = tmp_path / f"ro-{uuid.uuid4().hex[:6]}"
    mounts(ro, "size=1m,ro")

    def no_recheck(*args: object, **kwargs: object) -> object:
        raise AssertionError("the re-check ran for a target that cannot be written")

    monkeypatch.setattr(execute, "recheck", no_recheck)
    with pytest.raises(RecoveryError) as exc:
        recover(repo, RecoverOptions(app="shop", target=str(ro / "rebuilt")))
    assert str(exc.value) == (
        f"nothing was changed: the target {ro / 'rebuilt'} is on a read-only file system"
    )
    plan = build_plan(repo, RecoverOptions(app="shop", target=str(ro), dry_run=True))
    assert plan.problems == (f"the target {ro} is on a read-only file system",)


def test_a_target_below_a_file_is_refused(repo, tmp_path: Path, shop) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(RecoveryError) as exc:
        recover(repo, RecoverOptions(app="shop", target=str(tmp_path / "afile" / "t")))
    assert f"{tmp_path / 'afile'} is not a folder" in str(exc.value)


def test_a_full_target_says_what_is_back_and_the_report_goes_elsewhere(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, shop, mounts, monkeypatch
) -> None:
    small = tmp_path / f"small-{uuid.uuid4().hex[:6]}"
    mounts(small, "size=1m")
    spare = tmp_path / "spare-tmp"
    spare.mkdir()
    monkeypatch.setenv("TMPDIR", str(spare))
    monkeypatch.setattr("tempfile.tempdir", None)
    plan = build_plan(repo, RecoverOptions(app="shop", target=str(small), dry_run=True))
    assert any("has 1.0 MiB free" in w and "likely stop" in w for w in plan.warnings), plan
    result = recover(repo, RecoverOptions(app="shop", target=str(small)))
    assert not result.ok and result.report is not None and result.report_files is not None
    (files,) = result.report["files"]
    restored = sum(1 for _ in (landed(small, tmp_path / "app") / "data").glob("big*.bin"))
    assert 0 < restored < 20
    # What did come back is counted (it used to say 0 files), and the stop is named.
    assert files["files"] >= restored and files["bytes"] > 0
    assert "takes no more data" in files["errors"][-1]
    json_path = Path(result.report_files[0])
    assert json_path.parent.parent == spare and json_path.name == "recovery-report.json"
    assert Path(result.report_files[1]).exists()
    assert any(
        e.startswith(f"the report could not be written to {small}/recovery-report.json: ")
        and e.endswith(f"it is at {json_path} instead")
        for e in result.errors
    ), result.errors
    doc = json.loads(json_path.read_text())
    assert doc["ok"] is False and doc["errors"] == result.errors
    assert not (small / "recovery-report.json").exists()
    assert not (small / "recovery-report.md").exists()


def test_a_report_that_cannot_be_written_where_asked_goes_to_the_temp_folder(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, shop, monkeypatch
) -> None:
    spare = tmp_path / "spare-tmp"
    spare.mkdir()
    monkeypatch.setenv("TMPDIR", str(spare))
    monkeypatch.setattr("tempfile.tempdir", None)
    (tmp_path / "afile").write_text("x")
    asked = tmp_path / "afile" / "rep"
    result = recover(
        repo, RecoverOptions(app="shop", target=str(tmp_path / "t"), report=str(asked))
    )
    # Everything was restored; only the report is not where it was asked to be.
    assert (landed(tmp_path / "t", tmp_path / "app") / "data" / "big19.bin").exists()
    assert result.report_files is not None
    assert Path(result.report_files[0]).parent.parent == spare
    assert result.errors == [
        f"the report could not be written to {asked}.json: Not a directory; "
        f"it is at {result.report_files[0]} instead"
    ]
    with pytest.raises(RecoveryError, match="the report could not be written"):
        result.raise_if_failed()
