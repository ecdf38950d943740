"""`casbackup backup` as a user runs it: attributes, extreme times, pseudo-files, exit codes;
and the FUSE mount showing the recorded attributes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.testing.fixtures import make_repo, open_repo, run_cli
from tests.cli.test_mount import fuse, mounted  # noqa: F401 - the fixture is used by name


def _attributed(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    try:
        os.setxattr(src, "user.folder", b"yes")
    except OSError as exc:
        pytest.skip(f"no user xattrs on this file system: {exc.strerror}")
    (src / "f").write_bytes(b"data")
    os.setxattr(src / "f", "user.test", b"1")
    return src


def _node_xattrs(repo_path: str, path: Path) -> dict[bytes, bytes]:
    repo = open_repo(repo_path)
    try:
        (snap,) = repo.list_snapshots()[-1:]
        node = repo.find_node(snap.root, str(path))
        assert node is not None
        return dict(node.xattrs)
    finally:
        repo.close()


def test_backup_records_xattrs_and_no_xattrs_skips_them(tmp_path: Path) -> None:
    src = _attributed(tmp_path)
    repo_path = str(tmp_path / "repo")
    make_repo(repo_path).close()
    res = run_cli("backup", str(src), repo=repo_path)
    assert res.code == 0, res.err
    assert _node_xattrs(repo_path, src / "f") == {b"user.test": b"1"}
    res = run_cli("backup", "--no-xattrs", str(src), repo=repo_path)
    assert res.code == 0, res.err
    assert _node_xattrs(repo_path, src / "f") == {}


def test_a_time_after_2262_backs_up_with_exit_0(tmp_path: Path) -> None:
    if shutil.which("touch") is None:
        pytest.skip("no touch")
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"from the future")
    subprocess.run(["touch", "-d", "2300-01-01", str(src / "f")], check=True)
    if os.stat(src / "f").st_mtime_ns < 2**63:
        pytest.skip("this file system clamps times past 2262")
    repo_path = str(tmp_path / "repo")
    make_repo(repo_path).close()
    res = run_cli("backup", str(src), repo=repo_path)
    assert res.code == 0, res.err
    assert "Traceback" not in res.err
    res = run_cli("--json", "ls", f"latest:{src}", repo=repo_path)
    assert res.code == 0, res.err
    assert '"mtime": "2300-01-01' in res.out or '"mtime": "2299-12-31' in res.out  # local time


def test_proc_cpuinfo_backs_up_with_exit_0(tmp_path: Path) -> None:
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo")
    repo_path = str(tmp_path / "repo")
    make_repo(repo_path).close()
    res = run_cli("--json", "backup", "/proc/cpuinfo", repo=repo_path)
    assert res.code == 0, res.err  # it was exit 3, "could not be read", though stored
    summary = json.loads(res.out.splitlines()[-1])
    assert summary["warnings"] == [] and summary["bytes_total"] > 0


def test_the_mount_shows_recorded_xattrs(fuse, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    src = _attributed(tmp_path)
    repo_path = str(tmp_path / "repo")
    repo = make_repo(repo_path)
    result = run_backup(repo, BackupOptions(paths=(str(src),), app="web"))
    assert result.snapshot is not None
    repo.close()
    mp = tmp_path / "mnt"
    mp.mkdir()
    with mounted(repo_path, mp):
        root = mp / "web" / "latest" / str(src).lstrip("/")
        assert os.getxattr(root / "f", "user.test") == b"1"
        assert "user.test" in os.listxattr(root / "f")
        assert os.getxattr(root, "user.folder") == b"yes"
