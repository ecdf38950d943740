"""A local user who controls a source tree must not be able to stop the system's backups.

issue 12, kind 7: an ordinary folder nested deeper than Python's recursion limit made
`backup` die with a RecursionError traceback and no snapshot. Everything the OS lets the
walk reach is saved; a subtree below the walk's depth bound is reported by path (exit 3).
"""

from __future__ import annotations

import os
from pathlib import Path

from casbackup.testing.fixtures import run_cli
from casbackup.verify.sandbox import remove_tree


def _nest(top: Path, depth: int) -> Path:
    """``depth`` levels of ``a/`` below ``top`` (made through a dir fd: no PATH_MAX issue)."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("a", dir_fd=fd)
            child = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        leaf = os.open("leaf.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"bottom\n")
        os.close(leaf)
    finally:
        os.close(fd)
    return top


def test_backup_of_a_folder_600_levels_deep_saves_it_whole(repo_path: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "deep").mkdir(parents=True)
    (src / "beside.txt").write_bytes(b"next to it\n")
    _nest(src / "deep", 600)
    res = run_cli("backup", str(src), repo=repo_path)
    assert res.code == 0, res.err
    assert "Traceback" not in res.err
    leaf = str(src / "deep") + "/a" * 600 + "/leaf.txt"
    found = run_cli("dump", f"latest:{leaf}", repo=repo_path)
    assert found.code == 0, found.err
    assert found.out == "bottom\n"


def test_backup_below_the_depth_bound_names_the_subtree_and_saves_the_rest(
    repo_path: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    (src / "deep").mkdir(parents=True)
    (src / "beside.txt").write_bytes(b"next to it\n")
    _nest(src / "deep", 2_100)  # 4,200 bytes of path: past PATH_MAX and the walk's bound
    try:
        res = run_cli("backup", str(src), repo=repo_path)
    finally:
        remove_tree(str(src / "deep"))  # pytest's own clean-up recurses on depth
    assert "Traceback" not in res.err
    assert res.code == 3, res.err
    assert "deep/a/a/a" in res.err
    found = run_cli("dump", f"latest:{src}/beside.txt", repo=repo_path)
    assert found.code == 0 and found.out == "next to it\n", found.err
