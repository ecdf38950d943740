"""Snapshots deeper than Python's recursion limit: every reader of trees must go on.

The snapshot is written bottom-up through the library (trees, then the record), so these tests
do not depend on backup handling the depth. DEPTH levels of `d/` below `/deep`, each holding
one small file `f`; the deepest holds `leaf.txt`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import blake3
import pytest

from casbackup.maintenance.diff import diff_snapshots
from casbackup.maintenance.prune import PruneOptions, prune
from casbackup.maintenance.stats import snapshot_stats
from casbackup.recovery.execute import recover
from casbackup.recovery.plan import RecoverOptions
from casbackup.repo.ids import Kind
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot, now_utc
from casbackup.repo.tree import Node, NodeKind
from casbackup.testing.fixtures import run_cli
from casbackup.verify.check import CheckOptions, check
from casbackup.verify.sandbox import VerifyOptions, remove_tree, run_verification
from casbackup.vfs.core import Vfs
from casbackup.vfs.find import Finder, FindOptions
from tests.cli.test_mount import fuse, mounted  # noqa: F401 - fuse: fixture (skips without FUSE)

DEPTH = 1_200  # well past sys.getrecursionlimit() (1,000)


def _file(repo: Repository, name: bytes, data: bytes) -> Node:
    chunk, _ = repo.save_blob(Kind.DATA, data)
    return Node(name=name, kind=NodeKind.FILE, mode=0o644, size=len(data), content=(chunk,),
                content_hash=blake3.blake3(data).digest(), uid=os.getuid(), gid=os.getgid(),
                mtime_ns=1_700_000_000_000_000_000)  # fmt: skip


def _dir(name: bytes, subtree: object) -> Node:
    return Node(name=name, kind=NodeKind.DIR, mode=0o755, subtree=subtree, uid=os.getuid(),  # type: ignore[arg-type]
                gid=os.getgid(), mtime_ns=1_700_000_000_000_000_000)  # fmt: skip


def deep_snapshot(repo: Repository, leaf: bytes = b"bottom\n", app: str = "deep") -> Snapshot:
    """A snapshot of `/deep` DEPTH folders deep, written bottom-up."""
    tree = repo.save_tree([_file(repo, b"leaf.txt", leaf)])
    for _ in range(DEPTH):
        tree = repo.save_tree([_dir(b"d", tree), _file(repo, b"f", b"level\n")])
    root = repo.save_tree([_dir(b"deep", tree)])
    time, start_ns = now_utc()
    snap = Snapshot(time=time, start_ns=start_ns, host="h", user="u", paths=("/deep",),
                    tree=root.hex(), app=app)  # fmt: skip
    return repo.save_snapshot(snap)


DEEP_LEAF = "/deep" + "/d" * DEPTH + "/leaf.txt"
DEEPEST_F = "/deep" + "/d" * (DEPTH - 1) + "/f"


@pytest.fixture
def deep(repo: Repository) -> Snapshot:
    assert sys.getrecursionlimit() < DEPTH
    return deep_snapshot(repo)


def test_walk_lists_every_level_in_order(repo: Repository, deep: Snapshot) -> None:
    paths = [p for p, _ in repo.walk(deep.root)]
    assert len(paths) == 1 + 2 * DEPTH + 1
    assert paths[:4] == [b"/deep", b"/deep/d", b"/deep/d/d", b"/deep/d/d/d"]
    # Pre-order: each folder before its contents, names sorted within a folder ("d" < "f"),
    # so the leaf comes right after the deepest folder and the top level's file last.
    assert paths[DEPTH + 1] == DEEP_LEAF.encode() and paths[-1] == b"/deep/f"
    assert paths[DEPTH + 2] == DEEPEST_F.encode()


@pytest.mark.slow
def test_ls_find_stats_diff_and_check_on_the_cli(repo: Repository, repo_path: str, deep: Snapshot) -> None:  # fmt: skip
    second = deep_snapshot(repo, leaf=b"changed\n")
    repo.close()
    ls = run_cli("ls", deep.id, repo=repo_path)
    assert ls.code == 0, ls.err
    lines = ls.out.splitlines()
    assert lines[-1] == "/deep/f" and lines[DEPTH + 1] == DEEP_LEAF
    found = run_cli("--json", "find", "leaf.txt", repo=repo_path)
    assert found.code == 0, found.err
    hits = [json.loads(line) for line in found.out.splitlines() if '"path"' in line]
    assert [h["path"] for h in hits] == [DEEP_LEAF, DEEP_LEAF]
    stats = run_cli("--json", "stats", deep.id, repo=repo_path)
    assert stats.code == 0, stats.err
    doc = json.loads(stats.out.splitlines()[-1])
    assert doc["files"] == DEPTH + 1
    diff = run_cli("diff", deep.id, second.id, repo=repo_path)
    assert diff.code == 0, diff.err
    assert f"M    {DEEP_LEAF}" in diff.out or f"M {DEEP_LEAF}" in diff.out, diff.out[-300:]
    checked = run_cli("check", "--read-data", repo=repo_path)
    assert checked.code == 0, checked.err + checked.out


def test_library_readers(repo: Repository, deep: Snapshot) -> None:
    second = deep_snapshot(repo, leaf=b"changed\n")
    stats = snapshot_stats(repo, [deep, second])
    assert stats.files == 2 * (DEPTH + 1) and stats.trees == 2 * (DEPTH + 2)
    _, changes = diff_snapshots(repo, deep.root, second.root)
    assert [(c.code, c.path) for c in changes] == [("M", DEEP_LEAF.encode())]
    _, added = diff_snapshots(repo, second.root, deep.root, "/deep/d")
    assert [c.code for c in added] == ["M"]
    finder = Finder(repo, FindOptions(pattern="f"))
    matches = list(finder.run())
    assert len(matches) == 2 * DEPTH and matches[DEPTH - 1].path == b"/deep/f"
    assert matches[0].path == DEEPEST_F.encode()
    assert finder.stats.trees_walked == 2 * (DEPTH + 2)  # the leaf changed: no tree is shared
    report = check(repo, CheckOptions(read_data=True))
    assert report.ok, report.errors
    assert report.trees == 2 * (DEPTH + 2)


def test_prune_keeps_a_deep_snapshot_whole(repo: Repository, deep: Snapshot) -> None:
    repo.save_blob(Kind.DATA, b"nobody uses this")  # something prune may remove
    repo.flush()
    plan, _ = prune(repo, PruneOptions(max_unused=0.0))
    assert plan.used_blobs == DEPTH + 2 + 2 and plan.snapshots == 1  # trees + 2 chunks
    assert check(repo, CheckOptions(read_data=True)).ok
    assert [p for p, _ in repo.walk(deep.root)][DEPTH + 1] == DEEP_LEAF.encode()


def test_vfs_core_browses_to_the_bottom(repo: Repository, deep: Snapshot) -> None:
    vfs = Vfs(repo)
    (group,) = [e.name for e in vfs.listdir("/")]
    folder = [e.name for e in vfs.listdir(f"/{group}") if e.name != "latest"][0]
    leaf = f"/{group}/{folder}{DEEP_LEAF}"
    assert vfs.read(leaf, 0, 100) == b"bottom\n"
    bottom = leaf.rsplit("/", 1)[0]
    assert [e.name for e in vfs.listdir(bottom)] == ["leaf.txt"]
    assert vfs.getattr(leaf).size == 7


def test_vfs_lookups_level_by_level_stay_linear(repo: Repository, deep: Snapshot) -> None:
    """`cd` down without listing (as a file system does: each lookup after its parent's)."""
    vfs = Vfs(repo)
    (group,) = [e.name for e in vfs.listdir("/")]
    folder = [e.name for e in vfs.listdir(f"/{group}") if e.name != "latest"][0]
    looked_at = 0
    real_get = vfs._entries.get

    def counting_get(key):  # type: ignore[no-untyped-def]
        nonlocal looked_at
        looked_at += len(key)
        return real_get(key)

    vfs._entries.get = counting_get  # type: ignore[method-assign]
    path = f"/{group}/{folder}/deep"
    for _ in range(DEPTH):
        path += "/d"
        assert vfs.getattr(path).size == 0
    assert vfs.read(path + "/leaf.txt", 0, 10) == b"bottom\n"
    # Each lookup hashes its own key and its parent's: about DEPTH^2 in all, not DEPTH^3 / 6.
    assert looked_at < 3 * DEPTH * DEPTH


@pytest.mark.usefixtures("fuse")
def test_mount_reaches_the_bottom(repo: Repository, repo_path: str, deep: Snapshot, tmp_path: Path) -> None:  # fmt: skip
    repo.close()
    mountpoint = tmp_path / "mnt"
    mountpoint.mkdir()
    with mounted(repo_path, mountpoint):
        (group,) = os.listdir(mountpoint)
        folder = next(n for n in os.listdir(mountpoint / group) if n != "latest")
        fd = os.open(mountpoint / group / folder / "deep", os.O_RDONLY | os.O_DIRECTORY)
        levels = 0
        try:
            while "d" in os.listdir(fd):  # one level at a time, through folder handles
                child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = child
                levels += 1
            leaf = os.open("leaf.txt", os.O_RDONLY, dir_fd=fd)
            try:
                data = os.read(leaf, 100)
            finally:
                os.close(leaf)
        finally:
            os.close(fd)
        with open(str(mountpoint / group / folder) + DEEP_LEAF, "rb") as f:
            assert f.read() == b"bottom\n"
    assert levels == DEPTH and data == b"bottom\n"


def test_verify_restores_and_removes_the_deep_sandbox(repo: Repository, deep: Snapshot, tmp_path: Path) -> None:  # fmt: skip
    sandboxes = tmp_path / "sandboxes"
    result = run_verification(repo, deep, VerifyOptions(sandbox_dir=str(sandboxes)))
    assert result.ok, result.record.failures[:3]
    assert result.record.files_checked == DEPTH + 1
    assert list(sandboxes.iterdir()) == []  # removed, however deep


def test_recover_a_deep_snapshot(repo: Repository, deep: Snapshot, tmp_path: Path) -> None:
    assert run_verification(repo, deep).ok
    target = tmp_path / "target"
    result = recover(repo, RecoverOptions(app="deep", target=str(target)))
    assert result.ok, result.errors[:3]
    assert result.report is not None and result.report["recheck"]["files"] == DEPTH + 1
    leaf = str(target) + DEEP_LEAF
    with open(leaf, "rb") as f:
        assert f.read() == b"bottom\n"


def test_verify_names_a_subtree_deeper_than_path_max_and_goes_on(repo: Repository, tmp_path: Path) -> None:  # fmt: skip
    """A depth the OS refuses (PATH_MAX) fails that subtree, named; the rest is verified."""
    tree = repo.save_tree([_file(repo, b"leaf.txt", b"x")])
    for _ in range(400):  # 400 x 21 bytes: past PATH_MAX (4096)
        tree = repo.save_tree([_dir(b"n" * 20, tree)])
    root = repo.save_tree([_dir(b"deep", tree), _file(repo, b"top.txt", b"top\n")])
    time, start_ns = now_utc()
    snap = repo.save_snapshot(Snapshot(time=time, start_ns=start_ns, host="h", user="u",
                                       paths=("/deep", "/top.txt"), tree=root.hex(), app="x"))  # fmt: skip
    sandboxes = tmp_path / "sb"
    record = run_verification(repo, snap, VerifyOptions(sandbox_dir=str(sandboxes))).record
    assert not record.ok and record.files_checked == 1  # top.txt
    assert len(record.failures) == 1
    assert record.failures[0].path.startswith("/deep/" + "n" * 20 + "/")
    assert list(sandboxes.iterdir()) == []


def test_remove_tree_deeper_than_path_max_and_read_only(tmp_path: Path) -> None:
    top = tmp_path / "t"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(DEPTH):  # past the recursion limit, and past PATH_MAX (4096) as a path
            name = "n" * 5
            os.mkdir(name, dir_fd=fd)
            with open(os.open("file", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd), "w") as f:
                f.write("x")
            os.symlink("/etc", "link", dir_fd=fd)
            child = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.chmod(fd, 0o500)  # read-only folders, as a restore may leave them
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    os.symlink(outside, top / "to-outside")
    remove_tree(str(top))
    assert not top.exists()
    assert (outside / "keep").read_text() == "x"
