"""A sandbox that runs out of room is this machine's limit, not a failed snapshot.

Recorded as a failed verification it would override the snapshot's earlier pass, and recover
would pass over a sound snapshot; so nothing is recorded and the error says what to do.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from casbackup.errors import StorageError
from casbackup.verify.records import latest_verification, list_records
from casbackup.verify.sandbox import VerifyOptions, run_verification
from tests.loopfs import tmpfs
from tests.verify.apps import backup, make_app


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MB file system (tests/loopfs.py: root and mount(8), else skipped)."""
    with tmpfs(tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}", "size=1m") as where:
        yield where


def test_a_full_sandbox_records_nothing(repo, tmp_path: Path, small_tmpfs: Path) -> None:  # type: ignore[no-untyped-def]
    app, db = make_app(tmp_path)
    for i in range(20):  # 2 MB: more than the sandbox's file system holds
        (app / "data" / f"big{i:02d}.bin").write_bytes(os.urandom(100_000))
    snap = backup(repo, app, [db])
    passed = run_verification(repo, snap).record
    assert passed.ok
    with pytest.raises(StorageError) as exc:
        run_verification(repo, snap, VerifyOptions(sandbox_dir=str(small_tmpfs)))
    msg = str(exc.value)
    assert exc.value.exit_code == 25
    assert msg.startswith(f"snapshot {snap.short_id} could not be verified, nothing was recorded: ")
    assert "takes no more data (No space left on device)" in msg and "--sandbox" in msg
    assert [r.id for r in list_records(repo).records] == [passed.id]
    latest = latest_verification(repo, snap.id)
    assert latest is not None and latest.ok  # still verified: recover still uses it
    assert os.listdir(small_tmpfs) == []  # the sandbox is gone


def test_a_sandbox_that_cannot_be_made_is_one_line_and_records_nothing(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path
) -> None:
    """Found with --sandbox on a read-only file system: 'error: Read-only file system:
    /mnt/ro/sb', exit 1, naming neither the snapshot nor what to do."""
    app, db = make_app(tmp_path)
    snap = backup(repo, app, [db])
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StorageError) as exc:
        run_verification(repo, snap, VerifyOptions(sandbox_dir=str(tmp_path / "afile" / "sb")))
    assert str(exc.value) == (
        f"snapshot {snap.short_id} could not be verified, nothing was recorded: the sandbox "
        f"cannot be made in {tmp_path / 'afile' / 'sb'}: Not a directory (give --sandbox a "
        "folder this user can write)"
    )
    assert list_records(repo).records == []
