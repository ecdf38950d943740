"""A tiny FUSE file system whose entries fail the way a dying disk or a broken network
mount does (EIO), for backups of real mounts (mfusepy, as `casbackup mount` uses).

Run as ``python -m tests.archiver.faultyfs MOUNTPOINT`` (foreground; unmount with
``fusermount3 -u``). What it serves, and how each entry fails:

    /good.txt           readable
    /eio.txt            stat works (100 bytes), every read fails with EIO
    /eio-\xe9.txt        the same, under a name that is not UTF-8 (Latin-1 bytes)
    /badstat            listed by its folder, but its stat fails with EIO
    /badxattr.txt       readable; lists the attribute user.broken, whose read fails with EIO
    /unlistable/        a folder whose listing fails with EIO
    /sub/ok.txt         readable
"""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

NOT_UTF8 = os.fsdecode(b"/eio-\xe9.txt")  # how mfusepy hands it over (surrogateescape)
FILES = {
    "/good.txt": b"good\n",
    "/eio.txt": b"e" * 100,
    NOT_UTF8: b"e" * 100,
    "/badxattr.txt": b"attributes broken\n",
    "/sub/ok.txt": b"ok\n",
}
DIRS = {"/": ["good.txt", "eio.txt", NOT_UTF8[1:], "badstat", "badxattr.txt", "unlistable", "sub"],
        "/sub": ["ok.txt"], "/unlistable": ["never.txt"]}  # fmt: skip
WHEN = time.time() - 3600  # fixed times: an unchanged entry looks unchanged to the next run


def faulty_mount(tmp_path: Path) -> Iterator[Path]:
    """The body of a test module's fixture: this file system mounted under ``tmp_path``
    (in a process of its own), unmounted afterwards. Skips without FUSE, except under
    CI=true, where it fails."""
    import pytest

    from tests.cli.test_mount import _fuse_missing

    reason = _fuse_missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"FUSE is required under CI: {reason}")
        pytest.skip(f"FUSE is not available: {reason}")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen([sys.executable, "-m", "tests.archiver.faultyfs", str(mnt)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the FUSE file system did not mount"
            time.sleep(0.05)
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=False, capture_output=True)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(mountpoint: str) -> None:
    from casbackup.vfs.fuse import check_fuse

    fuse = check_fuse()

    class Faulty(fuse.Operations):  # type: ignore[misc,name-defined]
        def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
            times = {"st_mtime": WHEN, "st_ctime": WHEN, "st_atime": WHEN}
            if path in DIRS:
                return {"st_mode": stat.S_IFDIR | 0o755, "st_nlink": 2, **times}
            if path in FILES:
                size = len(FILES[path])
                return {"st_mode": stat.S_IFREG | 0o644, "st_nlink": 1, "st_size": size, **times}
            if path == "/badstat":
                raise fuse.FuseOSError(errno.EIO)
            raise fuse.FuseOSError(errno.ENOENT)

        def readdir(self, path: str, fh: Any) -> list[str]:
            if path == "/unlistable":
                raise fuse.FuseOSError(errno.EIO)
            return [".", "..", *DIRS[path]]

        def open(self, path: str, flags: int) -> int:
            if path not in FILES:
                raise fuse.FuseOSError(errno.ENOENT)
            return 0

        def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
            if path in ("/eio.txt", NOT_UTF8):
                raise fuse.FuseOSError(errno.EIO)
            return FILES[path][offset : offset + size]

        def listxattr(self, path: str) -> list[str]:
            return ["user.broken"] if path == "/badxattr.txt" else []

        def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
            if path == "/badxattr.txt" and name == "user.broken":
                raise fuse.FuseOSError(errno.EIO)
            raise fuse.FuseOSError(errno.ENODATA)

    fuse.FUSE(Faulty(), mountpoint, foreground=True, allow_other=True)


if __name__ == "__main__":
    os.umask(0o022)
    main(sys.argv[1])
