"""Round trip of a nasty tree through the library: backup, restore, compare everything."""

from __future__ import annotations

import os

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.archiver.restore import RestoreOptions, restore
from tests.archiver.nasty import (
    MTIME_NS,
    SPARSE_SIZE,
    assert_same_tree,
    assert_sparse,
    make_nasty_tree,
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
