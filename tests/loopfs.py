"""File systems on loop files for the tests that need a particular one (Btrfs snapshots,
restores onto XFS), small tmpfs mounts (a full or read-only target), and the rule for what
is missing: skip with the reason, fail under CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def unavailable(reason: str) -> None:
    """Skip with the reason; under CI the machine is meant to have it, so fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


@contextmanager
def loop_mount(kind: str, base: Path, package: str, size_mib: int = 320) -> Iterator[Path]:
    """A fresh file system of ``kind`` (``mkfs.<kind>``, from Debian's ``package``) on a
    loop file under ``base``, mounted; unmounted and deleted afterwards."""
    if os.geteuid() != 0:
        unavailable(f"{kind} tests need root (loop devices and mount)")
    for tool in (f"mkfs.{kind}", "mount", "losetup"):
        if shutil.which(tool) is None:
            unavailable(f"'{tool}' is not installed (make sysdeps installs {package})")
    with open("/proc/filesystems") as f:
        if kind not in f.read().split():
            unavailable(f"the kernel has no {kind} (not in /proc/filesystems)")
    image, mnt = base / "fs.img", base / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(size_mib * 1024 * 1024)
    made = _run(f"mkfs.{kind}", "-q", str(image))
    if made.returncode != 0:
        unavailable(f"mkfs.{kind} failed: {made.stderr.strip()}")
    mounted = _run("mount", "-o", "loop", str(image), str(mnt))
    if mounted.returncode != 0:
        unavailable(f"cannot mount a loop device: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        for _ in range(20):
            if _run("umount", str(mnt)).returncode == 0:
                break
            time.sleep(0.2)
        image.unlink(missing_ok=True)


@contextmanager
def tmpfs(where: Path, options: str = "size=1m") -> Iterator[Path]:
    """A real tmpfs mounted at ``where`` (made if missing) with mount ``options`` (e.g.
    "size=1m,ro"), unmounted afterwards. Needs root and mount(8): without them the test is
    skipped with the reason, and fails under CI, where the suite runs as root."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        unavailable("a tmpfs mount (a full or read-only file system) needs root and mount(8)")
    done = _run("mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where))
    if done.returncode != 0:
        unavailable(f"cannot mount a tmpfs at {where}: {done.stderr.strip()}")
    try:
        yield where
    finally:
        _run("umount", str(where))
