"""Reader processes: nonce safety, deduplication across readers, faults, no stray processes."""

from __future__ import annotations

import multiprocessing
import os
import random
from pathlib import Path

import pytest

from casbackup.archiver import workers as workers_module
from casbackup.archiver import writers as writers_module
from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.archiver.restore import RestoreOptions, restore
from casbackup.crypto.envelope import HEADER
from casbackup.errors import IntegrityError
from casbackup.repo import codec
from casbackup.repo.pack import pack_name, read_header
from casbackup.repo.repository import Repository
from casbackup.testing.fixtures import make_repo, open_repo
from casbackup.verify.check import CheckOptions, check
from tests.archiver.nasty import assert_same_tree


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Many small files (several batches), some big ones, and many duplicates."""
    root = tmp_path / "src"
    rng = random.Random(11)
    shared = rng.randbytes(30_000)
    for d in range(6):
        folder = root / f"d{d}"
        folder.mkdir(parents=True)
        for i in range(150):
            (folder / f"f{i}").write_bytes(rng.randbytes(rng.randint(0, 9000)))
        for i in range(20):  # the same content in every folder: readers race to store it
            (folder / f"dup{i}").write_bytes(shared + bytes([i]))
    for i in range(3):
        (root / f"big{i}").write_bytes(rng.randbytes(3_000_000))
    return root


def blob_sessions(repo: Repository) -> list[tuple[bytes, int]]:
    """(session, counter) of every blob envelope in every pack."""
    seen = []
    for name, size in repo.backend.list("data/"):
        for entry in read_header(repo.backend.get, name, size, repo.opener):
            head = repo.backend.get(pack_name(name.rsplit("/", 1)[1]), entry.offset, HEADER.size)
            _version, session, counter = HEADER.unpack(head)
            seen.append((session, counter))
    return seen


def test_readers_never_reuse_a_nonce_and_store_each_blob_once(tree: Path, tmp_path: Path) -> None:
    repo = make_repo(str(tmp_path / "repo"))
    result = run_backup(repo, BackupOptions(paths=(str(tree),), type="full", workers=3))
    assert result.snapshot is not None and not result.warnings
    pairs = blob_sessions(repo)
    # A session copied into a forked reader would repeat (key, nonce) pairs: never.
    assert len(pairs) == len(set(pairs))
    sessions = {s for s, _ in pairs}
    assert len(sessions) >= 2  # the readers' sessions and this process's (trees)
    # Readers racing on identical content still leave one copy of each blob.
    assert repo.cache.count() == result.snapshot.summary.blobs_added
    report = check(repo, CheckOptions(read_data=True))
    assert report.ok, report.errors
    restore(repo, result.snapshot, RestoreOptions(target=str(tmp_path / "out")))
    assert_same_tree(tree, tmp_path / "out" / str(tree).lstrip("/"))
    repo.close()
    assert multiprocessing.active_children() == []  # every reader was reaped


def test_a_reader_that_dies_fails_the_backup_clearly(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = workers_module.FileReader._read

    def dying(self, path, size, flush):  # type: ignore[no-untyped-def]
        if path.endswith(b"/d3/f7"):
            os._exit(9)  # as the OOM killer would
        return original(self, path, size, flush)

    monkeypatch.setattr(workers_module.FileReader, "_read", dying)  # inherited by fork
    repo = make_repo(str(tmp_path / "repo"))
    with pytest.raises(workers_module.WorkerFailed, match="stopped unexpectedly"):
        run_backup(repo, BackupOptions(paths=(str(tree),), type="full"))
    assert repo.list_snapshots() == []
    repo.close()
    assert multiprocessing.active_children() == []
    with open_repo(str(tmp_path / "repo")) as again:
        report = check(again, CheckOptions(read_data=True))
        assert report.ok, report.errors
        monkeypatch.setattr(workers_module.FileReader, "_read", original)
        done = run_backup(again, BackupOptions(paths=(str(tree),), type="full"))
        assert done.snapshot is not None


def test_a_blob_failing_verification_in_a_reader_is_an_integrity_error(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class DamagingCodec:
        """What bad RAM between encrypting and verifying would look like."""

        compress = staticmethod(codec.compress)

        @staticmethod
        def decompress(data: bytes) -> bytes:
            return codec.decompress(data) + b"!"

    monkeypatch.setattr(workers_module, "codec", DamagingCodec)  # the readers' view only
    repo = make_repo(str(tmp_path / "repo"))
    with pytest.raises(IntegrityError, match="failed verification"):
        run_backup(repo, BackupOptions(paths=(str(tree),), type="full"))
    assert repo.list_snapshots() == []
    repo.close()


def test_unreadable_files_are_reported_by_readers(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # chmod 0 does not stop root (CI runs as root), so the reader is denied directly.
    original = workers_module.FileReader._read

    def denied(self, path, size, flush):  # type: ignore[no-untyped-def]
        if path.endswith(b"/d1/f3"):
            raise PermissionError(13, "Permission denied")
        return original(self, path, size, flush)

    monkeypatch.setattr(workers_module.FileReader, "_read", denied)  # inherited by fork
    repo = make_repo(str(tmp_path / "repo"))
    result = run_backup(repo, BackupOptions(paths=(str(tree),), type="full"))
    assert any("d1/f3" in w and "Permission denied" in w for w in result.warnings)
    repo.close()


def test_dry_run_reads_everything_and_stores_nothing(tree: Path, tmp_path: Path) -> None:
    repo = make_repo(str(tmp_path / "repo"))
    result = run_backup(repo, BackupOptions(paths=(str(tree),), type="full", dry_run=True))
    assert result.snapshot is None
    assert list(repo.backend.list("data/")) == []
    repo.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
def test_restore_writers_round_trip_and_a_dead_writer_fails_clearly(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    repo = make_repo(str(tmp_path / "repo"))
    snap = run_backup(repo, BackupOptions(paths=(str(tree),), type="full")).snapshot
    assert snap is not None
    out = tmp_path / "out"
    result = restore(repo, snap, RestoreOptions(target=str(out), workers=workers))
    assert not result.errors and result.files > 1000
    assert_same_tree(tree, out / str(tree).lstrip("/"))
    if workers == 1:
        return  # threads: nothing to kill

    original = writers_module.write_file

    def dying(fd, job, reader, on_bytes):  # type: ignore[no-untyped-def]
        if job.size == 3_000_000:
            os._exit(9)  # as the OOM killer would
        return original(fd, job, reader, on_bytes)

    monkeypatch.setattr(writers_module, "write_file", dying)  # inherited by fork
    with pytest.raises(writers_module.WriterFailed, match="stopped unexpectedly"):
        restore(repo, snap, RestoreOptions(target=str(tmp_path / "again"), workers=2))
    repo.close()
    assert multiprocessing.active_children() == []
