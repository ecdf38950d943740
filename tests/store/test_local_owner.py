"""Root writing into a repository folder another user owns gives what it creates to that
user (store/ownership.py); a file system that keeps no owners is written all the same."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.testing.fixtures import make_repo, open_repo

OWNER = (4321, 4322)  # no such user needed: only the numbers are given
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root gives files away")


def _source(tmp_path: Path) -> str:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(os.urandom(3000))
    return str(src)


def _owners(path: str) -> set[tuple[int, int]]:
    return {(os.lstat(p).st_uid, os.lstat(p).st_gid) for p in Path(path).rglob("*")}


def test_what_root_creates_in_another_users_repository_is_theirs(tmp_path: Path) -> None:
    path = str(tmp_path / "repo")
    make_repo(path).close()
    for p in [Path(path), *Path(path).rglob("*")]:
        os.chown(p, *OWNER)
    repo = open_repo(path)
    try:
        run_backup(repo, BackupOptions(paths=(_source(tmp_path),)))
    finally:
        repo.close()
    assert _owners(path) == {OWNER}


def test_a_file_system_that_keeps_no_owners_is_written_all_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FAT and exFAT refuse chown (EPERM), NFS with root_squash too: root's backup onto a
    # user's USB disk must not fail for it.
    path = str(tmp_path / "repo")
    make_repo(path).close()
    os.chown(path, *OWNER)
    calls = []

    def refused(fd: int, uid: int, gid: int) -> None:
        calls.append(fd)
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "fchown", refused)
    repo = open_repo(path)
    try:
        result = run_backup(repo, BackupOptions(paths=(_source(tmp_path),)))
    finally:
        repo.close()
    assert result.snapshot is not None and calls  # tried once, then no more
    assert len(calls) == 1
