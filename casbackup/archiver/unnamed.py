"""Restored files created without a name and named once verified (O_TMPFILE, linkat).

Used by writers.write_file for every file it does not have to put over an existing one
(--overwrite keeps a temporary name and a rename, which replaces an entry in one step).
"""

from __future__ import annotations

import ctypes
import os

from casbackup.repo.tree import valid_name

_LIBC = ctypes.CDLL(None, use_errno=True)

# O_TMPFILE (Linux 3.11+; ext4, xfs, btrfs, tmpfs and others): a file in a folder's file
# system with no name in it, which linkat gives its real name once written, verified and
# given its metadata, never replacing an entry (EEXIST). Against a temporary name and a
# rename, it saves putting a name into the folder and taking it out again, most of a
# small file's kernel time on a journaled ext4 (bench/RESULTS.md, "Issue 17: unnamed
# files"), and a crash or a kill leaves nothing behind at all, not even a temporary file.
_TMPFILE = getattr(os, "O_TMPFILE", 0)
_UNNAMED = _TMPFILE | os.O_WRONLY | os.O_CLOEXEC
_LINKAT = getattr(_LIBC, "linkat", None)
_AT_EMPTY_PATH = 0x1000  # link the fd itself: needs CAP_DAC_READ_SEARCH (root)
_AT_SYMLINK_FOLLOW = 0x400  # through /proc/self/fd/N: open(2)'s way for everyone else
# How this process links an unnamed file: None until first asked (``unnamed_files``),
# then _AT_EMPTY_PATH, _AT_SYMLINK_FOLLOW, or 0 for "cannot" (temporary names, as before).
_link_flag: int | None = None


def unnamed_files(dir_fd: int, probe_name: bytes) -> bool:
    """Whether files are created unnamed (``create_unnamed``, ``link_unnamed``).

    Decided once per process, on the first file, by making one unnamed file in ``dir_fd``
    and linking it to ``probe_name`` (a temporary name of this restore), which is then
    removed: each way of linking is tried in turn, and with none (no O_TMPFILE in the
    kernel or the file system, no CAP_DAC_READ_SEARCH and no /proc) the restore uses
    temporary names and renames. Never raises.
    """
    global _link_flag
    if _link_flag is None:
        _link_flag = _probe(dir_fd, probe_name)
    return _link_flag != 0


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
    file. OSError as open's."""
    return os.open(".", _UNNAMED, mode & 0o777, dir_fd=dir_fd)


def link_unnamed(fd: int, dir_fd: int, name: bytes) -> bool:
    """Give the unnamed file ``fd`` its ``name`` in ``dir_fd``; False when the name is
    taken (nothing is replaced, and a link at ``name`` is not followed: linkat makes a
    new entry or fails). Other failures raise OSError."""
    flag = _link_flag or _AT_EMPTY_PATH
    try:
        _linkat(fd, dir_fd, name, flag)
    except FileExistsError:
        return False
    return True


def _linkat(fd: int, dir_fd: int, name: bytes, flag: int) -> None:
    if flag == _AT_EMPTY_PATH:
        done = _LINKAT(fd, b"", dir_fd, name, _AT_EMPTY_PATH)
    else:
        done = _LINKAT(-100, b"/proc/self/fd/%d" % fd, dir_fd, name, _AT_SYMLINK_FOLLOW)  # AT_FDCWD
    if done != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
