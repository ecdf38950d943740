"""File metadata <-> tree nodes (what backup records and restore applies)."""

from __future__ import annotations

import grp
import os
import pwd
import stat

from casbackup.repo.ids import BlobId
from casbackup.repo.tree import Node, NodeKind, kind_of_mode


def _name(cache: dict[int, str], ident: int, lookup) -> str:  # type: ignore[no-untyped-def]
    name = cache.get(ident)
    if name is None:
        try:
            name = lookup(ident)
        except KeyError:
            name = ""
        cache[ident] = name
    return name


def node_from_stat(
    name: bytes,
    st: os.stat_result,
    users: dict[int, str],
    groups: dict[int, str],
    content: tuple[BlobId, ...] = (),
    content_hash: bytes = b"",
) -> Node:
    kind = kind_of_mode(st.st_mode) or NodeKind.FILE
    return Node(
        name=name,
        kind=kind,
        mode=stat.S_IMODE(st.st_mode),
        uid=st.st_uid,
        gid=st.st_gid,
        user=_name(users, st.st_uid, lambda i: pwd.getpwuid(i).pw_name),
        group=_name(groups, st.st_gid, lambda i: grp.getgrgid(i).gr_name),
        mtime_ns=st.st_mtime_ns,
        ctime_ns=st.st_ctime_ns,
        size=st.st_size if kind == NodeKind.FILE else 0,
        inode=st.st_ino,
        device=st.st_dev,
        nlink=st.st_nlink,
        rdev=st.st_rdev if kind in (NodeKind.CHARDEV, NodeKind.BLOCKDEV) else 0,
        content=content,
        content_hash=content_hash,
    )
