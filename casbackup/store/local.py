"""A repository in a local directory.

Crash safety: each object is written to ``<name>.tmp-<random>``, fsynced,
renamed over its final name, and the directory is fsynced, so a crash leaves at
most a stray temp file (ignored by ``list`` and removed by ``prune``), never a
partial object under a real name.

Hostile storage: whoever can write to the folder may plant symlinks, FIFOs, devices,
huge sparse files and odd names (store/names.py). Every operation therefore starts
from one open handle on the repository folder and goes down folder by folder with
``openat(O_NOFOLLOW | O_DIRECTORY)``; objects are opened with ``O_NOFOLLOW |
O_NONBLOCK`` (a FIFO never blocks) and checked with ``fstat`` to be regular files before
a byte is read; deletions are ``unlinkat`` in a folder opened that way, of a regular
file under a well-formed name. No path is ever re-joined through a folder the attacker
controls, so nothing outside the repository is read, written or deleted.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import BinaryIO

from casbackup.errors import NotFound, StorageError
from casbackup.store.names import (
    TMP_MARK,
    TOP_FOLDERS,
    ObjectRefused,
    SkippedEntries,
    check_name,
    check_size,
    is_folder,
    is_temp_name,
    rule_for,
)
from casbackup.store.ownership import denied_hint, owner_to_give

__all__ = ["TMP_MARK", "LocalBackend", "LocalUpload", "fsync_dir"]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
FOLDER_MODE = 0o700  # private, as restic: the repository is nobody else's business
FILE_MODE = 0o600


def _link_new(tmp: str, leaf: str, dfd: int) -> bool:
    """Give the written file ``tmp`` the name ``leaf`` unless something has it (both in
    the folder ``dfd``); False, with ``tmp`` removed, when something does."""
    try:
        os.link(tmp, leaf, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
    except FileExistsError:
        os.unlink(tmp, dir_fd=dfd)
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK):
            raise
        try:  # no hard links here: check, then rename
            os.stat(leaf, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            os.replace(tmp, leaf, src_dir_fd=dfd, dst_dir_fd=dfd)
            return True
        os.unlink(tmp, dir_fd=dfd)
        return False
    os.unlink(tmp, dir_fd=dfd)
    return True


def _storage_error(exc: OSError, what: str, hint: str = "") -> StorageError:
    if exc.errno == errno.ENOSPC:
        return StorageError(f"{what}: no space left on device")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return StorageError(f"{what}: permission denied{hint}")
    if exc.errno == errno.EROFS:
        return StorageError(f"{what}: read-only file system")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        return ObjectRefused(f"{what}: a symlink or a file stands where a folder must be")
    return StorageError(f"{what}: {exc.strerror or exc}")


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _classify(name: str, st: os.stat_result) -> tuple[str, str, int | str]:
    """("object", name, size), ("temp", name, 0) or ("odd", name, why) for a non-folder."""
    if stat.S_ISLNK(st.st_mode):
        return "odd", name, "is a symlink (never followed)"
    if stat.S_ISDIR(st.st_mode):
        return "odd", name, "is a folder the repository format does not have"
    if not stat.S_ISREG(st.st_mode):
        return "odd", name, "is not a regular file"
    if rule_for(name) is not None:
        return "object", name, st.st_size
    if is_temp_name(name):
        return "temp", name, 0
    return "odd", name, "is not a name the repository format uses"


def _split(name: str) -> tuple[list[str], str]:
    parts = name.split("/")
    return parts[:-1], parts[-1]


class LocalBackend:
    """Objects as files under ``root``. Keeps a small cache of open read handles."""

    def __init__(self, root: str, *, durable: bool = True) -> None:
        self.root = os.path.abspath(root)
        self.location = self.root
        self._durable = durable
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._fd_lock = threading.Lock()
        self._root_fd: int | None = None
        # (uid, gid) that root gives what it creates in another user's repository
        self._give: tuple[int, int] | None = None
        self.skipped = SkippedEntries()

    def _error(self, exc: OSError, what: str, name: str) -> StorageError:
        """``exc`` on ``name`` as a StorageError; a refusal names the entry on the way
        that another user owns (store/ownership.py)."""
        return _storage_error(exc, what, denied_hint(self.root, name, exc))

    def _given(self, fd: int) -> None:
        """Give a file or folder we just created to the repository folder's owner, when
        we are root in another user's repository (store/ownership.py)."""
        if self._give is not None:
            try:
                os.fchown(fd, *self._give)
            except OSError:
                # A file system that keeps no owners (FAT, exFAT: EPERM) or maps root to
                # nobody (NFS root_squash): what root writes is not root's there anyway.
                self._give = None

    # ------------------------------------------------------------------ folders
    def _root(self, *, create: bool = False) -> int:
        """The repository folder's handle (the user named it: it may be a symlink)."""
        with self._fd_lock:
            if self._root_fd is not None:
                return self._root_fd
            if create:
                os.makedirs(self.root, mode=FOLDER_MODE, exist_ok=True)
            try:
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
            except NotADirectoryError:
                # A file where the repository should be: there is no repository here.
                raise FileNotFoundError(errno.ENOENT, "not a folder", self.root) from None
            try:
                self._give = owner_to_give(os.fstat(fd))
            except OSError:
                os.close(fd)
                raise
            self._root_fd = fd
            return fd

    def _open_dir(self, folders: list[str], *, create: bool = False) -> int:
        """A new handle on a folder of the layout, reached without following any symlink.

        Raises FileNotFoundError when a folder is missing (and not ``create``), and an
        OSError (ELOOP/ENOTDIR) when a symlink or file stands in a folder's place.
        """
        fd = os.dup(self._root(create=create))
        try:
            for part in folders:
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    made = True
                    try:
                        os.mkdir(part, FOLDER_MODE, dir_fd=fd)
                    except FileExistsError:
                        made = False  # another writer made it meanwhile
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                    if made:
                        self._given(child)
                os.close(fd)
                fd = child
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _open_object(self, name: str) -> tuple[int, os.stat_result]:
        """A read handle on a regular file under a well-formed name, and its fstat."""
        folders, leaf = _split(name)
        try:
            dfd = self._open_dir(folders)
            try:
                fd = os.open(leaf, _READ_FLAGS, dir_fd=dfd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise ObjectRefused(f"{name} is damaged: a symlink (never followed)") from None
                raise
            finally:
                os.close(dfd)
        except FileNotFoundError:
            raise NotFound(f"{name} is missing from the repository") from None
        except OSError as exc:
            raise self._error(exc, f"reading {name}", name) from None
        try:
            st = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise self._error(exc, f"reading {name}", name) from None
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise ObjectRefused(f"{name} is damaged: not a regular file")
        return fd, st

    def _lstat(self, name: str) -> os.stat_result:
        folders, leaf = _split(name)
        try:
            dfd = self._open_dir(folders)
            try:
                return os.stat(leaf, dir_fd=dfd, follow_symlinks=False)
            finally:
                os.close(dfd)
        except FileNotFoundError:
            raise NotFound(f"{name} is missing from the repository") from None
        except OSError as exc:
            raise self._error(exc, f"reading {name}", name) from None

    def _regular(self, name: str) -> os.stat_result:
        st = self._lstat(name)
        if not stat.S_ISREG(st.st_mode):
            raise ObjectRefused(f"{name} is damaged: not a regular file")
        return st

    # ------------------------------------------------------------------ writes
    def put(self, name: str, data: bytes | memoryview) -> None:
        self._put(name, data, create=False)

    def put_new(self, name: str, data: bytes | memoryview) -> bool:
        """Create ``name`` only if nothing has it: the written temp file is hard-linked
        to the name (``linkat`` fails on an existing name, atomically), then unlinked.
        False when something already has the name (left as it was). A file system without
        hard links (FAT, some network shares) gets a check then a rename: create-only
        except against a writer racing it within that instant."""
        return self._put(name, data, create=True)

    def _put(self, name: str, data: bytes | memoryview, *, create: bool) -> bool:
        check_name(name)
        folders, leaf = _split(name)
        tmp = f"{leaf}{TMP_MARK}{os.urandom(6).hex()}"
        dfd: int | None = None
        created = True
        try:
            dfd = self._open_dir(folders, create=True)
            fd = os.open(tmp, _CREATE_FLAGS, FILE_MODE, dir_fd=dfd)
            try:
                self._given(fd)
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self._durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if create:
                created = _link_new(tmp, leaf, dfd)
            else:
                os.replace(tmp, leaf, src_dir_fd=dfd, dst_dir_fd=dfd)
            if self._durable:
                os.fsync(dfd)
        except (OSError, KeyboardInterrupt) as exc:  # KeyboardInterrupt: Ctrl-C, SIGTERM, SIGHUP
            if dfd is not None:
                try:
                    os.unlink(tmp, dir_fd=dfd)
                except OSError:
                    pass
            if isinstance(exc, OSError):
                raise self._error(exc, f"writing {name}", name) from None
            raise
        finally:
            if dfd is not None:
                os.close(dfd)
        self._forget_fd(name)
        return created

    def begin_upload(self, directory: str) -> LocalUpload:
        """An object written piece by piece and named when done (packs: the name is a hash)."""
        return LocalUpload(self, directory)

    # ------------------------------------------------------------------ reads
    def _open_fd(self, name: str) -> int:
        with self._fd_lock:
            fd = self._fds.get(name)
            if fd is not None:
                self._fds.move_to_end(name)
                return fd
        check_name(name)
        fd, _st = self._open_object(name)
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
            return self._get_whole(name, offset)
        fd = self._open_fd(name)
        try:
            data = os.pread(fd, length, offset)
        except OSError as exc:
            self._forget_fd(name)
            raise self._error(exc, f"reading {name}", name) from None
        if len(data) != length:
            raise StorageError(
                f"{name} is truncated: wanted {length} bytes at offset {offset}, got {len(data)}"
            )
        return data

    def _get_whole(self, name: str, offset: int) -> bytes:
        rule = check_name(name)
        fd, st = self._open_object(name)
        try:
            check_size(name, st.st_size, rule)  # before a byte is read: no 4 GiB allocation
            chunks, pos = [], offset
            while pos < st.st_size:  # never more than fstat said, even if it grows meanwhile
                piece = os.pread(fd, min(st.st_size - pos, 16 << 20), pos)
                if not piece:
                    break
                chunks.append(piece)
                pos += len(piece)
            return b"".join(chunks)
        except OSError as exc:
            raise self._error(exc, f"reading {name}", name) from None
        finally:
            os.close(fd)

    def open_file(self, name: str) -> BinaryIO:
        """The object as an unbuffered file (``LocalFiles``): the caller closes it."""
        check_name(name)
        fd, _st = self._open_object(name)
        return open(fd, "rb", buffering=0)  # noqa: SIM115 - the caller closes it

    def stat(self, name: str) -> int:
        check_name(name)
        return self._regular(name).st_size

    def exists(self, name: str) -> bool:
        """Whether anything (even an odd entry) stands under this well-formed name."""
        check_name(name)
        try:
            self._lstat(name)
        except NotFound:
            return False
        return True

    def modified(self, name: str) -> float:
        """When an object (or a temp file) was last written, in seconds since the epoch.

        Prune leaves recent unindexed packs and temp files alone: they may belong to a
        backup that is still writing.
        """
        if not is_temp_name(name):
            check_name(name)
        return self._regular(name).st_mtime

    # ------------------------------------------------------------------ deletes
    def delete(self, name: str) -> None:
        """Unlink a regular file under a well-formed name, in a folder reached without
        following symlinks: a planted link is never followed, its target never touched."""
        check_name(name)
        self._unlink(name)

    def _unlink(self, name: str) -> None:
        self._forget_fd(name)
        folders, leaf = _split(name)
        try:
            dfd = self._open_dir(folders)
        except FileNotFoundError:
            raise NotFound(f"{name} is missing from the repository") from None
        except OSError as exc:
            raise self._error(exc, f"deleting {name}", name) from None
        try:
            st = os.stat(leaf, dir_fd=dfd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise ObjectRefused(f"{name} is damaged: not a regular file; not deleted")
            os.unlink(leaf, dir_fd=dfd)
        except FileNotFoundError:
            raise NotFound(f"{name} is missing from the repository") from None
        except OSError as exc:
            raise self._error(exc, f"deleting {name}", name) from None
        finally:
            os.close(dfd)

    def remove_temp(self, name: str) -> None:
        """Delete a temp file ``list_temp_files`` named (raises NotFound when it is gone)."""
        if not is_temp_name(name):
            raise StorageError(f"invalid temp file name {name!r}")
        self._unlink(name)

    # ------------------------------------------------------------------ listing
    def _scan(self, prefix: str) -> Iterator[tuple[str, str, int | str]]:
        """Every entry under the folder ``prefix`` names: ("object", name, size),
        ("temp", name, 0) or ("odd", name, why). Goes only into folders of the layout,
        by handle, never through a symlink; at most two levels deep."""
        base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        if base and not is_folder(base):
            return
        try:
            top = self._open_dir(base.split("/") if base else [])
        except FileNotFoundError:
            return
        except OSError as exc:
            if base and exc.errno in (errno.ELOOP, errno.ENOTDIR):
                yield "odd", base, "is a symlink or a file, not a folder"
                return
            # A folder we may not open (EACCES) or cannot read is no proof of an empty one:
            # listing 'snapshots' as empty would say "0 snapshots", exit 0.
            raise self._error(exc, f"listing {base or self.location}", base) from None
        yield from self._scan_dir(base, top, prefix)

    def _scan_dir(self, rel: str, fd: int, prefix: str) -> Iterator[tuple[str, str, int | str]]:
        """Entries of one open folder (closed here, also when the caller stops early)."""
        try:
            try:
                with os.scandir(fd) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                raise self._error(exc, f"listing {rel or self.location}", rel) from None
            for entry in entries:
                name = f"{rel}/{entry.name}" if rel else entry.name
                if not (name.startswith(prefix) or prefix.startswith(name + "/")):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # deleted while we listed
                except OSError as exc:
                    yield "odd", name, f"cannot be examined ({exc.strerror})"
                    continue
                if stat.S_ISDIR(st.st_mode) and is_folder(name):
                    # The layout is two folders deep at most (is_folder), so is this recursion.
                    try:
                        child = os.open(entry.name, _DIR_FLAGS, dir_fd=fd)
                    except OSError as exc:
                        yield "odd", name, f"cannot be opened ({exc.strerror})"
                        continue
                    yield from self._scan_dir(name, child, prefix)
                else:
                    yield _classify(name, st)
        finally:
            os.close(fd)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        for what, name, detail in self._scan(prefix):
            if what == "object" and name.startswith(prefix):
                assert isinstance(detail, int)
                yield name, detail
            elif what == "odd":
                self.skipped.add(name, str(detail))

    def odd_entries(self, prefix: str = "") -> Iterator[tuple[str, str]]:
        """(name, why) of every entry under ``prefix`` that ``list`` skips as not an object
        (symlinks, FIFOs, unknown names or folders); temp files are not odd."""
        for what, name, detail in self._scan(prefix):
            if what == "odd":
                yield name, str(detail)

    def list_temp_files(self) -> Iterator[str]:
        for what, name, _detail in self._scan(""):
            if what == "temp":
                yield name

    def close(self) -> None:
        with self._fd_lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            if self._root_fd is not None:
                os.close(self._root_fd)
                self._root_fd = None


class LocalUpload:
    """A file written in pieces under a temp name, then fsynced and renamed: ``put``'s
    guarantees without holding the whole object in memory."""

    def __init__(self, backend: LocalBackend, directory: str) -> None:
        if directory not in TOP_FOLDERS:
            raise StorageError(f"invalid upload folder {directory!r}")
        self._backend = backend
        self._directory = directory
        self._tmp = f"upload{TMP_MARK}{os.urandom(6).hex()}"
        self._fd: int | None = None
        self._dir_fd: int | None = None
        try:
            self._dir_fd = backend._open_dir([directory], create=True)
            self._fd = os.open(self._tmp, _CREATE_FLAGS, FILE_MODE, dir_fd=self._dir_fd)
            backend._given(self._fd)
        except OSError as exc:
            self.abort()
            raise backend._error(exc, f"writing to {directory}", directory) from None

    def _close_dir(self) -> None:
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def write(self, data: bytes | memoryview) -> None:
        assert self._fd is not None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self.abort()
            raise self._backend._error(exc, "writing a pack", self._directory) from None

    def commit(self, name: str) -> None:
        backend = self._backend
        check_name(name)
        folders, leaf = _split(name)
        if not folders or folders[0] != self._directory:
            raise StorageError(f"{name} is not in the upload's folder {self._directory}")
        assert self._fd is not None and self._dir_fd is not None
        target: int | None = None
        try:
            if backend._durable:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            target = backend._open_dir(folders, create=True)
            os.replace(self._tmp, leaf, src_dir_fd=self._dir_fd, dst_dir_fd=target)
            if backend._durable:
                os.fsync(target)
        except OSError as exc:
            self.abort()
            raise backend._error(exc, f"writing {name}", name) from None
        finally:
            if target is not None:
                os.close(target)
        self._close_dir()
        backend._forget_fd(name)

    def abort(self) -> None:
        """Drop the temp file (a crash instead leaves it for ``prune`` to remove)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._dir_fd is not None:
            try:
                os.unlink(self._tmp, dir_fd=self._dir_fd)
            except OSError:
                pass
            self._close_dir()


def open_local(location: str, settings: dict[str, str] | None = None) -> LocalBackend:
    """The ``local`` backend plugin (plugins.py): a folder; ``settings`` are not used."""
    return LocalBackend(location)
