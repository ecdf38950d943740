"""check on an object store reads each small tree pack whole once (verify/check_walk.py
_TreePacks), not one get per tree; damage is reported exactly as before.

Before, every folder of every snapshot was a ranged get: 1,443 gets for this session's
SeaweedFS repository (3.4-3.6 s on loopback; a round trip each on a real network), 0.47 s since.
"""

from __future__ import annotations

import os
from pathlib import Path

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalBackend
from casbackup.testing.faults import FaultyBackend
from casbackup.testing.fixtures import PASSWORD, flip_stored_byte, make_repo
from casbackup.verify.check import CheckOptions, check


def _site(tmp_path: Path) -> tuple[str, list[bytes]]:
    src = tmp_path / "src"
    for i in range(120):
        folder = src / f"d{i:03d}" / "sub"
        folder.mkdir(parents=True)
        (folder / "f").write_bytes(os.urandom(100) + b"%d" % i)
    path = str(tmp_path / "repo")
    repo = make_repo(path)
    snap = run_backup(repo, BackupOptions(paths=(str(src),), type="full")).snapshot
    assert snap is not None
    trees = [n.subtree for _, n in repo.walk(snap.root) if n.subtree is not None]
    repo.close()
    return path, trees  # type: ignore[return-value]


def _check(path: str, remote: bool) -> tuple[list[str], int]:
    backend = (
        FaultyBackend(LocalBackend(path), pretend_remote=True) if remote else LocalBackend(path)
    )
    with Repository.open(backend, PASSWORD.encode()) as repo:
        if remote:
            backend.gets.clear()  # type: ignore[union-attr]
        report = check(repo, CheckOptions())
        gets = (
            sum(n for name, n in backend.gets.items() if name.startswith("data/")) if remote else 0
        )  # type: ignore[union-attr]
        return report.errors, gets


def test_an_object_store_check_reads_tree_packs_whole(tmp_path: Path) -> None:
    path, trees = _site(tmp_path)
    errors, gets = _check(path, remote=True)
    assert errors == []
    assert len(trees) > 240 and gets < len(trees) / 10, (gets, len(trees))


def test_a_damaged_tree_is_reported_as_from_a_local_folder(tmp_path: Path) -> None:
    path, trees = _site(tmp_path)
    with Repository.open(LocalBackend(path), PASSWORD.encode()) as repo:
        loc = repo.locate(trees[57])
    flip_stored_byte(path, loc.pack, loc.offset, loc.stored_len, 0x10)
    local, _ = _check(path, remote=False)
    remote, _ = _check(path, remote=True)
    assert local and remote == local
