"""Restored files created without a name and named once verified (O_TMPFILE, linkat).

Used by writers.write_file for every file it does not have to put over an existing one
(--overwrite keeps a temporary name and a rename, which replaces an entry in one step).
"""

from __future__ import annotations

import ctypes
import errno
import os

from casbackup import libc
from casbackup.repo.tree import valid_name

# O_TMPFILE (Linux 3.11+; ext4, xfs, btrfs, tmpfs and others): a file in a folder's file
# system with no name in it, which linkat gives its real name once written, verified and
# given its metadata, never replacing an entry (EEXIST). Against a temporary name and a
# rename, it saves putting a name into the folder and taking it out again, most of a
# small file's kernel time on a journaled ext4 (bench/RESULTS.md, "Issue 17: unnamed
# files"), and a crash or a kill leaves nothing behind at all, not even a temporary file.
_TMPFILE = getattr(os, "O_TMPFILE", 0)
_UNNAMED = _TMPFILE | os.O_WRONLY | os.O_CLOEXEC
_LINKAT = libc.function("linkat")
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000  # link the fd itself: needs CAP_DAC_READ_SEARCH (root)
_AT_SYMLINK_FOLLOW = 0x400  # through /proc/self/fd/N: open(2)'s way for everyone else
# What O_TMPFILE answers on a file system that does not have it (vfat, NFS before 4.2,
# many FUSE file systems): open(2) says EOPNOTSUPP, or EISDIR on kernels without it.
_NOT_HERE = frozenset((errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL))
# How this process links an unnamed file, per file system (st_dev): _AT_EMPTY_PATH,
# _AT_SYMLINK_FOLLOW, or 0 for "cannot" (temporary names, as before). A restore target
# may hold mount points of other file systems (a disaster recovery onto /, with /boot on
# vfat), so one answer for the whole process would not do.
_link_flags: dict[int, int] = {}


def link_flag(dir_fd: int, probe_name: bytes) -> int:
    """How files in ``dir_fd``'s file system are linked once written unnamed
    (``create_unnamed``, ``link_unnamed``): a linkat flag, or 0 when they cannot be and
    the restore uses temporary names and renames there.

    Decided once per file system and process, on its first file, by making one unnamed
    file in ``dir_fd`` and linking it to ``probe_name`` (a temporary name of this
    restore), which is then removed: each way of linking is tried in turn (no O_TMPFILE
    in the kernel or the file system, no CAP_DAC_READ_SEARCH and no /proc: 0).
    Never raises.
    """
    try:
        device = os.fstat(dir_fd).st_dev
    except OSError:
        return 0
    flag = _link_flags.get(device)
    if flag is None:
        flag = _link_flags[device] = _probe(dir_fd, probe_name)
    return flag


def not_supported_here(exc: OSError) -> bool:
    """Whether ``create_unnamed`` failed because the folder's file system has no unnamed
    files (the caller then uses a temporary name), not for a reason a name would share."""
    return exc.errno in _NOT_HERE


def _probe(dir_fd: int, name: bytes) -> int:
    if not _TMPFILE or _LINKAT is None or not valid_name(name):
        return 0
    try:
        fd = create_unnamed(dir_fd)
    except OSError:
        return 0
    try:
        for flag in (_AT_EMPTY_PATH, _AT_SYMLINK_FOLLOW):
            try:
                _linkat(fd, dir_fd, name, flag)
            except OSError:
                continue
            try:
                os.unlink(name, dir_fd=dir_fd)
            except OSError:
                pass
            return flag
        return 0
    finally:
        os.close(fd)


def create_unnamed(dir_fd: int, mode: int = 0o600) -> int:
    """A new, empty file with no name, in ``dir_fd``'s file system (O_TMPFILE), open for
    writing, made with ``mode``'s permission bits (no setuid, setgid or sticky bit): no
    one else can open it before it has a name, so unlike a temporary name's 0600 its
    mode can be the file's own from the start, which usually spares apply_metadata a
    chmod. The umask or a default ACL and a setgid folder's group apply as to any new
    file. OSError as open's (``not_supported_here`` tells a file system without it)."""
    return os.open(".", _UNNAMED, mode & 0o777, dir_fd=dir_fd)


def link_unnamed(fd: int, dir_fd: int, name: bytes, flag: int) -> bool:
    """Give the unnamed file ``fd`` its ``name`` in ``dir_fd`` the way ``flag``
    (``link_flag``) says; False when the name is taken (nothing is replaced, and a link at
    ``name`` is not followed: linkat makes a new entry or fails). Other failures raise
    OSError."""
    try:
        _linkat(fd, dir_fd, name, flag)
    except FileExistsError:
        return False
    return True


def _linkat(fd: int, dir_fd: int, name: bytes, flag: int) -> None:
    assert _LINKAT is not None  # link_flag is 0 without it
    if flag == _AT_EMPTY_PATH:
        done = _LINKAT(fd, b"", dir_fd, name, _AT_EMPTY_PATH)
    else:
        done = _LINKAT(_AT_FDCWD, b"/proc/self/fd/%d" % fd, dir_fd, name, _AT_SYMLINK_FOLLOW)
    if done != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
