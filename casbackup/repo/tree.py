"""Trees: one directory's entries, stored as a TREE blob (deduplicated like chunks).

Plaintext layout (integers big-endian)::

    version[1]=1 | count[4] | count * node
    node := name_len[2] name | kind[1] | mode[4] | uid[4] | gid[4]
            | mtime_ns[8, signed] | ctime_ns[8, signed] | size[8] | inode[8] | device[8]
            | nlink[4] | rdev[8]
            | user_len[1] user | group_len[1] group
            | n_chunks[4] n_chunks * chunk_id[32]      (files)
            | hash_len[1] content_hash                   (files: 32-byte BLAKE3 of the content, else 0)
            | subtree_len[1] subtree_id                  (dirs: 32, else 0)
            | target_len[4] link_target                  (symlinks)
            | xattr_count[2] xattr_count * (key_len[2] key | value_len[4] value)

Names are raw bytes (non-UTF-8 names round-trip), strictly increasing, and never
empty, ``.``, ``..``, nor contain ``/`` or NUL: the decoder refuses anything else,
which is the first line of defence for restore (see archiver/restore.py).
"""

from __future__ import annotations

import stat
import struct
from dataclasses import dataclass, field
from enum import IntEnum

from casbackup.errors import FormatError
from casbackup.repo.ids import BlobId

TREE_VERSION = 1
_FIXED = struct.Struct(
    ">BIIIqqQQQIQ"
)  # kind mode uid gid mtime ctime size inode device nlink rdev = 65
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


class NodeKind(IntEnum):
    FILE = 1
    DIR = 2
    SYMLINK = 3
    FIFO = 4
    CHARDEV = 5
    BLOCKDEV = 6
    SOCKET = 7


_MODE_KIND = {
    stat.S_IFREG: NodeKind.FILE,
    stat.S_IFDIR: NodeKind.DIR,
    stat.S_IFLNK: NodeKind.SYMLINK,
    stat.S_IFIFO: NodeKind.FIFO,
    stat.S_IFCHR: NodeKind.CHARDEV,
    stat.S_IFBLK: NodeKind.BLOCKDEV,
    stat.S_IFSOCK: NodeKind.SOCKET,
}


def kind_of_mode(mode: int) -> NodeKind | None:
    return _MODE_KIND.get(stat.S_IFMT(mode))


@dataclass(frozen=True)
class Node:
    name: bytes
    kind: NodeKind
    mode: int = 0o644  # permission bits incl. setuid/setgid/sticky (st_mode & 0o7777)
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    size: int = 0
    inode: int = 0
    device: int = 0
    nlink: int = 1
    rdev: int = 0
    user: str = ""
    group: str = ""
    content: tuple[BlobId, ...] = ()
    content_hash: bytes = b""
    subtree: BlobId | None = None
    link_target: bytes = b""
    xattrs: tuple[tuple[bytes, bytes], ...] = field(default=())

    @property
    def hardlink_key(self) -> tuple[int, int] | None:
        """Identity shared by hard links to the same file within one snapshot."""
        if self.kind == NodeKind.FILE and self.nlink > 1:
            return (self.device, self.inode)
        return None


def valid_name(name: bytes) -> bool:
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name


def encode_tree(nodes: list[Node]) -> bytes:
    """Encode nodes, which must already be sorted by name."""
    out = bytearray((TREE_VERSION,))
    out += _U32.pack(len(nodes))
    for n in nodes:
        out += _U16.pack(len(n.name))
        out += n.name
        out += _FIXED.pack(
            n.kind,
            n.mode,
            n.uid,
            n.gid,
            n.mtime_ns,
            n.ctime_ns,
            n.size,
            n.inode,
            n.device,
            n.nlink,
            n.rdev,
        )
        user = n.user.encode("utf-8", "surrogateescape")[:255]
        group = n.group.encode("utf-8", "surrogateescape")[:255]
        out += bytes((len(user),)) + user + bytes((len(group),)) + group
        out += _U32.pack(len(n.content))
        for chunk_id in n.content:
            out += chunk_id
        out += bytes((len(n.content_hash),)) + n.content_hash
        subtree = n.subtree or b""
        out += bytes((len(subtree),)) + subtree
        out += _U32.pack(len(n.link_target)) + n.link_target
        out += _U16.pack(len(n.xattrs))
        for key, value in n.xattrs:
            out += _U16.pack(len(key)) + key + _U32.pack(len(value)) + value
    return bytes(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise FormatError("tree is truncated")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(_U16.unpack(self.take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack(self.take(4))[0])


def decode_tree(data: bytes) -> list[Node]:
    r = _Reader(data)
    version = r.u8()
    if version != TREE_VERSION:
        raise FormatError(f"unknown tree version {version}")
    count = r.u32()
    if count > len(data):  # each node takes far more than a byte
        raise FormatError("tree entry count is impossible")
    nodes: list[Node] = []
    previous = b""
    for _ in range(count):
        name = r.take(r.u16())
        if not valid_name(name):
            raise FormatError(f"tree holds an invalid name {name!r}")
        if nodes and name <= previous:
            raise FormatError("tree entries are not strictly sorted (duplicate or out of order)")
        previous = name
        kind, mode, uid, gid, mtime, ctime, size, inode, device, nlink, rdev = _FIXED.unpack(
            r.take(_FIXED.size)
        )
        try:
            kind = NodeKind(kind)
        except ValueError:
            raise FormatError(f"unknown node kind {kind}") from None
        user = r.take(r.u8()).decode("utf-8", "surrogateescape")
        group = r.take(r.u8()).decode("utf-8", "surrogateescape")
        n_chunks = r.u32()
        if n_chunks * 32 > len(data):
            raise FormatError("chunk count is impossible")
        content = tuple(BlobId(r.take(32)) for _ in range(n_chunks))
        content_hash = r.take(r.u8())
        subtree_raw = r.take(r.u8())
        target = r.take(r.u32())
        xattrs = []
        for _ in range(r.u16()):
            key = r.take(r.u16())
            xattrs.append((key, r.take(r.u32())))
        if kind == NodeKind.DIR and len(subtree_raw) != 32:
            raise FormatError(f"directory {name!r} has no subtree")
        if content_hash and len(content_hash) != 32:
            raise FormatError("content hash has the wrong size")
        if mode > 0o7777:
            raise FormatError("mode has bits outside the permission bits")
        nodes.append(
            Node(
                name=name, kind=kind, mode=mode, uid=uid, gid=gid, mtime_ns=mtime, ctime_ns=ctime,
                size=size, inode=inode, device=device, nlink=nlink, rdev=rdev, user=user, group=group,
                content=content, content_hash=content_hash,
                subtree=BlobId(subtree_raw) if subtree_raw else None,
                link_target=target, xattrs=tuple(xattrs),
            )
        )  # fmt: skip
    if r.pos != len(data):
        raise FormatError("tree has trailing bytes")
    return nodes
