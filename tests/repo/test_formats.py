"""Round trips of every encode/decode pair in the repository format."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casbackup.crypto.envelope import Opener, Sealer
from casbackup.crypto.keys import MasterKey
from casbackup.errors import FormatError
from casbackup.repo import codec
from casbackup.repo.config import ChunkerParams, RepoConfig
from casbackup.repo.ids import BlobId, Kind
from casbackup.repo.index import Location, decode_index, encode_index
from casbackup.repo.pack import (
    PackEntry,
    PackWriter,
    decode_header,
    encode_header,
    parse_pack_tail,
    read_header,
)
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.tree import Node, NodeKind, decode_tree, encode_tree
from casbackup.store.memory import MemoryBackend
from tests.repo.strategies import (
    U32,
    blob_ids,
    file_ids,
    index_packs,
    node_lists,
    snapshots,
)

ROOT = bytes(range(32))


@given(node_lists())
def test_tree_round_trip(nodes: list[Node]) -> None:
    assert decode_tree(encode_tree(nodes)) == nodes


def test_tree_extremes_round_trip() -> None:
    nodes = [
        Node(name=b"\xff\xfe not utf-8", kind=NodeKind.FILE, mtime_ns=-(2**63), ctime_ns=2**63 - 1,
             size=2**64 - 1, xattrs=((b"user.k", b"\0" * 70000), (b"", b""))),
        Node(name=b"\n", kind=NodeKind.SYMLINK, link_target=b"../../\xff" * 1000),
        Node(name=b"\xe2\x82", kind=NodeKind.DIR, subtree=BlobId(bytes(32)), mode=0o7777),
    ]  # fmt: skip
    nodes.sort(key=lambda n: n.name)
    assert decode_tree(encode_tree(nodes)) == nodes


def test_tree_times_beyond_64_bit_nanoseconds_round_trip() -> None:
    # touch -d 2300-01-01 (past 2262) and 1900-01-01 (before 1970, past -2**63 ns too)
    times = [13_569_465_600 * 10**9 + 123_456_789, -2_208_988_800 * 10**9 - 1, -1, 2**63]
    nodes = [Node(name=b"f%d" % i, kind=NodeKind.FILE, mtime_ns=t, ctime_ns=-t)
             for i, t in enumerate(times)]  # fmt: skip
    data = encode_tree(nodes)
    assert data[0] == 2
    assert decode_tree(data) == nodes


def _tree_v1(nodes: list[Node]) -> bytes:
    """A tree as version 1 wrote it: each time one signed 64-bit ns count (65-byte fixed part)."""
    import struct

    v1 = struct.Struct(">BIIIqqQQQIQ")
    out = bytearray(b"\x01") + struct.pack(">I", len(nodes))
    v2 = encode_tree(nodes)
    pos = 5
    for n in nodes:
        start = pos + 2 + len(n.name)  # the fixed part follows the name
        out += v2[pos:start]
        out += v1.pack(n.kind, n.mode, n.uid, n.gid, n.mtime_ns, n.ctime_ns, n.size, n.inode,
                       n.device, n.nlink, n.rdev)  # fmt: skip
        pos = start + 73
        end = pos + len(encode_tree([n])) - (5 + 2 + len(n.name) + 73)
        out += v2[pos:end]
        pos = end
    assert pos == len(v2)
    return bytes(out)


@given(node_lists())
def test_version_1_trees_still_decode(nodes: list[Node]) -> None:
    from casbackup.repo.tree import raw_nodes

    nodes = [replace(n, mtime_ns=n.mtime_ns % 2**62, ctime_ns=-(n.ctime_ns % 2**62))
             for n in nodes]  # fmt: skip
    old = _tree_v1(nodes)
    assert decode_tree(old) == nodes
    # the comparison in the readers sees version 1 trees in the version 2 layout
    assert raw_nodes(old) == raw_nodes(encode_tree(nodes))


def test_tree_refuses_a_nanosecond_field_of_a_whole_second() -> None:
    data = bytearray(encode_tree([Node(name=b"f", kind=NodeKind.FILE, mtime_ns=5)]))
    # name_len(2) name(1) kind mode uid gid (13) mtime_s (8): mtime's ns field follows
    at = 5 + 3 + 13 + 8
    assert data[at : at + 4] == (5).to_bytes(4, "big")
    data[at : at + 4] = (10**9).to_bytes(4, "big")
    with pytest.raises(FormatError, match="nanoseconds"):
        decode_tree(bytes(data))


@given(index_packs(), st.lists(file_ids, max_size=3))
def test_index_round_trip(packs: dict, supersedes: list) -> None:  # type: ignore[type-arg]
    decoded = decode_index(encode_index(packs, supersedes))
    assert decoded.supersedes == tuple(supersedes)
    assert decoded.packs == packs


@given(
    st.lists(st.tuples(st.sampled_from([Kind.DATA, Kind.TREE]), blob_ids, U32, U32), max_size=20)
)
def test_pack_header_round_trip(items: list[tuple[Kind, BlobId, int, int]]) -> None:
    entries, offset = [], 0
    for kind, blob_id, stored, raw in items:
        entries.append(PackEntry(kind, blob_id, offset, stored, raw))
        offset += stored
    assert decode_header(encode_header(entries)) == entries


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([Kind.DATA, Kind.TREE]), st.binary(max_size=3000)), max_size=12),
       st.integers(0, 3000))  # fmt: skip
def test_full_pack_round_trip(blobs: list[tuple[Kind, bytes]], padding: int) -> None:
    sealer, opener = Sealer(ROOT), Opener(ROOT)
    writer = PackWriter()
    expected = []
    for i, (kind, data) in enumerate(blobs):
        blob_id = BlobId(i.to_bytes(32, "big"))
        writer.add(kind, blob_id, sealer.seal(kind, blob_id, codec.compress(data, 3)), len(data))
        expected.append((kind, blob_id, data))
    pack_id, raw, entries = writer.finish(sealer)
    header_len, parsed = parse_pack_tail(opener, raw, len(raw))
    assert parsed == entries
    # A short tail asks for more, and read_header does the second ranged read.
    backend = MemoryBackend()
    backend.put("data/00/" + "0" * 64, raw)
    assert read_header(backend.get, "data/00/" + "0" * 64, len(raw), opener) == entries
    tail = raw[len(raw) - min(len(raw), 4 + padding % (header_len + 5)) :]
    if len(tail) >= header_len + 4:
        assert parse_pack_tail(opener, tail, len(raw))[1] == entries
    else:
        with pytest.raises(FormatError) as info:
            parse_pack_tail(opener, tail, len(raw))
        assert getattr(info.value, "need", None) == header_len + 4
    for entry, (kind, blob_id, data) in zip(parsed, expected, strict=True):
        envelope = raw[entry.offset : entry.offset + entry.stored_len]
        assert entry.kind == kind and entry.id == blob_id and entry.raw_len == len(data)
        assert codec.decompress(opener.open(kind, blob_id, envelope)) == data


@given(
    st.builds(ChunkerParams, min_size=st.integers(64, 1 << 20), avg_size=st.integers(256, 4 << 20),
              max_size=st.integers((1 << 20) + 1, 16 << 20), normalization=st.integers(0, 3)),
    st.integers(1 << 20, 512 << 20), st.sampled_from(["zstd", "none"]), st.integers(-7, 22),
)  # fmt: skip
def test_config_round_trip(
    chunker: ChunkerParams, pack_size: int, compression: str, level: int
) -> None:
    config = RepoConfig(chunker=chunker, pack_size=pack_size, compression=compression,
                        compression_level=level).sign(MasterKey(bytes(32)))  # fmt: skip
    decoded = RepoConfig.decode(config.encode())
    assert decoded == config
    decoded.verify_mac(MasterKey(bytes(32)))


@given(snapshots)
def test_snapshot_round_trip(snap: Snapshot) -> None:
    decoded = Snapshot.decode(snap.encode(), "abc")
    assert decoded == snap.with_id("abc")


@given(
    st.binary(max_size=5000) | st.binary(max_size=500).map(lambda b: b * 20),
    st.sampled_from([None, 1, 3, 19]),
)
def test_codec_round_trip(data: bytes, level: int | None) -> None:
    packed = codec.compress(data, level)
    assert codec.decompress(packed) == data
    assert len(packed) <= len(data) + 1  # never grows by more than the codec byte


def test_codec_skips_incompressible_large_data() -> None:
    data = os.urandom(300_000)
    assert codec.compress(data, 3)[0] == codec.CODEC_RAW
    assert codec.compress(bytes(300_000), 3)[0] == codec.CODEC_ZSTD


@given(file_ids, U32, U32, U32, st.sampled_from([Kind.DATA, Kind.TREE]))
def test_location_round_trip(pack: str, offset: int, stored: int, raw: int, kind: Kind) -> None:
    loc = Location(pack, offset, stored, raw, kind)  # type: ignore[arg-type]
    assert Location.decode(loc.encode()) == loc


@given(node_lists())
def test_raw_nodes_hold_each_nodes_stored_fields(nodes: list[Node]) -> None:
    from casbackup.repo.tree import encode_owner, pack_fixed, raw_nodes

    raw = raw_nodes(encode_tree(nodes))
    assert list(raw) == [n.name for n in nodes]
    for n in nodes:
        fixed, user, group, chunks, content_hash, subtree, target, xattrs = raw[n.name]
        assert fixed == pack_fixed(n.kind, n.mode, n.uid, n.gid, n.mtime_ns, n.ctime_ns, n.size,
                                   n.inode, n.device, n.nlink, n.rdev)  # fmt: skip
        assert (user, group) == (encode_owner(n.user), encode_owner(n.group))
        assert chunks == b"".join(n.content) and content_hash == n.content_hash
        assert subtree == (n.subtree or b"") and target == n.link_target
        assert xattrs == n.xattrs
