"""Restores onto XFS (the default file system of RHEL and its kin), on a real one mounted
from a loop file: the nasty tree round trip (modes, owners, ACLs, xattrs, hard links,
odd names), and a sparse image that must not come back bigger on disk than it was."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from casbackup.testing.fixtures import run_cli
from tests.archiver.nasty import assert_same_tree, assert_sparse, make_nasty_tree
from tests.loopfs import loop_mount

MiB = 1 << 20


@pytest.fixture(scope="module")
def xfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with loop_mount("xfs", tmp_path_factory.mktemp("xfs"), "xfsprogs") as mnt:
        yield mnt


def test_the_nasty_tree_round_trips_onto_xfs(cli_repo, tmp_path: Path, xfs: Path) -> None:  # type: ignore[no-untyped-def]
    src = os.fsencode(tmp_path / "src")
    os.mkdir(src)
    make_nasty_tree(src)
    res = run_cli("backup", os.fsdecode(src), "--type", "full", repo=cli_repo)
    assert res.code == 0, res.err
    target = xfs / "nasty"
    for extra in ((), ("--overwrite",)):  # unnamed files first, then temporary names
        res = run_cli("restore", "latest", "--target", str(target), *extra, repo=cli_repo)
        assert res.code == 0, res.err
        restored = os.fsencode(target) + src
        assert_same_tree(src, restored, xattrs=True)
        assert_sparse(os.path.join(restored, b"sparse.img"))


def test_a_sparse_image_comes_back_as_small_on_xfs(cli_repo, tmp_path: Path, xfs: Path) -> None:  # type: ignore[no-untyped-def]
    """8 MiB of data at the start of a 256 MiB image, then three blocks far apart. XFS
    gives a write that extends a file blocks beyond its end in advance; written as it came
    (data, hole, data), the image came back 8.3 MB bigger than its source on XFS."""
    src = tmp_path / "src"
    src.mkdir()
    image = src / "vm.img"
    with open(image, "wb") as f:
        f.write(random.Random(1).randbytes(8 * MiB))
        f.truncate(256 * MiB)
        for at in (77 * MiB + 1234, 130 * MiB + 12_345, 256 * MiB - 4096):
            f.seek(at)
            f.write(random.Random(at).randbytes(4096))
    res = run_cli("backup", str(src), repo=cli_repo)
    assert res.code == 0, res.err
    target = xfs / "sparse"
    res = run_cli("restore", "latest", "--target", str(target), repo=cli_repo)
    assert res.code == 0, res.err
    restored = target / str(image).lstrip("/")
    assert restored.read_bytes() == image.read_bytes()
    used, source = os.stat(restored).st_blocks * 512, os.stat(image).st_blocks * 512
    assert used <= source + 64 * 1024, f"restored image takes {used} bytes, its source {source}"


def _acl_file(folder: Path) -> Path:
    import subprocess

    if subprocess.run(["which", "setfacl"], capture_output=True).returncode != 0:
        pytest.skip("setfacl is not installed (make sysdeps installs acl)")
    path = folder / "shared.txt"
    path.write_bytes(b"for user 1234 too\n")
    subprocess.run(["setfacl", "-m", "u:1234:r", str(path)], check=True)
    return path


def test_xfs_internal_acl_copies_are_not_backed_up_nor_restored(
    cli_repo, tmp_path: Path, xfs: Path
) -> None:  # type: ignore[no-untyped-def]
    """XFS lists its own copy of an ACL (trusted.SGI_ACL_FILE) beside
    system.posix_acl_access: recorded too, it came back on ext4 as a meaningless
    trusted.* attribute of every file with an ACL. Now the ACL is recorded once, and
    snapshots that hold the copy (taken before) restore without it."""
    src = xfs / "acl-src"
    src.mkdir()
    path = _acl_file(src)
    assert "trusted.SGI_ACL_FILE" in os.listxattr(path)  # what XFS shows root
    res = run_cli("backup", str(src), repo=cli_repo)
    assert res.code == 0, res.err
    listing = run_cli("--json", "ls", f"latest:{path}", repo=cli_repo)
    assert "SGI_ACL" not in listing.out and res.code == 0
    target = tmp_path / "out"  # not XFS: the tests' temporary folder
    res = run_cli("restore", "latest", "--target", str(target), repo=cli_repo)
    assert res.code == 0, res.err
    restored = target / str(path).lstrip("/")
    names = os.listxattr(restored)
    assert "system.posix_acl_access" in names and not any("SGI_ACL" in n for n in names)


def test_a_snapshot_holding_xfs_acl_copies_restores_without_them(
    cli_repo, tmp_path: Path, xfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from casbackup.archiver import metadata
    from casbackup.archiver.backup import BackupOptions, run_backup
    from casbackup.archiver.restore import RestoreOptions, restore
    from casbackup.testing.fixtures import open_repo

    src = xfs / "acl-old"
    src.mkdir()
    path = _acl_file(src)
    with open_repo(cli_repo) as repo:
        monkeypatch.setattr(metadata, "_FS_INTERNAL", frozenset())  # as before the fix
        snap = run_backup(repo, BackupOptions(paths=(str(src),), workers=0)).snapshot
        monkeypatch.undo()
        assert snap is not None
        target = tmp_path / "out"
        result = restore(repo, snap, RestoreOptions(target=str(target)))
    assert result.errors == [] and result.warnings == []
    names = os.listxattr(target / str(path).lstrip("/"))
    assert "system.posix_acl_access" in names and not any("SGI_ACL" in n for n in names)
