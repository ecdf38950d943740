"""``check --read-data`` reads packs in helper processes: same verdicts as one process."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.repo.ids import file_id
from casbackup.repo.pack import pack_name
from casbackup.store.local import LocalBackend
from casbackup.testing.faults import FaultyBackend
from casbackup.testing.fixtures import make_repo, open_repo
from casbackup.verify.check import CheckOptions, check


@pytest.fixture
def repo_path(tmp_path: Path) -> str:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"f{i}").write_bytes(os.urandom(400_000))
    path = str(tmp_path / "repo")
    with make_repo(path) as repo:
        run_backup(repo, BackupOptions(paths=(str(src),), type="full"))
    return path


@pytest.mark.timeout(60)
def test_parallel_check_after_threaded_hashing_does_not_hang(repo_path: str) -> None:
    # BLAKE3 hashes big inputs on a thread pool, which a fork does not carry over: a
    # helper using it would wait forever. Start that pool here first, then fork.
    file_id(os.urandom(8 << 20))
    with open_repo(repo_path) as repo:
        report = check(repo, CheckOptions(read_data=True, workers=2))
    assert report.ok and report.packs_read >= 3


@pytest.mark.parametrize("workers", [1, 3])
def test_damage_is_found_the_same_with_any_number_of_workers(repo_path: str, workers: int) -> None:
    with open_repo(repo_path) as repo:
        packs = sorted(name for name, _ in repo.backend.list("data/"))
        target = os.path.join(repo_path, packs[1])
        with open(target, "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 0xFF]))
        report = check(repo, CheckOptions(read_data=True, workers=workers))
    assert not report.ok
    pack = packs[1].rsplit("/", 1)[1]
    assert any(f"pack {pack[:12]} does not match its name" in e for e in report.errors)
    assert any(f"pack {pack[:12]}: 1 damaged blob" in e for e in report.errors)
    assert report.packs_read == len(packs)
    assert pack_name(pack) == packs[1]


@pytest.mark.parametrize("workers", [1, 2])
def test_walk_beside_the_reading_names_damaged_files_once(repo_path: str, workers: int) -> None:
    """The snapshot walk runs while packs are read, before all damage is known: a file
    whose chunk turns out damaged must still be named, and no error repeated."""
    with open_repo(repo_path) as repo:
        snap = repo.list_snapshots()[0]
        src = snap.paths[0]
        node = repo.find_node(snap.root, f"{src}/f3")
        loc = repo.locate(node.content[0])
        target = os.path.join(repo_path, pack_name(loc.pack))
        with open(target, "r+b") as f:
            f.seek(loc.offset + 40)
            byte = f.read(1)
            f.seek(loc.offset + 40)
            f.write(bytes([byte[0] ^ 0xFF]))
        report = check(repo, CheckOptions(read_data=True, workers=workers))
    assert not report.ok
    assert len(report.errors) == len(set(report.errors)), report.errors
    assert report.affected == {snap.id: [f"{src}/f3"]}
    assert report.snapshots == 1 and report.trees > 0


class _ObjectStoreLike(FaultyBackend):
    """A folder read as S3 is: not fork-safe (its client's threads die in a fork), each
    pack get a round trip of ``DELAY`` seconds; records how many were in flight at once."""

    DELAY = 0.05

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fork_safe = False
        self.in_flight = self.most = 0
        self._count = threading.Lock()

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if not name.startswith("data/") or threading.current_thread().name == "check-walk":
            return super().get(name, offset, length)  # not a pack being verified
        with self._count:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            time.sleep(self.DELAY)
            return super().get(name, offset, length)
        finally:
            with self._count:
                self.in_flight -= 1


@pytest.mark.parametrize("damaged", [False, True])
def test_an_object_stores_packs_are_verified_side_by_side(repo_path: str, damaged: bool) -> None:
    """check --read-data on S3 read its packs one after the other in the main thread (no
    helper processes: obstore does not survive a fork), a round trip or two per pack end
    to end. Now a few at a time, in threads; verdicts as before, in order."""
    backend = _ObjectStoreLike(LocalBackend(repo_path), pretend_remote=True)
    with open_repo(backend) as repo:
        packs = sorted(name for name, _ in repo.backend.list("data/"))
        if damaged:
            target = os.path.join(repo_path, packs[1])
            os.chmod(target, 0o600)
            with open(target, "r+b") as f:
                f.seek(100)
                byte = f.read(1)
                f.seek(100)
                f.write(bytes([byte[0] ^ 0xFF]))
        report = check(repo, CheckOptions(read_data=True, workers=2))
    assert report.packs_read == len(packs) >= 3
    assert backend.most > 1
    assert report.ok is not damaged
    if damaged:
        pack = packs[1].rsplit("/", 1)[1]
        assert any(f"pack {pack[:12]} does not match its name" in e for e in report.errors)
