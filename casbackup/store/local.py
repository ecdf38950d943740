"""A repository in a local directory.

Crash safety: each object is written to ``<name>.tmp-<random>``, fsynced,
renamed over its final name, and the directory is fsynced, so a crash leaves at
most a stray temp file (ignored by ``list`` and removed by ``prune``), never a
partial object under a real name.
"""

from __future__ import annotations

import errno
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import BinaryIO

from casbackup.errors import NotFound, StorageError

TMP_MARK = ".tmp-"


def _storage_error(exc: OSError, what: str) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return StorageError(f"{what}: no space left on device")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StorageError(f"{what}: permission denied")
    if exc.errno == errno.EROFS:
        return StorageError(f"{what}: read-only file system")
    return StorageError(f"{what}: {exc.strerror or exc}")


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBackend:
    """Objects as files under ``root``. Keeps a small cache of open read handles."""

    def __init__(self, root: str, *, durable: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.location = self.root
        self._durable = durable
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._fd_lock = threading.Lock()
        self._made_dirs: set[str] = set()

    def _path(self, name: str) -> str:
        if name.startswith("/") or ".." in name.split("/"):
            raise StorageError(f"invalid object name {name!r}")
        return os.path.join(self.root, name)

    def put(self, name: str, data: bytes | memoryview) -> None:
        path = self._path(name)
        directory = os.path.dirname(path)
        tmp = f"{path}{TMP_MARK}{os.urandom(6).hex()}"
        try:
            if directory not in self._made_dirs:
                os.makedirs(directory, exist_ok=True)
                self._made_dirs.add(directory)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self._durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
            if self._durable:
                fsync_dir(directory)
        except (OSError, KeyboardInterrupt) as exc:  # KeyboardInterrupt: Ctrl-C, SIGTERM, SIGHUP
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise _storage_error(exc, f"writing {name}") from None
            raise
        self._forget_fd(name)

    def begin_upload(self, directory: str) -> LocalUpload:
        """An object written piece by piece and named when done (packs: the name is a hash)."""
        return LocalUpload(self, directory)

    def _open_fd(self, name: str) -> int:
        with self._fd_lock:
            fd = self._fds.get(name)
            if fd is not None:
                self._fds.move_to_end(name)
                return fd
        try:
            fd = os.open(self._path(name), os.O_RDONLY)
        except FileNotFoundError:
            raise NotFound(f"{name} is missing from the repository") from None
        except OSError as exc:
            raise _storage_error(exc, f"reading {name}") from None
        with self._fd_lock:
            if name in self._fds:  # another thread opened it meanwhile
                os.close(fd)
                return self._fds[name]
            self._fds[name] = fd
            while len(self._fds) > 64:
                _, old = self._fds.popitem(last=False)
                os.close(old)
        return fd

    def _forget_fd(self, name: str) -> None:
        with self._fd_lock:
            fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if length is None:
            try:
                with open(self._path(name), "rb") as f:
                    f.seek(offset)
                    return f.read()
            except FileNotFoundError:
                raise NotFound(f"{name} is missing from the repository") from None
            except OSError as exc:
                raise _storage_error(exc, f"reading {name}") from None
        fd = self._open_fd(name)
        try:
            data = os.pread(fd, length, offset)
        except OSError as exc:
            self._forget_fd(name)
            raise _storage_error(exc, f"reading {name}") from None
        if len(data) != length:
            raise StorageError(
                f"{name} is truncated: wanted {length} bytes at offset {offset}, got {len(data)}"
            )
        return data

    def open_file(self, name: str) -> BinaryIO:
        """The object as an unbuffered file (``LocalFiles``): the caller closes it."""
        try:
            return open(self._path(name), "rb", buffering=0)
        except FileNotFoundError:
            raise NotFound(f"{name} is missing from the repository") from None
        except OSError as exc:
            raise _storage_error(exc, f"reading {name}") from None

    def delete(self, name: str) -> None:
        self._forget_fd(name)
        try:
            os.unlink(self._path(name))
        except FileNotFoundError:
            raise NotFound(f"{name} is missing from the repository") from None
        except OSError as exc:
            raise _storage_error(exc, f"deleting {name}") from None

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        # Walk only the directory the prefix names, so listing "snapshots/" never scans data/.
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        top = os.path.join(self.root, base) if base else self.root
        if not os.path.isdir(top):
            return
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, self.root)
            for filename in sorted(filenames):
                if TMP_MARK in filename:
                    continue
                name = filename if rel_dir == "." else f"{rel_dir}/{filename}"
                if not name.startswith(prefix):
                    continue
                try:
                    size = os.stat(os.path.join(dirpath, filename)).st_size
                except FileNotFoundError:
                    continue
                yield name, size

    def _stat(self, name: str) -> os.stat_result:
        try:
            return os.stat(self._path(name))
        except FileNotFoundError:
            raise NotFound(f"{name} is missing from the repository") from None
        except OSError as exc:
            raise _storage_error(exc, f"reading {name}") from None

    def stat(self, name: str) -> int:
        return self._stat(name).st_size

    def exists(self, name: str) -> bool:
        return os.path.exists(self._path(name))

    def modified(self, name: str) -> float:
        """When an object (or a temp file) was last written, in seconds since the epoch.

        Prune leaves recent unindexed packs and temp files alone: they may belong to a
        backup that is still writing.
        """
        return self._stat(name).st_mtime

    def list_temp_files(self) -> Iterator[str]:
        for dirpath, _dirs, filenames in os.walk(self.root):
            for filename in filenames:
                if TMP_MARK in filename:
                    yield os.path.relpath(os.path.join(dirpath, filename), self.root)

    def remove_temp(self, name: str) -> None:
        os.unlink(self._path(name))

    def close(self) -> None:
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


class LocalUpload:
    """A file written in pieces under a temp name, then fsynced and renamed: ``put``'s
    guarantees without holding the whole object in memory."""

    def __init__(self, backend: LocalBackend, directory: str) -> None:
        self._backend = backend
        folder = backend._path(directory)
        self._tmp = os.path.join(folder, f"upload{TMP_MARK}{os.urandom(6).hex()}")
        try:
            os.makedirs(folder, exist_ok=True)
            self._fd: int | None = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise _storage_error(exc, f"writing to {directory}") from None

    def write(self, data: bytes | memoryview) -> None:
        assert self._fd is not None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self.abort()
            raise _storage_error(exc, "writing a pack") from None

    def commit(self, name: str) -> None:
        backend = self._backend
        path = backend._path(name)
        directory = os.path.dirname(path)
        assert self._fd is not None
        try:
            if backend._durable:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            if directory not in backend._made_dirs:
                os.makedirs(directory, exist_ok=True)
                backend._made_dirs.add(directory)
            os.replace(self._tmp, path)
            if backend._durable:
                fsync_dir(directory)
        except OSError as exc:
            self.abort()
            raise _storage_error(exc, f"writing {name}") from None
        backend._forget_fd(name)

    def abort(self) -> None:
        """Drop the temp file (a crash instead leaves it for ``prune`` to remove)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            os.unlink(self._tmp)
        except OSError:
            pass
