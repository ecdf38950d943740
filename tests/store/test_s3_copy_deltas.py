"""casbackup copy of delta chunks into S3 (moto's server on 127.0.0.1), killed midway:
packs go up in order, so no index names a delta whose base's pack is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from casbackup import access
from casbackup.maintenance.copy import CopyOptions, copy_snapshots
from casbackup.repo import blobstore, delta
from casbackup.repo.ids import Kind
from casbackup.repo.repository import Repository
from casbackup.testing.faults import FaultScript, FaultyBackend, ProcessDeath
from casbackup.testing.fixtures import PASSWORD, make_repo, open_repo
from casbackup.verify.check import CheckOptions, check
from tests.maintenance.test_copy_deltas import chunk_kinds, copied, six_nights
from tests.repo.test_delta import DEPTH, read_dump


@pytest.fixture(autouse=True)
def _shallow_chains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delta, "MAX_DEPTH", DEPTH)


@pytest.mark.parametrize("crash_after_puts", [3, 6, 9])
def test_a_copy_of_deltas_into_s3_killed_midway_leaves_no_delta_without_its_base(
    repo: Repository,
    tmp_path: Path,
    moto_location: str,
    monkeypatch: pytest.MonkeyPatch,
    crash_after_puts: int,
) -> None:
    """Packs go up one after the other (the upload thread) with small packs and frequent
    index files: whenever the copy dies, every delta the destination's index names has its
    base, check passes, and a rerun finishes with every night readable."""
    chained = six_nights(repo, tmp_path)
    monkeypatch.setattr(blobstore, "INDEX_FLUSH_PACKS", 1)
    expected = {s.id: read_dump(repo, s) for s in chained}
    make_repo(access.open_backend(moto_location)).close()  # 1 MiB packs
    faulty = FaultyBackend(
        access.open_backend(moto_location), FaultScript(crash_after_puts=crash_after_puts)
    )
    dst = Repository.open(faulty, PASSWORD.encode())
    with pytest.raises(ProcessDeath):
        copy_snapshots(repo, dst, CopyOptions())
    dst = open_repo(access.open_backend(moto_location))  # a new process
    try:
        assert check(dst, CheckOptions(read_data=True, workers=1)).ok
        copy_snapshots(repo, dst, CopyOptions())
        copies = copied(dst, chained)
        assert any(Kind.DELTA in chunk_kinds(dst, c) for c in copies)
        for original, copy in zip(chained, copies, strict=True):
            assert read_dump(dst, copy) == expected[original.id]
        assert check(dst, CheckOptions(read_data=True, workers=1)).ok
    finally:
        dst.close()
