"""casbackup copy between a local and an S3 repository (moto's server on 127.0.0.1): with
and without shared chunker parameters, the blobs and bytes sent are what dedup predicts,
a second copy copies nothing, and an interrupted copy into S3 resumes with the rest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from casbackup import access
from casbackup.crypto.keyfile import WEAK_KDF
from casbackup.maintenance.copy import CopyOptions, copy_snapshots
from casbackup.repo import blobstore as repository_module
from casbackup.repo.config import RepoConfig
from casbackup.repo.repository import Repository
from casbackup.testing.faults import FaultScript, FaultyBackend, ProcessDeath
from casbackup.testing.fixtures import PASSWORD, make_repo, open_repo
from casbackup.verify.check import CheckOptions, check
from tests.maintenance.test_copy import _backup, _contents, _reachable, _tree


def stored(repo: Repository, prefix: str = "data/") -> int:
    return sum(size for _n, size in repo.backend.list(prefix))


@pytest.fixture
def data_dir(tmp_path: Path) -> str:
    rnd = os.urandom
    return _tree(tmp_path / "data", {"a.bin": rnd(300_000), "d/b.bin": rnd(200_000),
                                     "c.txt": b"x" * 50_000})  # fmt: skip


def test_local_to_s3_different_keys_then_again(
    moto_location: str, data_dir: str, tmp_path: Path
) -> None:
    src = make_repo(str(tmp_path / "src"))
    first = _backup(src, data_dir)
    (Path(data_dir) / "new.bin").write_bytes(os.urandom(150_000))
    second = _backup(src, data_dir)
    dst = make_repo(access.open_backend(moto_location))
    try:
        result = copy_snapshots(src, dst, CopyOptions())
        assert [s for s, _ in result.copied] == [first, second] and not result.shared_ids
        data, trees = _reachable(src)
        # Other keys: every unique source blob is read once and sent once, no more; what
        # the S3 packs hold is what the copy says it stored, plus pack headers.
        assert result.blobs_sent == len(data) + len(trees) and result.trees_sent == len(trees)
        packs = stored(dst)
        assert (
            result.bytes_stored
            <= packs
            <= result.bytes_stored + 4096 * len(list(dst.backend.list("data/")))
        )
        for src_id, dst_id in result.copied:
            assert _contents(dst, dst_id) == _contents(src, src_id)
        assert check(dst, CheckOptions(read_data=True)).ok
        total = stored(dst, "")
        again = copy_snapshots(src, dst, CopyOptions())
        assert again.copied == [] and again.blobs_sent == 0 and stored(dst, "") == total
    finally:
        dst.close()
        src.close()


def test_s3_to_local_shared_params_dedup_carries_across(
    moto_location: str, data_dir: str, tmp_path: Path
) -> None:
    src = make_repo(access.open_backend(moto_location))
    try:
        snap = _backup(src, data_dir)
        # As ``init --copy-chunker-params-from`` makes it: same chunker and id key.
        config = RepoConfig(chunker=src.config.chunker, dump_chunker=src.config.dump_chunker,
                            pack_size=1 << 20)  # fmt: skip
        from casbackup.store.local import LocalBackend

        dst = Repository.init(LocalBackend(str(tmp_path / "dst")), b"other", kdf=WEAK_KDF,
                              config=config, key=src.key)  # fmt: skip
        _backup(dst, data_dir)  # the destination backed up the same folder itself
        before = stored(dst)
        result = copy_snapshots(src, dst, CopyOptions())
        assert result.shared_ids and len(result.copied) == 1
        # Every chunk is there already: only the source's trees are read from S3, and no
        # data blob is sent.
        assert result.blobs_sent == result.trees_sent
        assert result.blobs_read == len(_reachable(src)[1])
        assert stored(dst) - before < 64 * 1024
        assert _contents(dst, result.copied[0][1]) == _contents(src, snap)
        assert check(dst, CheckOptions(read_data=True)).ok
        dst.close()
    finally:
        src.close()


def test_interrupted_copy_into_s3_resumes_with_the_rest(
    moto_location: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(repository_module, "INDEX_FLUSH_PACKS", 2)
    data = _tree(tmp_path / "data", {f"f{i}.bin": os.urandom(700_000) for i in range(8)})
    src = make_repo(str(tmp_path / "src"))
    snap = _backup(src, data)
    make_repo(access.open_backend(moto_location)).close()
    faulty = FaultyBackend(access.open_backend(moto_location), FaultScript(crash_after_puts=5))
    dst = Repository.open(faulty, PASSWORD.encode())
    with pytest.raises(ProcessDeath):
        copy_snapshots(src, dst, CopyOptions())
    assert any(n.startswith("index/") for n in faulty.puts), faulty.puts
    dst = open_repo(access.open_backend(moto_location))  # a new process
    try:
        assert dst.list_snapshots() == []
        data_ids, trees = _reachable(src)
        result = copy_snapshots(src, dst, CopyOptions())
        assert result.copied and 0 < result.blobs_sent < len(data_ids) + len(trees)
        assert _contents(dst, result.copied[0][1]) == _contents(src, snap)
        assert check(dst, CheckOptions(read_data=True)).ok
    finally:
        dst.close()
        src.close()
