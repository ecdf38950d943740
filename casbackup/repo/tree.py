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


_KINDS = {int(k): k for k in NodeKind}


def _truncated() -> FormatError:
    return FormatError("tree is truncated")


def decode_tree(data: bytes) -> list[Node]:
    # Offsets and unpack_from inline rather than a reader object: restore decodes every
    # tree of a snapshot on its one walking thread, and a method call per field made
    # decoding its largest cost. Every read is bounds-checked first, so malformed input
    # raises FormatError and nothing else.
    n = len(data)
    if n < 1:
        raise _truncated()
    version = data[0]
    if version != TREE_VERSION:
        raise FormatError(f"unknown tree version {version}")
    if n < 5:
        raise _truncated()
    count = _U32.unpack_from(data, 1)[0]
    if count > n:  # each node takes far more than a byte
        raise FormatError("tree entry count is impossible")
    pos = 5
    nodes: list[Node] = []
    previous = b""
    for _ in range(count):
        if pos + 2 > n:
            raise _truncated()
        end = pos + 2 + _U16.unpack_from(data, pos)[0]
        if end > n:
            raise _truncated()
        name = data[pos + 2 : end]
        if not valid_name(name):
            raise FormatError(f"tree holds an invalid name {name!r}")
        if nodes and name <= previous:
            raise FormatError("tree entries are not strictly sorted (duplicate or out of order)")
        previous = name
        pos = end + _FIXED.size
        if pos + 1 > n:
            raise _truncated()
        kind_raw, mode, uid, gid, mtime, ctime, size, inode, device, nlink, rdev = (
            _FIXED.unpack_from(data, end)
        )
        kind = _KINDS.get(kind_raw)
        if kind is None:
            raise FormatError(f"unknown node kind {kind_raw}")
        user, pos = _short(data, pos, n, 1)
        group, pos = _short(data, pos, n, 4)
        n_chunks = _U32.unpack_from(data, pos)[0]
        pos += 4
        if n_chunks * 32 > n:
            raise FormatError("chunk count is impossible")
        end = pos + 32 * n_chunks
        if end + 1 > n:
            raise _truncated()
        content = tuple([BlobId(data[i : i + 32]) for i in range(pos, end, 32)])
        content_hash, pos = _short(data, end, n, 1)
        subtree_raw, pos = _short(data, pos, n, 4)
        end = pos + 4 + _U32.unpack_from(data, pos)[0]
        if end + 2 > n:
            raise _truncated()
        target = data[pos + 4 : end]
        pos = end + 2
        xattrs = []
        for _ in range(_U16.unpack_from(data, end)[0]):
            if pos + 2 > n:
                raise _truncated()
            end = pos + 2 + _U16.unpack_from(data, pos)[0]
            if end + 4 > n:
                raise _truncated()
            key = data[pos + 2 : end]
            pos = end + 4 + _U32.unpack_from(data, end)[0]
            if pos > n:
                raise _truncated()
            xattrs.append((key, data[end + 4 : pos]))
        if kind == NodeKind.DIR and len(subtree_raw) != 32:
            raise FormatError(f"directory {name!r} has no subtree")
        if content_hash and len(content_hash) != 32:
            raise FormatError("content hash has the wrong size")
        if mode > 0o7777:
            raise FormatError("mode has bits outside the permission bits")
        nodes.append(
            Node(
                name=name, kind=kind, mode=mode, uid=uid, gid=gid, mtime_ns=mtime, ctime_ns=ctime,
                size=size, inode=inode, device=device, nlink=nlink, rdev=rdev,
                user=user.decode("utf-8", "surrogateescape"),
                group=group.decode("utf-8", "surrogateescape"),
                content=content, content_hash=content_hash,
                subtree=BlobId(subtree_raw) if subtree_raw else None,
                link_target=target, xattrs=tuple(xattrs),
            )
        )  # fmt: skip
    if pos != n:
        raise FormatError("tree has trailing bytes")
    return nodes


def _short(data: bytes, pos: int, n: int, after: int) -> tuple[bytes, int]:
    """A field with a one-byte length at ``pos``; checks that ``after`` more bytes follow it."""
    end = pos + 1 + data[pos]
    if end + after > n:
        raise _truncated()
    return data[pos + 1 : end], end
