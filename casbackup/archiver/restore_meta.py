"""Metadata of restored entries: owner, mode (setuid/setgid only with their owner),
POSIX ACLs, extended attributes and times, each applied on its own so that one refusal
loses none of the others (used by the writer processes for files and by the restore's
walk for folders, symlinks and special files)."""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

_SUID_SGID = 0o6000


def apply_metadata(
    fd: int,
    uid: int,
    gid: int,
    mode: int,
    mtime_ns: int,
    *,
    owners: bool,
    xattrs: Sequence[tuple[bytes, bytes]] = (),
    exact_acls: bool = False,
    have: os.stat_result | None = None,
) -> list[str]:
    """Owner (when asked), mode, extended attributes and times of an open file or folder;
    with ``exact_acls``, ACLs it has but ``xattrs`` lacks are removed first
    (``drop_inherited_acls``).

    Each is applied on its own, so a refused ``chown`` (not root, or an owner not mapped
    in a user namespace) loses neither mode nor times. Returns one message per thing
    not applied; never raises for them. Order matters: ``chown`` first because it clears
    setuid/setgid and ``security.capability``; a setuid/setgid bit whose owner the file
    does not get (the chown refused, or not asked for as an ordinary user) is left out of
    the mode and said (``keep_set_id_bits``);
    the extended attributes after the mode, so that an ACL keeps its mask; times last.

    ``have``: the entry's status when it is a file this restore has just created (no
    setuid/setgid bit, no extended attribute of its own yet): its owner is not set again
    when it is the one wanted, nor its mode (for a root restore of root's files, or a
    file created with its own mode, two system calls and two inode updates a file).
    Skipping them changes nothing: a chown to the same owner would only clear bits and a
    capability the new file does not have, and a chmod to the same mode (ACL mask
    included: it is the group bits) nothing at all.
    """
    problems: list[str] = []
    owned = owners and have is not None and (have.st_uid, have.st_gid) == (uid, gid)
    if owners and not owned:
        try:
            os.fchown(fd, uid, gid)
            owned = True
        except OSError as exc:
            problems.append(f"owner {uid}:{gid} not restored: {exc.strerror}")
    if mode & _SUID_SGID and not owned:
        mode, problem = keep_set_id_bits(fd, uid, gid, mode, have)
        if problem:
            problems.append(problem)
    if exact_acls:
        problems += drop_inherited_acls(fd, xattrs)  # leaves the mode bits as they are
    if have is None or stat.S_IMODE(have.st_mode) != mode & 0o7777:
        try:
            os.fchmod(fd, mode)
        except OSError as exc:
            problems.append(f"mode {mode:o} not restored: {exc.strerror}")
    for key, value in xattrs:
        try:
            os.setxattr(fd, key, value)
        except (OSError, ValueError) as exc:  # ValueError: a NUL in a (hostile) key
            problems.append(xattr_problem(key, exc))
    try:
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    except (OSError, OverflowError) as exc:  # OverflowError: beyond what time_t holds
        problems.append(f"times not restored: {getattr(exc, 'strerror', None) or exc}")
    return problems


def keep_set_id_bits(
    fd: int, uid: int, gid: int, mode: int, have: os.stat_result | None
) -> tuple[int, str]:
    """``mode`` without the setuid (setgid) bit when the file ``fd`` is not owned by the
    user ``uid`` (group ``gid``) that the snapshot gave it, and what was left out.

    A restore that cannot give files their owners (not root, or a refused chown) would
    otherwise make a setuid program of root's a setuid program of the restoring user's:
    anyone who can reach it could run it as that user. GNU tar and libarchive leave
    the bits out in that case too. A folder keeps them: there they grant nothing (a
    setgid folder only passes its group on to new entries). ``have``: the file's status,
    when the caller has it."""
    st = have if have is not None else os.fstat(fd)
    if stat.S_ISDIR(st.st_mode):
        return mode, ""
    dropped = []
    if mode & stat.S_ISUID and st.st_uid != uid:
        dropped.append("setuid")
    if mode & stat.S_ISGID and st.st_gid != gid:
        dropped.append("setgid")
    if not dropped:
        return mode, ""
    mode &= ~(
        (stat.S_ISUID if "setuid" in dropped else 0) | (stat.S_ISGID if "setgid" in dropped else 0)
    )
    bits = " and ".join(dropped) + (" bits" if len(dropped) > 1 else " bit")
    return mode, (
        f"{bits} not restored: owner {uid}:{gid} in the snapshot, {st.st_uid}:{st.st_gid}"
        " here (a restore as root keeps them)"
    )


ACL_XATTRS = (b"system.posix_acl_access", b"system.posix_acl_default")


def drop_inherited_acls(target: int | bytes, recorded: Sequence[tuple[bytes, bytes]]) -> list[str]:
    """Remove the POSIX ACLs that ``target`` (an fd, or a path whose last name is not
    followed) has and ``recorded`` lacks. A new entry inherits its folder's default ACL:
    restored into a folder that has one (the snapshot's own, on a second restore with
    --overwrite, or the target's), a file that had no ACL would come back with one. Used
    only when the snapshot recorded the entry's attributes, so that none means none."""
    keep = {name for name, _ in recorded}
    follow = isinstance(target, int)  # an fd is the entry itself: no name to follow
    try:
        names = os.listxattr(target, follow_symlinks=follow)
    except OSError:
        return []  # no attributes here at all: nothing was inherited either
    problems = []
    for name in ACL_XATTRS:
        if name in keep or os.fsdecode(name) not in names:
            continue
        try:
            os.removexattr(target, name, follow_symlinks=follow)
        except OSError as exc:
            problems.append(f"inherited ACL {os.fsdecode(name)} not removed: {exc.strerror}")
    return problems


def xattr_problem(key: bytes, exc: OSError | ValueError) -> str:
    """The warning for an extended attribute the target refused (EPERM, ENOTSUP, ...)."""
    reason = (exc.strerror if isinstance(exc, OSError) else None) or "invalid name"
    # One line whatever the key holds: control characters shown escaped.
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in os.fsdecode(key))
    return f"extended attribute {shown} not restored: {reason}"


# --------------------------------------------------------------------- processes
