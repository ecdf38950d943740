"""The FUSE front end of the snapshot file system, on mfusepy (ctypes over libfuse 3).

mfusepy was chosen over pyfuse3 by measurement (bench notes in the mount issue): on the
same in-memory file system it read sequentially as fast or faster, it runs callbacks in
libfuse's worker threads so decryption of several chunks overlaps (pyfuse3 runs one trio
loop), and it needs only the libfuse3 shared library at run time: no compiler, no
libfuse3-dev, no trio.

Errors never escape a callback: a missing name is ENOENT, and any failure to read stored
data is EIO for that one operation, reported through ``on_error`` with the path, while
the mount keeps serving everything else.
"""

from __future__ import annotations

import ctypes.util
import errno
import itertools
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from typing import Any

from casbackup.errors import CasError, MountError, NotFound, UsageError
from casbackup.store import stopping
from casbackup.vfs.core import OpenFile, Stat, Vfs

# The kernel may keep what it learnt for this long: snapshots never change; only the
# top levels do when backups run, and a minute's delay there is harmless.
CACHE_SECONDS = 60.0
WORKER_THREADS = 16


def check_fuse() -> Any:
    """Import the binding after checking the machine can mount; MountError says what is missing."""
    if not os.path.exists("/dev/fuse"):
        raise MountError("FUSE is not available: /dev/fuse does not exist (load the fuse module)")
    if shutil.which("fusermount3") is None:
        raise MountError("FUSE is not available: fusermount3 is not installed (install fuse3)")
    if "FUSE_LIBRARY_NAME" not in os.environ and ctypes.util.find_library("fuse3"):
        # mfusepy prefers libfuse 2 when both are present; version 3 is the maintained one.
        os.environ["FUSE_LIBRARY_NAME"] = "fuse3"
    try:
        import mfusepy
    except ImportError:
        raise MountError("FUSE is not available: the Python package mfusepy is missing") from None
    except OSError:
        raise MountError(
            "FUSE is not available: libfuse3 is not installed (install fuse3)"
        ) from None
    return mfusepy


def check_mountpoint(mountpoint: str) -> None:
    """Refuse, with MountError, a mount point that is not a folder this user may mount on,
    that is mounted already, or that a killed mount left behind."""
    try:
        st = os.stat(mountpoint)
        if stat.S_ISDIR(st.st_mode):
            # Asks the file system itself: stat may come from the kernel's cache, but a FUSE
            # mount whose process died answers ENOTCONN to anything it must serve.
            os.statvfs(mountpoint)
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise MountError(
                f"{mountpoint} is left from a mount whose process was killed: run "
                f"'fusermount3 -u {mountpoint}', then mount again"
            ) from None
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
            raise MountError(f"mount point {mountpoint} cannot be used: {exc.strerror}") from None
        st = None
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise MountError(f"mount point {mountpoint} is not an existing folder")
    if os.path.ismount(mountpoint):
        raise MountError(f"{mountpoint} is already a mount point; unmount it first")
    if not os.access(mountpoint, os.W_OK):
        raise MountError(f"mount point {mountpoint} is not writable by this user")


def holds_entries(mountpoint: str) -> bool:
    """Whether the folder holds anything a mount there would hide (False if unreadable)."""
    try:
        with os.scandir(mountpoint) as entries:
            return any(True for _ in entries)
    except OSError:
        return False


def _attrs(st: Stat) -> dict[str, int]:
    return {
        "st_ino": st.ino, "st_mode": st.mode, "st_nlink": st.nlink, "st_uid": st.uid,
        "st_gid": st.gid, "st_size": st.size, "st_blocks": st.blocks, "st_rdev": st.rdev,
        "st_atime": st.mtime_ns, "st_mtime": st.mtime_ns, "st_ctime": st.ctime_ns,
    }  # fmt: skip


_TRUSTED = "trusted."


def _caller_uid() -> int:
    """The uid of the process whose request this libfuse worker thread is serving."""
    import mfusepy  # imported by check_fuse before any request

    return int(mfusepy.fuse_get_context()[0])


class FuseOps:
    """mfusepy operations over a Vfs; mfusepy calls these from libfuse's worker threads."""

    use_ns = True  # times are integers in nanoseconds, as the trees store them

    def __init__(
        self, vfs: Vfs, on_error: Callable[[str], None], on_ready: Callable[[], None]
    ) -> None:
        self.vfs = vfs
        self.on_error = on_error
        self.on_ready = on_ready
        self._files: dict[int, OpenFile] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._reported: set[str] = set()

    def _fail(self, path: str, exc: Exception) -> OSError:
        if isinstance(exc, NotFound):
            return OSError(errno.ENOENT, str(exc))
        if isinstance(exc, UsageError):
            return OSError(errno.EINVAL, str(exc))
        message = str(exc) if isinstance(exc, CasError) else f"{path}: {exc!r}"
        if stopping.stopped() is not None:
            return OSError(errno.EIO, message)  # the mount is ending: not worth a line each
        # The kernel retries failed reads (read-ahead, then the real read): say it once.
        with self._lock:
            new = message not in self._reported
            if new and len(self._reported) < 10_000:
                self._reported.add(message)
        if new:
            self.on_error(message if path in message else f"{path}: {message}")
        return OSError(errno.EIO, message)

    def init_with_config(self, conn: Any, config: Any) -> None:
        if config is not None:
            config.entry_timeout = CACHE_SECONDS
            config.attr_timeout = CACHE_SECONDS
            config.negative_timeout = 5.0
            config.use_ino = 1
            config.kernel_cache = 1  # file contents never change: keep them in the page cache
        self.on_ready()

    def getattr(self, path: str, fh: Any = None) -> dict[str, int]:
        try:
            return _attrs(self.vfs.getattr(path))
        except Exception as exc:
            raise self._fail(path, exc) from None

    def readdir(self, path: str, fh: Any) -> Iterator[tuple[str, dict[str, int], int]]:
        try:
            entries = self.vfs.listdir(path)
            # With inode number 0 the C library drops an entry: '.' and '..' need theirs.
            here = self.vfs.lookup(path).ino
            parent = self.vfs.lookup(path.rsplit("/", 1)[0] or "/").ino if path != "/" else 1
        except Exception as exc:
            raise self._fail(path, exc) from None
        yield ".", {"st_mode": stat.S_IFDIR | 0o555, "st_ino": here}, 0
        yield "..", {"st_mode": stat.S_IFDIR | 0o555, "st_ino": parent}, 0
        for entry in entries:
            st = entry.stat()
            yield entry.name, {"st_mode": st.mode, "st_ino": st.ino}, 0

    def readlink(self, path: str) -> str:
        try:
            return self.vfs.readlink(path)
        except Exception as exc:
            raise self._fail(path, exc) from None

    def open(self, path: str, fi: Any) -> int:
        if fi.flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise OSError(errno.EROFS, "read-only file system")
        try:
            handle = self.vfs.open(path)
        except Exception as exc:
            raise self._fail(path, exc) from None
        with self._lock:
            number = next(self._numbers)
            self._files[number] = handle
        fi.fh = number
        fi.keep_cache = 1
        return 0

    def read(self, path: str, size: int, offset: int, fi: Any) -> bytes:
        with self._lock:
            handle = self._files.get(fi.fh)
        try:
            if handle is None:  # released already: the kernel never does this, but be safe
                return self.vfs.read(path, offset, size)
            return handle.read(offset, size)
        except Exception as exc:
            raise self._fail(path, exc) from None

    def release(self, path: str, fi: Any) -> int:
        with self._lock:
            self._files.pop(fi.fh, None)
        return 0

    def listxattr(self, path: str) -> list[str]:
        try:
            names = sorted(self.vfs.xattrs(path))
        except Exception as exc:
            raise self._fail(path, exc) from None
        if any(n.startswith(_TRUSTED) for n in names) and _caller_uid() != 0:
            # The kernel refuses trusted.* to callers without CAP_SYS_ADMIN, and a disk file
            # system does not list them to such callers: listed here, 'rsync -X' or
            # 'cp --preserve=xattr' out of a user's mount failed on every such file.
            names = [n for n in names if not n.startswith(_TRUSTED)]
        return names

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        try:
            value = self.vfs.xattrs(path).get(name)
        except Exception as exc:
            raise self._fail(path, exc) from None
        if value is None:
            raise OSError(errno.ENODATA, "no such attribute")
        return value

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}


def mount(
    vfs: Vfs,
    mountpoint: str,
    *,
    allow_other: bool = False,
    on_ready: Callable[[], None] = lambda: None,
    on_error: Callable[[str], None] = lambda message: None,
) -> None:
    """Serve ``vfs`` at ``mountpoint`` until it is unmounted (fusermount3 -u, SIGINT, SIGTERM).

    libfuse installs its own SIGINT/SIGTERM/SIGHUP handlers for the duration: a signal ends
    the loop and libfuse unmounts before this returns.
    """
    mfusepy = check_fuse()
    check_mountpoint(mountpoint)
    options: dict[str, Any] = {"ro": True, "fsname": "casbackup", "subtype": "casbackup"}
    if mfusepy.fuse_version_major == 3:
        # Without it libfuse 3.14 warns about an uninitialized default on every mount.
        options["max_threads"] = WORKER_THREADS
        options["max_idle_threads"] = WORKER_THREADS
    if allow_other:
        if os.getuid() != 0 and not _user_allow_other():
            raise MountError(
                "--allow-other needs 'user_allow_other' in /etc/fuse.conf when not run as root"
            )
        # Other users see the files, so the kernel must enforce their recorded permissions.
        options.update(allow_other=True, default_permissions=True)
    ready = threading.Event()

    def started() -> None:
        ready.set()
        on_ready()

    ops = FuseOps(vfs, on_error, started)
    try:
        with stopping.watch_stop(_session_ended(mfusepy)):
            mfusepy.FUSE(ops, mountpoint, foreground=True, raw_fi=True, **options)
    except RuntimeError as exc:
        # libfuse also returns non-zero after a signal ended a mount that worked.
        if not ready.is_set():
            raise MountError(f"could not mount at {mountpoint} (libfuse error {exc})") from None


def _session_ended(mfusepy: Any) -> Callable[[], bool]:
    """Whether libfuse's loop was told to end (its handlers took SIGINT, SIGTERM or SIGHUP,
    which Python's never see while the main thread is in that loop), for
    ``stopping.watch_stop``: before it unmounts, libfuse waits for its worker threads, and
    one waiting for a store request that hangs held Ctrl-C for the store's timeout times
    the retries (measured: still mounted 30 s after SIGINT or SIGTERM).

    Asked only in libfuse's worker threads, inside a callback (the session exists then for
    sure); other threads see only a True one of those saw."""
    lib = ctypes.CDLL(mfusepy._libfuse._name)  # function objects of its own: its argtypes
    get_session = lib.fuse_get_session
    get_session.argtypes, get_session.restype = [ctypes.c_void_p], ctypes.c_void_p
    exited = lib.fuse_session_exited
    exited.argtypes, exited.restype = [ctypes.c_void_p], ctypes.c_int
    seen: list[bool] = []

    def ended() -> bool:
        if not seen and isinstance(threading.current_thread(), threading._DummyThread):
            fuse = mfusepy._libfuse.fuse_get_context().contents.fuse  # a libfuse thread's
            if fuse and exited(get_session(fuse)):
                seen.append(True)
        return bool(seen)

    return ended


def _user_allow_other() -> bool:
    try:
        with open("/etc/fuse.conf", encoding="utf-8") as f:
            return any(line.strip() == "user_allow_other" for line in f)
    except OSError:
        return False
