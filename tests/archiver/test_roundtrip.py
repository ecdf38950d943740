"""Round trip of a nasty tree through the library: backup, restore, compare everything."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.archiver.restore import RestoreOptions, restore
from tests.archiver.nasty import (
    AFTER_2262_NS,
    BEFORE_1970_NS,
    BIG_XATTR,
    CAPABILITY,
    MTIME_NS,
    SPARSE_SIZE,
    assert_same_tree,
    assert_sparse,
    make_nasty_tree,
    read_all_xattrs,
)


def test_nasty_tree_round_trip(repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = os.fsencode(tmp_path / "src")
    os.mkdir(src)
    make_nasty_tree(src)
    os.utime(src, ns=(MTIME_NS, MTIME_NS + 1))
    result = run_backup(repo, BackupOptions(paths=(os.fsdecode(src),), type="full"))
    assert result.warnings == []
    snap = result.snapshot
    assert snap is not None
    # Three names for one inode are read once.
    assert snap.summary.bytes_read < snap.summary.bytes_total
    assert_recorded(repo, snap, src)

    target = os.fsencode(tmp_path / "restore")
    res = restore(repo, snap, RestoreOptions(target=os.fsdecode(target)))
    assert res.errors == [] and res.warnings == []
    restored = target + src
    assert_same_tree(src, restored)
    assert_sparse(os.path.join(restored, b"sparse.img"))
    assert res.links == 2  # the second and third names of the hard-linked file

    # The same snapshot restored by folder (SNAPSHOT:PATH) lands directly in the target.
    target2 = os.fsencode(tmp_path / "restore2")
    restore(repo, snap, RestoreOptions(target=os.fsdecode(target2), subpath=os.fsdecode(src)))
    assert_same_tree(src, target2, root_meta=False)


def assert_recorded(repo, snap, src: bytes) -> None:  # type: ignore[no-untyped-def]
    """What the snapshot holds for the tree's extremes: every stored time and attribute
    equals the source's (restore then has what it needs to put them back)."""

    def node(*parts: bytes):  # type: ignore[no-untyped-def]
        found = repo.find_node(snap.root, os.path.join(src, *parts))
        assert found is not None
        return found

    for name in (b"from 2300", b"from 1960"):
        assert node(name).mtime_ns == os.lstat(os.path.join(src, name)).st_mtime_ns
    if os.lstat(os.path.join(src, b"from 2300")).st_mtime_ns == AFTER_2262_NS:
        assert node(b"from 1960").mtime_ns == BEFORE_1970_NS
    for dirpath, dirnames, filenames in os.walk(src):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            want = {os.fsencode(k): v for k, v in read_all_xattrs(path).items()}
            assert dict(node(os.path.relpath(path, src)).xattrs) == want, path
    if read_all_xattrs(os.path.join(src, b"empty")):  # a file system with user attributes
        assert dict(node(b"sub", b"inner", b"small.bin").xattrs)[b"user.big"] == BIG_XATTR
        assert dict(node(b"sub").xattrs)[b"user.folder"] == b"on a folder"
        if os.geteuid() == 0:
            assert dict(node(b"setgid").xattrs)[b"security.capability"] == CAPABILITY


def test_nasty_tree_xattrs_round_trip(repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = os.fsencode(tmp_path / "src")
    os.mkdir(src)
    make_nasty_tree(src, big_size=10_000)
    snap = run_backup(repo, BackupOptions(paths=(os.fsdecode(src),), type="full")).snapshot
    target = os.fsencode(tmp_path / "restore")
    restore(repo, snap, RestoreOptions(target=os.fsdecode(target)))
    assert_same_tree(src, target + src, xattrs=True)


def test_mount_point_round_trip(repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Under --one-file-system a mount point comes back as an empty folder with its metadata."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    src = tmp_path / "src"
    mnt = src / "proc-like"
    mnt.mkdir(parents=True)
    (src / "file").write_bytes(b"f")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0555", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        (mnt / "inside").write_bytes(b"x")
        os.utime(mnt, ns=(MTIME_NS, MTIME_NS))
        snap = run_backup(
            repo, BackupOptions(paths=(str(src),), type="full", one_file_system=True)
        ).snapshot
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
    target = tmp_path / "restore"
    res = restore(repo, snap, RestoreOptions(target=str(target)))
    assert res.errors == []
    back = target / str(mnt).lstrip("/")
    assert back.is_dir() and os.listdir(back) == []
    st = os.lstat(back)
    assert (st.st_mode & 0o7777, st.st_mtime_ns) == (0o555, MTIME_NS)
    assert (target / str(src).lstrip("/") / "file").read_bytes() == b"f"


def test_single_file_and_subfolder_restore(repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = os.fsencode(tmp_path / "src")
    os.mkdir(src)
    make_nasty_tree(src, big_size=100_000)
    snap = run_backup(repo, BackupOptions(paths=(os.fsdecode(src),), type="full")).snapshot
    assert snap is not None
    one = os.path.join(src, b"latin1-\xe9\xff\xfe")
    target = tmp_path / "one"
    restore(repo, snap, RestoreOptions(target=str(target), subpath=os.fsdecode(one)))
    restored = os.path.join(os.fsencode(target), b"latin1-\xe9\xff\xfe")
    with open(restored, "rb") as f:
        assert f.read() == b"not UTF-8\n"
    sparse = os.path.join(src, b"sparse.img")
    restore(repo, snap, RestoreOptions(target=str(target), subpath=os.fsdecode(sparse)))
    assert_sparse(os.path.join(os.fsencode(target), b"sparse.img"))
    assert os.path.getsize(os.path.join(os.fsencode(target), b"sparse.img")) == SPARSE_SIZE
