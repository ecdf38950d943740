"""File metadata <-> tree nodes (what backup records and restore applies)."""

from __future__ import annotations

import errno
import grp
import os
import pwd
import stat

from casbackup.repo.ids import BlobId
from casbackup.repo.tree import Node, NodeKind, kind_of_mode, make_node

_FILE = NodeKind.FILE
_DEVICES = (NodeKind.CHARDEV, NodeKind.BLOCKDEV)
_S_IMODE = stat.S_IMODE


def _name(cache: dict[int, str], ident: int, lookup) -> str:  # type: ignore[no-untyped-def]
    name = cache.get(ident)
    if name is None:
        try:
            name = lookup(ident)
        except KeyError:
            name = ""
        cache[ident] = name
    return name


def user_name(users: dict[int, str], uid: int) -> str:
    name = users.get(uid)
    return name if name is not None else _name(users, uid, lambda i: pwd.getpwuid(i).pw_name)


def group_name(groups: dict[int, str], gid: int) -> str:
    name = groups.get(gid)
    return name if name is not None else _name(groups, gid, lambda i: grp.getgrgid(i).gr_name)


Xattrs = tuple[tuple[bytes, bytes], ...]
# The file system keeps no attributes at all (or not on this kind of entry): nothing to
# store, nothing to warn about.
_NO_XATTRS = {errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}
# XFS's own copies of an entry's POSIX ACLs, which it lists (to root) beside
# system.posix_acl_access/_default, in its on-disk layout. The ACL is recorded once, as
# the system.* attribute; stored too, the copy came back on other file systems as a
# meaningless trusted.* attribute on every file with an ACL (GlusterFS skips it as well).
FS_INTERNAL_XATTRS = frozenset({b"trusted.SGI_ACL_FILE", b"trusted.SGI_ACL_DEFAULT"})
_FS_INTERNAL = frozenset(os.fsdecode(name) for name in FS_INTERNAL_XATTRS)


def read_xattrs(path: bytes) -> tuple[Xattrs, list[str]]:
    """Every extended attribute of ``path`` (not following a symlink), sorted by name.

    That includes POSIX ACLs (``system.posix_acl_access``/``_default``) and file
    capabilities (``security.capability``): the kernel presents both as attributes, and
    setting the same bytes back restores them. A file system's internal copies of the
    ACLs (``FS_INTERNAL_XATTRS``) are left out. Returns ``(pairs, problems)``: each
    problem is one line naming an attribute that could not be read (or that the list
    could not be had), for the caller to report; never raises ``OSError``.
    """
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _NO_XATTRS or exc.errno == errno.ENOENT:
            return (), []  # a file that vanished is reported by whoever reads it
        return (), [f"extended attributes could not be listed: {exc.strerror or exc}"]
    if not names:
        return (), []
    pairs = []
    problems = []
    for name in sorted(names):
        if name in _FS_INTERNAL:
            continue
        try:
            value = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno == errno.ENODATA:
                continue  # removed since it was listed
            problems.append(f"extended attribute {name}: {exc.strerror or exc}")
            continue
        pairs.append((os.fsencode(name), value))
    pairs.sort()
    return tuple(pairs), problems


def node_from_stat(
    name: bytes,
    st: os.stat_result,
    users: dict[int, str],
    groups: dict[int, str],
    content: tuple[BlobId, ...] = (),
    content_hash: bytes = b"",
    subtree: BlobId | None = None,
    link_target: bytes = b"",
    xattrs: Xattrs = (),
) -> Node:
    kind = kind_of_mode(st.st_mode) or _FILE
    return make_node(
        name, kind, _S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns,
        st.st_size if kind is _FILE else 0, st.st_ino, st.st_dev, st.st_nlink,
        st.st_rdev if kind in _DEVICES else 0,
        user_name(users, st.st_uid), group_name(groups, st.st_gid),
        content, content_hash, subtree, link_target, xattrs,
    )  # fmt: skip


def stat_matches(
    node: Node, st: os.stat_result, users: dict[int, str], groups: dict[int, str]
) -> bool:
    """Whether ``node_from_stat`` would give ``node`` again (its content, subtree and link
    target aside): the backup then keeps the parent's node object itself, and a folder
    whose entries are all kept is the parent's tree, reused without encoding it again.

    Extended attributes are not read again: setting or removing one changes the ctime.
    The caller must not use this when the parent recorded attributes under another
    ``--no-xattrs`` setting than this backup's.
    """
    kind = kind_of_mode(st.st_mode) or _FILE
    return (
        node.mtime_ns == st.st_mtime_ns
        and node.ctime_ns == st.st_ctime_ns
        and node.inode == st.st_ino
        and node.kind is kind
        and node.mode == _S_IMODE(st.st_mode)
        and node.size == (st.st_size if kind is _FILE else 0)
        and node.uid == st.st_uid
        and node.gid == st.st_gid
        and node.device == st.st_dev
        and node.nlink == st.st_nlink
        and node.rdev == (st.st_rdev if kind in _DEVICES else 0)
        and node.user == user_name(users, st.st_uid)
        and node.group == group_name(groups, st.st_gid)
    )
