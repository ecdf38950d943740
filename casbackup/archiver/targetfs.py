"""File system operations on the restore target, all relative to an open folder fd.

Split from restore.py, which decides what to restore; this module knows how to touch
the target without ever following a link (``O_NOFOLLOW``, ``follow_symlinks=False``,
``dir_fd``) and how to get through folders that an earlier restore made read-only.
Failures come back as ``TargetError`` carrying a one-line reason; the caller names the
path and decides whether the restore goes on.
"""

from __future__ import annotations

import errno
import os
import re
import resource
import stat
from collections.abc import Sequence

from casbackup.archiver.restore_meta import drop_inherited_acls, xattr_problem
from casbackup.liveness import pid_exists
from casbackup.repo.tree import Node, NodeKind

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_SUID_SGID = 0o6000
_WRITABLE = stat.S_IWUSR | stat.S_IXUSR  # what creating and removing entries needs


class TargetError(Exception):
    """An entry of the target could not be made or replaced; ``str()`` is the reason,
    ``errno`` the OS's error number when the OS refused (None for a conflict)."""

    def __init__(self, reason: str, code: int | None = None) -> None:
        super().__init__(reason)
        self.errno = code


def open_dir(name: bytes, parent_fd: int, *, replace: bool = False) -> tuple[int, int | None, bool]:
    """Create (0700) or reuse the folder ``name`` in ``parent_fd``; return its fd, the old
    mode when an existing folder of ours had to be made writable for the restore, and
    whether this call made the folder (then nothing else of the target is in it, and it
    has a default ACL only if its parent has one); a folder of another owner found at the
    name after the mkdir does not count as made.

    A symlink or file where the folder goes is never followed: with ``replace``
    (--overwrite) it is removed (the entry itself) and the folder made; without, it is
    refused. Raises TargetError for that refusal, or when the OS refused (permissions,
    ENAMETOOLONG, too many open files).
    """
    created = True
    try:
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    except FileExistsError:
        created = False
    except OSError as exc:
        raise TargetError(f"cannot create folder: {exc.strerror}", exc.errno) from None
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError as exc:
        # A folder of ours we may not read (0000, 0311: as an earlier restore of such a
        # folder left it): a second restore into it said "cannot open folder".
        opened = _open_unreadable(name, parent_fd)
        if opened is None:
            raise TargetError(f"cannot open folder: {exc.strerror}", exc.errno) from None
        return opened[0], opened[1], False
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise TargetError(f"cannot open folder: {exc.strerror}", exc.errno) from None
        if not replace:
            raise TargetError(
                "refusing to restore into it: it exists in the target and is not a "
                "directory (a symlink is never followed; --overwrite replaces it)"
            ) from None
        remove_entry(name, parent_fd)
        return open_dir(name, parent_fd)  # once: what is there now is ours or a folder
    try:
        st = os.fstat(fd)
        # The mkdir and the open go by name: in a folder others can write to, what was
        # opened may be a folder put there between the two (with its own entries and a
        # default ACL). Nobody but root can make a folder owned by this user, so one of
        # someone else's is never taken for the one made here.
        created = created and st.st_uid == os.geteuid()
        return fd, make_writable(fd, st), created
    except OSError as exc:
        os.close(fd)
        raise TargetError(f"cannot make the folder writable: {exc.strerror}", exc.errno) from None


def _open_unreadable(name: bytes, parent_fd: int) -> tuple[int, int] | None:
    """Open the folder ``name`` that we own and may not read: give it the owner's bits
    (through an ``O_PATH`` handle, so the very folder, never a symlink put in its place)
    and open it. Returns its fd and the mode to put back; None when it is not a folder of
    ours (or cannot be reached), for the caller to report."""
    try:
        handle = os.open(name, _PATH_FLAGS, dir_fd=parent_fd)
    except OSError:
        return None
    try:
        st = os.fstat(handle)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            return None
        link = f"/proc/self/fd/{handle}"  # a magic link: the open folder itself
        os.chmod(link, stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
        try:
            return os.open(link, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC), stat.S_IMODE(
                st.st_mode
            )
        except OSError:
            _put_back_path(link, stat.S_IMODE(st.st_mode))
            return None
    except OSError:
        return None
    finally:
        os.close(handle)


def _put_back_path(path: str, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError:
        pass


# A restore's temporary names: ``.casbackup-restore-<pid>-<token>-<n>``, pid the restoring
# process's and token drawn once per process (``temp_prefix``; restore_files.py counts n),
# so that ``remove_stale_temps`` can tell a dead restore's leftovers from everything else,
# also when a new process has the dead one's pid (a container's or a rescue system's
# restore, run again after a power cut, often gets the same small pid). Versions before
# the token wrote ``.casbackup-restore-<pid>-<n>``; their leftovers are matched too.
_TEMP_NAME = re.compile(r"\.casbackup-restore-([0-9]{1,10})-(?:([0-9a-f]{8})-)?[0-9]+\Z")
_TOKEN: tuple[int, str] | None = None  # (pid, token) of this process


def _process_token() -> str:
    """This process's token (a forked child draws its own: its pid differs anyway)."""
    global _TOKEN
    pid = os.getpid()
    if _TOKEN is None or _TOKEN[0] != pid:
        _TOKEN = (pid, os.urandom(4).hex())
    return _TOKEN[1]


def temp_prefix() -> bytes:
    """The start of every temporary name of this process's restores."""
    return b".casbackup-restore-%d-%s-" % (os.getpid(), _process_token().encode())


def remove_stale_temps(dir_fd: int) -> int:
    """Remove the temporary files that restores killed outright (SIGKILL, a crash, a
    power cut) left in this folder: those whose restoring process no longer exists, and
    those of an earlier process that had this process's pid (another token, or a name
    without one). Returns how many were removed; never raises.

    A restore with --overwrite, or into a file system without unnamed files, writes each
    file under a temporary name first; killed outright, nobody is left to remove them, and
    a resume (a second restore) would otherwise leave them in the target for good. A
    temporary file of a restore that is still running (another live process, or this
    one) is left alone; one of a restore running in another PID namespace looks dead
    and is removed: that restore then reports the file as not restored, nothing more.
    """
    removed = 0
    me = os.getpid()
    try:
        names = os.listdir(dir_fd)
    except OSError:
        return 0
    for name in names:
        match = _TEMP_NAME.match(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid == me:
            if match.group(2) == _process_token():
                continue  # this process's own restore
        elif pid_exists(pid):
            continue
        try:
            if not stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                continue  # not something a restore makes under that name
            os.unlink(name, dir_fd=dir_fd)
        except OSError:
            continue
        removed += 1
    return removed


def make_writable(fd: int, st: os.stat_result) -> int | None:
    """Give a folder we own (an earlier restore may have left it 0500) the owner's write
    and search bits; return the mode to put back, or None when nothing was changed.
    ``st`` is the folder's ``fstat``. Folders of other users are left alone: their
    conflicts are reported by path."""
    if st.st_mode & _WRITABLE == _WRITABLE or st.st_uid != os.geteuid():
        return None
    os.fchmod(fd, stat.S_IMODE(st.st_mode) | _WRITABLE)
    return stat.S_IMODE(st.st_mode)


def put_back_mode(fd: int, mode: int | None) -> None:
    """Undo ``make_writable`` where the restore did not apply the node's own mode."""
    if mode is not None:
        try:
            os.fchmod(fd, mode)
        except OSError:
            pass  # the folder stays writable: a safe leftover, and the restore reports failure


def refuse_dir(name: bytes, dir_fd: int) -> bool:
    """Whether something is at ``name``; TargetError when it is a folder (--overwrite
    replaces files, links and special files, never a folder and what it holds)."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise TargetError(f"cannot replace it: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise TargetError("is a directory in the target; not replacing it")
    return True


def remove_entry(name: bytes, dir_fd: int) -> None:
    """Remove what is at ``name`` (for --overwrite), never a folder; raises TargetError."""
    if not refuse_dir(name, dir_fd):
        return
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise TargetError(f"cannot replace it: {exc.strerror}") from None


def apply_nofollow(
    node: Node,
    dir_fd: int,
    *,
    owners: bool,
    xattrs: Sequence[tuple[bytes, bytes]],
    exact_acls: bool = False,
) -> list[str]:
    """Owner, mode, extended attributes and times of a symlink, FIFO or device node, on
    the entry itself (never what a symlink points to), each on its own like
    ``restore_meta.apply_metadata``; returns one message per thing not applied."""
    problems: list[str] = []
    mode = node.mode
    if owners:
        try:
            os.chown(node.name, node.uid, node.gid, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            problems.append(f"owner {node.uid}:{node.gid} not restored: {exc.strerror}")
            mode &= ~_SUID_SGID
    # lsetxattr has no dir_fd form; the folder's /proc link reaches the same folder
    # (a magic link, resolved to the open fd), and only the last name is not followed.
    path = os.fsencode(f"/proc/self/fd/{dir_fd}/") + node.name
    if exact_acls and node.kind != NodeKind.SYMLINK:  # a FIFO or device node inherits too
        problems += drop_inherited_acls(path, xattrs)
    if node.kind != NodeKind.SYMLINK:  # a symlink's mode is not its own on Linux
        try:
            os.chmod(node.name, mode, dir_fd=dir_fd, follow_symlinks=False)
        except (OSError, NotImplementedError) as exc:
            problems.append(f"mode {mode:o} not restored: {_reason(exc)}")
    if xattrs:
        for key, value in xattrs:
            try:
                os.setxattr(path, key, value, follow_symlinks=False)
            except (OSError, ValueError) as exc:  # ValueError: a NUL in a (hostile) key
                problems.append(xattr_problem(key, exc))
    try:
        os.utime(node.name, ns=(node.mtime_ns, node.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
    except (OSError, NotImplementedError, OverflowError) as exc:
        problems.append(f"times not restored: {_reason(exc)}")
    return problems


def _reason(exc: Exception) -> str:
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)


_FD_LIMIT = 1 << 16  # the soft fd limit a restore asks for


def raise_fd_limit() -> None:
    """Each folder on the walk's path holds an fd until it is finished, so a deep tree needs
    about one per level: raise the soft limit (often 1,024) towards the hard one, as Go
    programs do at start. A level still refused (EMFILE) is reported by path."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _FD_LIMIT if hard == resource.RLIM_INFINITY else min(hard, _FD_LIMIT)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            pass
