"""``casbackup mount`` run by an ordinary user (tests/unprivileged.py), over a snapshot
root took: the user reads what they may, and the mount lists no attribute the kernel
would refuse them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.test_mount import _fuse_missing
from tests.unprivileged import OrdinaryUser, ordinary_user


@pytest.fixture
def user() -> Iterator[OrdinaryUser]:
    reason = _fuse_missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"FUSE is required under CI: {reason}")
        pytest.skip(f"FUSE is not available: {reason}")
    yield from ordinary_user()


def _mounted(path: Path) -> bool:
    # Root may not stat a user's FUSE mount (no allow_other): the mount table says it.
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


def test_a_users_mount_lists_no_trusted_attributes(user: OrdinaryUser) -> None:
    src = user.base / "src"
    src.mkdir()
    (src / "f").write_text("content")
    os.setxattr(src / "f", "trusted.note", b"root only")
    os.setxattr(src / "f", "user.note", b"anyone")
    repo = str(user.base / "repo")
    env = user.env(str(user.base / "root-home"))
    env.update(CASBACKUP_CACHE_DIR=str(user.base / "root-cache"),
               CASBACKUP_STATE_DIR=str(user.base / "root-state"))  # fmt: skip
    assert user.root_cli("-r", repo, "init", env=env).code == 0
    assert user.root_cli("-r", repo, "backup", str(src), env=env).code == 0
    user.give(repo)
    mountpoint = user.home / "mnt"
    mountpoint.mkdir()
    user.give(mountpoint)
    command = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups",
               sys.executable, "-m", "casbackup.cli.main", "-r", repo, "mount", str(mountpoint)]  # fmt: skip
    proc = subprocess.Popen(command, env=user.env(), cwd=user.base, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not _mounted(mountpoint):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the mount did not appear within 60 s"
            time.sleep(0.1)
        probe = (
            "import glob, os, sys\n"
            "[f] = glob.glob(sys.argv[1] + '/*/latest' + sys.argv[2] + '/f')\n"
            "print(sorted(os.listxattr(f)), os.getxattr(f, 'user.note').decode(), open(f).read())"
        )  # fmt: skip
        seen = subprocess.run(
            ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups",
             sys.executable, "-c", probe, str(mountpoint), str(src)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert seen.returncode == 0, seen.stderr
        assert seen.stdout.split("\n")[0] == "['user.note'] anyone content"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if _mounted(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
