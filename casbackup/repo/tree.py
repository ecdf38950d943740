"""Trees: one directory's entries, stored as a TREE blob (deduplicated like chunks).

Plaintext layout (integers big-endian)::

    version[1]=2 | count[4] | count * node
    node := name_len[2] name | kind[1] | mode[4] | uid[4] | gid[4]
            | mtime_s[8, signed] mtime_nsec[4] | ctime_s[8, signed] ctime_nsec[4]
            | size[8] | inode[8] | device[8] | nlink[4] | rdev[8]
            | user_len[1] user | group_len[1] group
            | n_chunks[4] n_chunks * chunk_id[32]      (files)
            | hash_len[1] content_hash                   (files: 32-byte BLAKE3 of the content, else 0)
            | subtree_len[1] subtree_id                  (dirs: 32, else 0)
            | target_len[4] link_target                  (symlinks)
            | xattr_count[2] xattr_count * (key_len[2] key | value_len[4] value)

Names are raw bytes (non-UTF-8 names round-trip), strictly increasing, and never
empty, ``.``, ``..``, nor contain ``/`` or NUL: the decoder refuses anything else,
which is the first line of defence for restore (see archiver/restore.py).

Times are whole seconds (floor) plus nanoseconds in [0, 10**9): every time a file system
can hold (before 1970, after 2262) is stored exactly. Version 1 stored each time as one
signed 64-bit nanosecond count (about 1677..2262); it is still read, and its fixed part
is widened to the version 2 layout as it is read, so callers only ever see one layout.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum

from casbackup.errors import FormatError
from casbackup.repo.ids import BlobId

TREE_VERSION = 2
# kind mode uid gid mtime(s, ns) ctime(s, ns) size inode device nlink rdev = 73 bytes
_FIXED = struct.Struct(">BIIIqIqIQQQIQ")
_FIXED_V1 = struct.Struct(">BIIIqqQQQIQ")  # as above with times as i64 ns = 65 bytes
_NS = 1_000_000_000
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

    @property
    def link_group(self) -> tuple[int, int, bytes] | None:
        """Names of one snapshot that restore (and the FUSE view) give back as hard links
        of one another: one inode recorded with one content. Names of one inode can hold
        different contents: a file rewritten while the backup walked from one of its names
        to the next keeps the first from the parent and reads the second. Linked, a name
        came back with the other's content."""
        if self.kind == NodeKind.FILE and self.nlink > 1:
            return (self.device, self.inode, self.content_hash)
        return None


def valid_name(name: bytes) -> bool:
    return bool(name) and name not in (b".", b"..") and b"/" not in name and b"\0" not in name


def pack_fixed(
    kind: int, mode: int, uid: int, gid: int, mtime_ns: int, ctime_ns: int, size: int,
    inode: int, device: int, nlink: int, rdev: int,
) -> bytes:  # fmt: skip
    """A node's fixed part as version 2 stores it (73 bytes); times are integer ns.

    Raises ``struct.error`` for a value outside its field (a time beyond about
    +-292 billion years, a size over 2**64).
    """
    mtime_s, mtime_ns = divmod(mtime_ns, _NS)
    ctime_s, ctime_ns = divmod(ctime_ns, _NS)
    return _FIXED.pack(kind, mode, uid, gid, mtime_s, mtime_ns, ctime_s, ctime_ns, size, inode,
                       device, nlink, rdev)  # fmt: skip


def _widen_v1(fixed: bytes) -> bytes:
    """A version 1 fixed part (65 bytes) in the version 2 layout; short input is kept
    short so that the caller's length check reports the truncation."""
    if len(fixed) != _FIXED_V1.size:
        return fixed
    return pack_fixed(*_FIXED_V1.unpack(fixed))


def encode_tree(nodes: list[Node]) -> bytes:
    """Encode nodes, which must already be sorted by name, as a version 2 tree.

    Raises ``struct.error`` when a field is out of its range (see ``pack_fixed``).
    """
    out = bytearray((TREE_VERSION,))
    out += _U32.pack(len(nodes))
    for n in nodes:
        out += _U16.pack(len(n.name))
        out += n.name
        out += pack_fixed(n.kind, n.mode, n.uid, n.gid, n.mtime_ns, n.ctime_ns, n.size,
                          n.inode, n.device, n.nlink, n.rdev)  # fmt: skip
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


_NEW = object.__new__
_FIELDS = (
    "name", "kind", "mode", "uid", "gid", "mtime_ns", "ctime_ns", "size", "inode", "device",
    "nlink", "rdev", "user", "group", "content", "content_hash", "subtree", "link_target", "xattrs",
)  # fmt: skip


def make_node(*values: object) -> Node:
    """A Node from every field's value, in declaration order, without ``Node.__init__``.

    A frozen dataclass sets each of its 19 fields through ``object.__setattr__``
    (about 5.7 us a node); the backup walk and the tree decoder build one node per
    file, so this (about 0.5 us) is what an unchanged re-backup spends its time on.
    """
    node: Node = _NEW(Node)
    node.__dict__.update(zip(_FIELDS, values, strict=True))
    return node


_KINDS = {int(k): k for k in NodeKind}
_u16 = _U16.unpack_from
_u32 = _U32.unpack_from
_fixed = _FIXED.unpack
_FIXED_LEN = _FIXED.size
_FIXED_LEN_V1 = _FIXED_V1.size


def decode_tree(data: bytes) -> list[Node]:
    """Decode and validate a tree; anything malformed raises FormatError.

    Written with ``unpack_from`` on offsets and ``make_node``: the parent snapshot's
    trees are decoded for every folder of every incremental backup, and a restore's
    walk decodes every tree it restores. A version 2 tree (every tree written now) takes
    ``_decode_v2``; a version 1 tree the general path, which widens its times.
    """
    try:
        if data[:1] == _V2:
            return _decode_v2(data)
        return _decode(data)
    except (struct.error, IndexError):
        raise FormatError("tree is truncated") from None


_V2 = bytes((TREE_VERSION,))
_fixed_from = _FIXED.unpack_from
_DIR = NodeKind.DIR


def _decode_v2(data: bytes) -> list[Node]:
    """``_decode`` for a version 2 tree, with the same checks in the same order and the
    same messages (tests/repo/test_tree_decode.py compares the two), in one loop: no
    generator, no copy of the fixed part, a file's single chunk without a loop, owner
    names decoded once per tree. About 6 us a node where ``_decode`` takes 9-10 (a
    restore's walk decodes every node it restores; bench/RESULTS.md, "Issue 17: restore's
    main thread"). Raises FormatError, struct.error or IndexError (``decode_tree``)."""
    end = len(data)
    (count,) = _u32(data, 1)
    if count > end:  # each node takes far more than a byte
        raise FormatError("tree entry count is impossible")
    nodes: list[Node] = []
    append = nodes.append
    previous = b""
    owners: dict[bytes, str] = {}  # a tree's entries mostly share one or two owners
    new = _NEW
    kinds = _KINDS
    pos = 5
    for _ in range(count):
        n = data[pos] << 8 | data[pos + 1]
        pos += 2
        name = data[pos : pos + n]
        pos += n
        (kind, mode, uid, gid, mtime_s, mtime_ns, ctime_s, ctime_ns, size, inode, device, nlink,
         rdev) = _fixed_from(data, pos)  # fmt: skip
        pos += _FIXED_LEN
        n = data[pos]
        user = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
        n = data[pos]
        group = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
        (n,) = _u32(data, pos)
        pos += 4
        if n * 32 > end - pos:
            raise FormatError("chunk count is impossible")
        if n == 1:
            content: tuple[BlobId, ...] = (data[pos : pos + 32],)  # type: ignore[assignment]
        elif n:
            content = tuple([data[p : p + 32] for p in range(pos, pos + 32 * n, 32)])  # type: ignore[misc]
        else:
            content = ()
        pos += 32 * n
        n = data[pos]
        content_hash = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
        n = data[pos]
        subtree = data[pos + 1 : pos + 1 + n] if n else None
        pos += 1 + n
        (n,) = _u32(data, pos)
        target = data[pos + 4 : pos + 4 + n]
        pos += 4 + n
        n_xattrs = data[pos] << 8 | data[pos + 1]
        pos += 2
        xattrs: tuple[tuple[bytes, bytes], ...] = ()
        if n_xattrs:
            pairs = []
            for _ in range(n_xattrs):
                (n,) = _u16(data, pos)
                key = data[pos + 2 : pos + 2 + n]
                pos += 2 + n
                (n,) = _u32(data, pos)
                pairs.append((key, data[pos + 4 : pos + 4 + n]))
                pos += 4 + n
            xattrs = tuple(pairs)
        if pos > end:  # a slice ran past the end: came back short
            raise FormatError("tree is truncated")
        if not name or name == b"." or name == b".." or b"/" in name or b"\0" in name:
            raise FormatError(f"tree holds an invalid name {name!r}")
        if name <= previous:
            raise FormatError("tree entries are not strictly sorted (duplicate or out of order)")
        previous = name
        if mtime_ns >= _NS or ctime_ns >= _NS:
            raise FormatError(f"{name!r} has a time with 10**9 nanoseconds or more")
        node_kind = kinds.get(kind)
        if node_kind is None:
            raise FormatError(f"unknown node kind {kind}")
        if node_kind is _DIR and (subtree is None or len(subtree) != 32):
            raise FormatError(f"directory {name!r} has no subtree")
        if content_hash and len(content_hash) != 32:
            raise FormatError("content hash has the wrong size")
        if mode > 0o7777:
            raise FormatError("mode has bits outside the permission bits")
        owner = owners.get(user)
        if owner is None:
            owner = owners[user] = user.decode("utf-8", "surrogateescape")
        owner_group = owners.get(group)
        if owner_group is None:
            owner_group = owners[group] = group.decode("utf-8", "surrogateescape")
        node = new(Node)
        node.__dict__.update(
            name=name, kind=node_kind, mode=mode, uid=uid, gid=gid,
            mtime_ns=mtime_s * _NS + mtime_ns, ctime_ns=ctime_s * _NS + ctime_ns, size=size,
            inode=inode, device=device, nlink=nlink, rdev=rdev, user=owner, group=owner_group,
            content=content, content_hash=content_hash, subtree=subtree, link_target=target,
            xattrs=xattrs,
        )  # fmt: skip
        append(node)
    if pos != end:
        raise FormatError("tree has trailing bytes")
    return nodes


_Stored = tuple[
    bytes, bytes, bytes, bytes, bytes, bytes, bytes, bytes, tuple[tuple[bytes, bytes], ...]
]


def _stored_nodes(data: bytes) -> Iterator[_Stored]:
    """Each node's fields as stored: name, the 73 fixed bytes (a version 1 tree's are
    widened to that layout), user, group, chunk ids (joined), content hash, subtree id,
    link target, xattrs. Checks only the framing."""
    end = len(data)
    version = data[0]
    if version == TREE_VERSION:
        fixed_len = _FIXED_LEN
    elif version == 1:
        fixed_len = _FIXED_LEN_V1
    else:
        raise FormatError(f"unknown tree version {version}")
    (count,) = _u32(data, 1)
    if count > end:  # each node takes far more than a byte
        raise FormatError("tree entry count is impossible")
    pos = 5
    for _ in range(count):
        (n,) = _u16(data, pos)
        name = data[pos + 2 : pos + 2 + n]
        pos += 2 + n
        fixed = data[pos : pos + fixed_len]
        pos += fixed_len
        if fixed_len != _FIXED_LEN:
            fixed = _widen_v1(fixed)
        n = data[pos]
        user = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
        n = data[pos]
        group = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
        (n,) = _u32(data, pos)
        pos += 4
        if n * 32 > end - pos:
            raise FormatError("chunk count is impossible")
        chunks = data[pos : pos + 32 * n]
        pos += 32 * n
        n = data[pos]
        content_hash = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
        n = data[pos]
        subtree = data[pos + 1 : pos + 1 + n]
        pos += 1 + n
        (n,) = _u32(data, pos)
        target = data[pos + 4 : pos + 4 + n]
        pos += 4 + n
        (n_xattrs,) = _u16(data, pos)
        pos += 2
        xattrs: tuple[tuple[bytes, bytes], ...] = ()
        if n_xattrs:
            pairs = []
            for _ in range(n_xattrs):
                (n,) = _u16(data, pos)
                key = data[pos + 2 : pos + 2 + n]
                pos += 2 + n
                (n,) = _u32(data, pos)
                pairs.append((key, data[pos + 4 : pos + 4 + n]))
                pos += 4 + n
            xattrs = tuple(pairs)
        if pos > end or len(fixed) != _FIXED_LEN:  # a slice ran past the end: came back short
            raise FormatError("tree is truncated")
        yield name, fixed, user, group, chunks, content_hash, subtree, target, xattrs
    if pos != end:
        raise FormatError("tree has trailing bytes")


def _decode(data: bytes) -> list[Node]:
    """Any version's tree through ``_stored_nodes`` (version 1's times widened)."""
    nodes: list[Node] = []
    previous = b""
    new = _NEW
    for name, fixed, user, group, chunks, content_hash, subtree, target, xattrs in _stored_nodes(
        data
    ):
        if not valid_name(name):
            raise FormatError(f"tree holds an invalid name {name!r}")
        if nodes and name <= previous:
            raise FormatError("tree entries are not strictly sorted (duplicate or out of order)")
        previous = name
        (kind, mode, uid, gid, mtime_s, mtime_ns, ctime_s, ctime_ns, size, inode, device, nlink,
         rdev) = _fixed(fixed)  # fmt: skip
        if mtime_ns >= _NS or ctime_ns >= _NS:
            raise FormatError(f"{name!r} has a time with 10**9 nanoseconds or more")
        node_kind = _KINDS.get(kind)
        if node_kind is None:
            raise FormatError(f"unknown node kind {kind}")
        if node_kind == NodeKind.DIR and len(subtree) != 32:
            raise FormatError(f"directory {name!r} has no subtree")
        if content_hash and len(content_hash) != 32:
            raise FormatError("content hash has the wrong size")
        if mode > 0o7777:
            raise FormatError("mode has bits outside the permission bits")
        node = new(Node)
        node.__dict__.update(
            name=name, kind=node_kind, mode=mode, uid=uid, gid=gid,
            mtime_ns=mtime_s * _NS + mtime_ns, ctime_ns=ctime_s * _NS + ctime_ns, size=size, inode=inode, device=device, nlink=nlink, rdev=rdev,
            user=user.decode("utf-8", "surrogateescape"),
            group=group.decode("utf-8", "surrogateescape"),
            content=tuple([chunks[p : p + 32] for p in range(0, len(chunks), 32)]),
            content_hash=content_hash, subtree=subtree or None, link_target=target,
            xattrs=xattrs,
        )  # fmt: skip
        nodes.append(node)
    return nodes


# A node's fields as stored, for comparing with a file system entry without decoding:
# (fixed: the 73 bytes of kind..rdev as ``pack_fixed`` gives them, user, group, chunk
#  ids (n x 32 bytes, joined), content hash, subtree id, link target, xattrs).
RawNode = tuple[bytes, bytes, bytes, bytes, bytes, bytes, bytes, tuple[tuple[bytes, bytes], ...]]


def encode_owner(name: str) -> bytes:
    """A user or group name as a tree stores it."""
    return name.encode("utf-8", "surrogateescape")[:255]


def raw_nodes(data: bytes) -> dict[bytes, RawNode]:
    """The nodes of an encoded tree by name, each field as its stored bytes.

    For the backup's comparison with its parent (archiver/compare.py), which only asks
    whether each entry would be encoded the same again: no Node objects, and no checks
    beyond the format's framing (the tree came from the repository, authenticated and
    hashed to its id).
    """
    try:
        return {
            name: (fixed, user, group, chunks, content_hash, subtree, target, xattrs)
            for name, fixed, user, group, chunks, content_hash, subtree, target, xattrs
            in _stored_nodes(data)
        }  # fmt: skip
    except (struct.error, IndexError):
        raise FormatError("tree is truncated") from None
