"""Fixtures for file-system snapshot tests: a real Btrfs on a loop file, a zfs-fuse pool,
and a site (config + repository) whose application lives on them."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from casbackup.testing.fixtures import PASSWORD, CliResult, run_cli
from tests.loopfs import loop_mount, unavailable


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


@dataclass
class Site:
    root: Path  # config, repository
    config: Path
    repo: str

    def cli(self, *args: str, env: dict[str, str] | None = None) -> CliResult:
        full = {"CASBACKUP_CONFIG": str(self.config), **(env or {})}
        return run_cli(*args, env=full)


def write_site(tmp: Path, sources: list[str], snapshot: str, extra: str = "") -> Site:
    repo = str(tmp / "repo")
    config = tmp / "casbackup.toml"
    srcs = ", ".join(f'"{s}"' for s in sources)
    config.write_text(
        f'[repository]\nlocation = "{repo}"\npassword_env = "CASBACKUP_PASSWORD"\n\n'
        f"[snapshots]\nmax_snapshots = 3\n{extra}\n"
        f'[[applications]]\nname = "webapp"\nsources = [{srcs}]\nsnapshot = "{snapshot}"\n'
        'default_backup_type = "full"\n'
    )
    res = run_cli("init", "--insecure-test-kdf", repo=repo)
    assert res.code == 0, res.err
    return Site(tmp, config, repo)


@pytest.fixture
def btrfs_mount(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh Btrfs on a loop file, mounted; unmounted and deleted afterwards."""
    with loop_mount("btrfs", tmp_path_factory.mktemp("btrfs"), "btrfs-progs") as mnt:
        if shutil.which("btrfs") is None:
            unavailable("'btrfs' is not installed (make sysdeps installs btrfs-progs)")
        yield mnt


@pytest.fixture
def zfs_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A zfs-fuse pool on a file, mounted at a temporary folder: (pool name, mount point)."""
    if os.geteuid() != 0:
        unavailable("ZFS tests need root")
    for tool in ("zfs-fuse", "zpool", "zfs"):
        if shutil.which(tool) is None:
            unavailable(f"'{tool}' is not installed (make sysdeps installs zfs-fuse)")
    if not os.path.exists("/dev/fuse"):
        unavailable("/dev/fuse is missing")
    if _run("zpool", "list").returncode != 0:
        started = _run("zfs-fuse")
        if started.returncode != 0:
            unavailable(f"zfs-fuse does not start: {started.stderr.strip()}")
        for _ in range(50):
            if _run("zpool", "list").returncode == 0:
                break
            time.sleep(0.1)
        else:
            unavailable("the zfs-fuse daemon does not answer")
    base = tmp_path_factory.mktemp("zfs")
    image, mnt = base / "pool.img", base / "mnt"
    with open(image, "wb") as f:
        f.truncate(128 * 1024 * 1024)
    pool = f"cbt{uuid.uuid4().hex[:8]}"
    made = _run("zpool", "create", "-m", str(mnt), pool, str(image))
    if made.returncode != 0:
        unavailable(f"zpool create failed: {made.stderr.strip()}")
    try:
        yield pool, mnt
    finally:
        for _ in range(20):
            if _run("zpool", "destroy", "-f", pool).returncode == 0:
                break
            time.sleep(0.3)
        image.unlink(missing_ok=True)


__all__ = ["PASSWORD", "Site", "unavailable", "write_site"]
