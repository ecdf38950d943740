"""The repository under a misbehaving backend: failed writes, crashes, damaged reads.

Crash tests reopen the repository and require a clean ``check`` (STYLE.md): the only
allowed complaint is a pack no index names, which an interrupted run may leave.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.archiver.restore import RestoreOptions, restore
from casbackup.errors import IntegrityError, StorageError
from casbackup.repo import blobstore as repository_module
from casbackup.repo.ids import Kind
from casbackup.repo.pack import pack_name
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalBackend
from casbackup.store.memory import MemoryBackend
from casbackup.testing.faults import FaultScript, FaultyBackend, ProcessDeath
from casbackup.testing.fixtures import make_repo, open_repo
from casbackup.verify.check import CheckOptions, check
from casbackup.verify.repair import repair_index


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """About 3 MiB of incompressible data: several 1 MiB packs with the test config."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    rng = __import__("random").Random(7)
    for i in range(6):
        (src / f"f{i}.bin").write_bytes(rng.randbytes(500_000 + i * 1000))
    (src / "sub" / "small.txt").write_text("small\n")
    return src


def assert_clean(repo: Repository, *, read_data: bool = True) -> None:
    report = check(repo, CheckOptions(read_data=read_data))
    assert report.errors == []
    assert all("is not in the index" in w for w in report.warnings), report.warnings


def restore_and_compare(repo: Repository, src: Path, target: Path) -> None:
    snap = repo.resolve_snapshot("latest")
    result = restore(repo, snap, RestoreOptions(target=str(target), subpath=str(src)))
    assert result.errors == []
    for path in src.rglob("*"):
        if path.is_file():
            assert (target / path.relative_to(src)).read_bytes() == path.read_bytes()


def faulty_repo(script: FaultScript) -> tuple[Repository, FaultyBackend, MemoryBackend]:
    inner = MemoryBackend()
    make_repo(inner).close()
    faulty = FaultyBackend(inner, script)
    return open_repo(faulty), faulty, inner


def test_failed_pack_put_mid_backup_leaves_a_clean_repository(source: Path, tmp_path: Path) -> None:
    repo, faulty, inner = faulty_repo(
        FaultScript(fail_puts=frozenset({2}), fail_puts_matching="data/*")
    )
    with pytest.raises(StorageError, match="injected failure"):
        run_backup(repo, BackupOptions(paths=(str(source),), type="full"))
    assert faulty.counts["put"] >= 2
    repo.close()
    with open_repo(inner) as repo:
        assert repo.snapshot_ids() == []
        assert_clean(repo)
        result = run_backup(repo, BackupOptions(paths=(str(source),), type="full"))
        assert result.snapshot is not None
        assert_clean(repo)
        restore_and_compare(repo, source, tmp_path / "out")


def test_failed_pack_put_does_not_poison_the_open_repository() -> None:
    """Blobs of a pack that was never stored must not count as present afterwards."""
    repo, _faulty, _inner = faulty_repo(
        FaultScript(fail_puts=frozenset({1}), fail_puts_matching="data/*")
    )
    data = os.urandom(repo.config.pack_size + 10)  # fills a pack on its own
    with pytest.raises(StorageError):
        repo.save_blob(Kind.DATA, data)
    blob_id = repo.blob_id(data)
    assert not repo.has_blob(blob_id)
    assert repo.save_blob(Kind.DATA, data) == (blob_id, True)
    repo.flush()
    assert repo.load_blob(blob_id, Kind.DATA) == data
    repo.close()


def test_crash_after_index_flushes_keeps_committed_chunks(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Flush an index file every few blobs so the crash comes after some work is committed.
    monkeypatch.setattr(repository_module, "INDEX_FLUSH_BLOBS", 20)
    repo, faulty, inner = faulty_repo(FaultScript(crash_after_puts=6))
    with pytest.raises(ProcessDeath):
        run_backup(repo, BackupOptions(paths=(str(source),), type="full", workers=1))
    committed = [n for n in faulty.puts if n.startswith("index/")]
    assert committed, faulty.puts
    repo.close()
    with open_repo(inner) as repo:
        assert_clean(repo)
        indexed = repo.cache.count()
        assert indexed > 0
        result = run_backup(repo, BackupOptions(paths=(str(source),), type="full"))
        assert result.snapshot is not None
        total = repo.cache.count()
        # Nothing already indexed was stored again.
        assert result.snapshot.summary.blobs_added == total - indexed
        assert_clean(repo)
        restore_and_compare(repo, source, tmp_path / "out")


def test_failed_index_put_is_repaired_from_pack_headers(source: Path, tmp_path: Path) -> None:
    repo, _faulty, inner = faulty_repo(
        FaultScript(fail_puts=frozenset({1, 2}), fail_puts_matching="index/*")
    )
    with pytest.raises(StorageError):
        run_backup(repo, BackupOptions(paths=(str(source),), type="full"))
    repo.close()
    with open_repo(inner) as repo:
        report = check(repo, CheckOptions())
        assert report.errors == [] and report.warnings  # unindexed packs only
        result = repair_index(repo)
        assert result.packs_from_headers == report.packs and not result.packs_unreadable
        assert check(repo, CheckOptions(read_data=True)).warnings == []


def _backed_up(source: Path) -> tuple[MemoryBackend, str]:
    inner = MemoryBackend()
    with make_repo(inner) as repo:
        snap = run_backup(repo, BackupOptions(paths=(str(source),), type="full")).snapshot
        assert snap is not None
        return inner, snap.id


def test_bit_flipped_on_read_names_the_pack(source: Path, tmp_path: Path) -> None:
    inner, snap_id = _backed_up(source)
    with open_repo(inner) as clean:
        root = clean.load_snapshot(snap_id).root
        entries = list(clean.walk(root))
        tree_packs = {clean.locate(root).pack} | {
            clean.locate(n.subtree).pack for _p, n in entries if n.subtree is not None
        }
        # A chunk in a pack without trees, so the damage hits file contents only.
        path, chunk, loc = next(
            (p.decode(), c, clean.locate(c))
            for p, n in entries
            for c in n.content
            if clean.locate(c).pack not in tree_packs
        )
        in_pack = {p.decode() for p, n in entries
                   if any(clean.locate(c).pack == loc.pack for c in n.content)}  # fmt: skip
    # Bit (offset + 30) * 8 of the pack lies inside this chunk's envelope: a ranged read
    # of the chunk, the pieces of a streaming check and a whole read all see it.
    script = FaultScript(flip_on_get=pack_name(loc.pack), flip_bit=(loc.offset + 30) * 8)
    with Repository.open(FaultyBackend(inner, script), b"correct horse battery staple") as repo:
        with pytest.raises(IntegrityError, match=loc.pack[:12]):
            repo.load_blob(chunk, Kind.DATA)
        report = check(repo, CheckOptions(read_data=True))
        assert any(loc.pack[:12] in e for e in report.errors), report.errors
        assert report.damaged_packs == {loc.pack}
        assert report.affected == {snap_id: [path]}
        out = tmp_path / "out"
        result = restore(repo, repo.load_snapshot(snap_id),
                         RestoreOptions(target=str(out), subpath=str(source)))  # fmt: skip
        failed = {e.split(":")[0] for e in result.errors}
        assert os.path.relpath(path, source) in failed
        # Every file without chunks in the damaged pack restores exactly.
        for p in source.rglob("*"):
            if p.is_file() and str(p) not in in_pack:
                assert (out / p.relative_to(source)).read_bytes() == p.read_bytes()


def test_truncated_pack_is_reported_by_structural_check(source: Path) -> None:
    inner, snap_id = _backed_up(source)
    packs = sorted(name for name, _ in inner.list("data/"))
    faulty = FaultyBackend(inner, FaultScript(truncate_on_get=packs[0], truncate_by=100))
    with Repository.open(faulty, b"correct horse battery staple") as repo:
        report = check(repo, CheckOptions())
        pack_id = packs[0].rsplit("/", 1)[1]
        assert any(pack_id[:12] in e for e in report.errors), report.errors
        assert report.affected.get(snap_id)


def test_fault_script_basics() -> None:
    inner = MemoryBackend()
    x1, x2, t = "snapshots/" + "a1" * 32, "snapshots/" + "a2" * 32, "index/" + "b" * 64
    faulty = FaultyBackend(inner, FaultScript(fail_puts=frozenset({2}), flip_on_get="snapshots/*", flip_bit=9,
                                              truncate_on_get="index/*", truncate_by=3))  # fmt: skip
    faulty.put(x1, b"\0\0\0")
    with pytest.raises(StorageError):
        faulty.put(x2, b"a")
    faulty.put(t, b"123456")
    assert not inner.exists(x2) and faulty.puts == [x1, t]
    assert faulty.get(x1) == b"\0\x02\0"
    # The flip is a place in the object: ranged reads see it only where they cover it.
    assert faulty.get(x1, 1, 2) == b"\x02\0" and faulty.get(x1, 2, 1) == b"\0"
    assert faulty.get(t) == b"123" and faulty.stat(t) == 3 and dict(faulty.list(t)) == {t: 3}
    with pytest.raises(StorageError):
        faulty.get(t, 2, 2)
    assert faulty.counts["get"] == 5 and faulty.gets[t] == 2
    crashing = FaultyBackend(inner, FaultScript(crash_after_puts=1))
    crashing.put("locks/" + "c" * 32, b"")
    with pytest.raises(ProcessDeath):
        crashing.put("locks/" + "d" * 32, b"")
    assert not inner.exists("locks/" + "d" * 32)


def test_a_pack_write_failing_midway_forgets_its_blobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Packs are written as blobs arrive: a failed write must not leave blobs counted as stored."""
    repo = make_repo(str(tmp_path / "repo"))
    first = os.urandom(10_000)
    repo.save_blob(Kind.DATA, first)  # in the open pack, on disk in its temp file
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StorageError, match="no space left"):
        repo.save_blob(Kind.DATA, os.urandom(10_000))
    monkeypatch.setattr(os, "write", real_write)
    assert not repo.has_blob(repo.blob_id(first))  # its pack is gone with the failure
    assert repo.save_blob(Kind.DATA, first)[1] is True
    repo.flush()
    assert repo.load_blob(repo.blob_id(first)) == first
    assert list(repo.backend.list_temp_files()) == []
    assert_clean(repo)
    repo.close()


def test_closing_without_flush_leaves_no_temp_file(tmp_path: Path) -> None:
    repo = make_repo(str(tmp_path / "repo"))
    repo.save_blob(Kind.DATA, os.urandom(5000))
    repo.close()
    assert list(LocalBackend(str(tmp_path / "repo")).list_temp_files()) == []
