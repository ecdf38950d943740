"""File metadata <-> tree nodes (what backup records and restore applies)."""

from __future__ import annotations

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


# A tree stores times as signed 64-bit nanoseconds (repo/tree.py): 1677-09-21 to
# 2262-04-11. ext4 and XFS accept times to 2446 and later; any local user can date a
# file there (``touch -d 2300-01-01``), so such a time is clamped, never allowed to
# fail the backup.
TIME_MIN_NS = -(2**63)
TIME_MAX_NS = 2**63 - 1


def stored_ns(t: int) -> int:
    """``t`` (nanoseconds since the epoch) clamped to what a tree can store."""
    return TIME_MIN_NS if t < TIME_MIN_NS else TIME_MAX_NS if t > TIME_MAX_NS else t


def time_out_of_range(st: os.stat_result) -> bool:
    """Whether ``node_from_stat`` will clamp one of the entry's times."""
    return not (
        TIME_MIN_NS <= st.st_mtime_ns <= TIME_MAX_NS
        and TIME_MIN_NS <= st.st_ctime_ns <= TIME_MAX_NS
    )


def node_from_stat(
    name: bytes,
    st: os.stat_result,
    users: dict[int, str],
    groups: dict[int, str],
    content: tuple[BlobId, ...] = (),
    content_hash: bytes = b"",
    subtree: BlobId | None = None,
    link_target: bytes = b"",
) -> Node:
    kind = kind_of_mode(st.st_mode) or _FILE
    return make_node(
        name, kind, _S_IMODE(st.st_mode), st.st_uid, st.st_gid, stored_ns(st.st_mtime_ns),
        stored_ns(st.st_ctime_ns), st.st_size if kind is _FILE else 0, st.st_ino, st.st_dev, st.st_nlink,
        st.st_rdev if kind in _DEVICES else 0,
        user_name(users, st.st_uid), group_name(groups, st.st_gid),
        content, content_hash, subtree, link_target, (),
    )  # fmt: skip


def stat_matches(
    node: Node, st: os.stat_result, users: dict[int, str], groups: dict[int, str]
) -> bool:
    """Whether ``node_from_stat`` would give ``node`` again (its content, subtree and link
    target aside): the backup then keeps the parent's node object itself, and a folder
    whose entries are all kept is the parent's tree, reused without encoding it again."""
    kind = kind_of_mode(st.st_mode) or _FILE
    return (
        node.mtime_ns == stored_ns(st.st_mtime_ns)
        and node.ctime_ns == stored_ns(st.st_ctime_ns)
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
        and not node.xattrs
    )
