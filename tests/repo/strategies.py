"""Hypothesis strategies for the repository's on-disk structures (shared by tests/repo)."""

from __future__ import annotations

from hypothesis import strategies as st

from casbackup.repo.ids import BlobId, FileId, Kind
from casbackup.repo.index import Location
from casbackup.repo.snapshot import DatabaseRecord, Snapshot, Summary
from casbackup.repo.tree import Node, NodeKind, valid_name

U32 = st.integers(0, 2**32 - 1)
U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
# Any time a tree can hold (version 2: i64 seconds + ns), so well past 64-bit nanoseconds,
# with the 64-bit-nanosecond limits themselves drawn often.
TIMES_NS = (
    st.integers(-(2**63) * 10**9, 2**63 * 10**9 - 1)
    | I64
    | st.sampled_from([-(2**63) - 1, 2**63, -1, 0, 10**9 - 1, 10**9, -(10**9) - 1])
)

blob_ids = st.binary(min_size=32, max_size=32).map(BlobId)
file_ids = st.binary(min_size=32, max_size=32).map(lambda b: FileId(b.hex()))

# Raw bytes, including non-UTF-8: tree names are bytes on disk and must round-trip.
names = st.binary(min_size=1, max_size=300).filter(valid_name)
# Owner names survive only as what encode_tree keeps (<= 255 UTF-8 bytes, surrogateescape).
owner_names = st.binary(max_size=255).map(lambda b: b.decode("utf-8", "surrogateescape"))


@st.composite
def nodes(draw: st.DrawFn, name: bytes | None = None) -> Node:
    kind = draw(st.sampled_from(NodeKind))
    is_dir = kind == NodeKind.DIR
    return Node(
        name=draw(names) if name is None else name,
        kind=kind,
        mode=draw(st.integers(0, 0o7777)),
        uid=draw(U32),
        gid=draw(U32),
        mtime_ns=draw(TIMES_NS),
        ctime_ns=draw(TIMES_NS),
        size=draw(U64),
        inode=draw(U64),
        device=draw(U64),
        nlink=draw(U32),
        rdev=draw(U64),
        user=draw(owner_names),
        group=draw(owner_names),
        content=tuple(draw(st.lists(blob_ids, max_size=4))) if kind == NodeKind.FILE else (),
        content_hash=draw(st.sampled_from([b"", bytes(range(32))])),
        subtree=draw(blob_ids) if is_dir else None,
        link_target=draw(st.binary(max_size=200)) if kind == NodeKind.SYMLINK else b"",
        xattrs=tuple(
            draw(st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=100)), max_size=3))
        ),
    )


@st.composite
def node_lists(draw: st.DrawFn, max_size: int = 8) -> list[Node]:
    unique = sorted(set(draw(st.lists(names, max_size=max_size))))
    return [draw(nodes(name=n)) for n in unique]


@st.composite
def index_packs(draw: st.DrawFn) -> dict[FileId, list[tuple[BlobId, Location]]]:
    packs: dict[FileId, list[tuple[BlobId, Location]]] = {}
    for pack in draw(st.lists(file_ids, max_size=4, unique=True)):
        entries = []
        for blob_id in draw(st.lists(blob_ids, max_size=5)):
            kind = draw(st.sampled_from([Kind.DATA, Kind.TREE]))
            entries.append((blob_id, Location(pack, draw(U32), draw(U32), draw(U32), kind)))
        packs[pack] = entries
    return packs


text = st.text(max_size=30)
# JSON round-trips lone surrogates and any finite float; NaN would not compare equal.
finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | finite | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=10,
)

summaries = st.builds(
    Summary,
    **{f: st.integers(0, 2**63) for f in (
        "files_new", "files_changed", "files_unchanged", "dirs", "files_total", "bytes_total",
        "bytes_read", "bytes_added", "bytes_stored", "blobs_added", "errors",
    )},
    duration_s=finite,
)  # fmt: skip

databases = st.builds(
    DatabaseRecord,
    name=text, engine=text, format=text, server_version=text, path=text,
    size=st.integers(0, 2**63), row_counts=st.dictionaries(text, st.integers(0, 2**63), max_size=3),
)  # fmt: skip

snapshots = st.builds(
    Snapshot,
    time=st.datetimes(timezones=st.just(__import__("datetime").UTC)).map(lambda d: d.isoformat()),
    start_ns=I64,
    host=text,
    user=text,
    paths=st.lists(text, max_size=3).map(tuple),
    tree=blob_ids.map(bytes.hex),
    type=st.sampled_from(["full", "incremental", "differential"]),
    app=st.none() | text,
    tags=st.lists(text, max_size=3).map(tuple),
    parent=st.none() | file_ids,
    base_full=st.none() | file_ids,
    excludes=st.lists(text, max_size=3).map(tuple),
    summary=summaries,
    databases=st.lists(databases, max_size=2).map(tuple),
    app_definition=st.none() | st.dictionaries(text, json_values, max_size=3),
    program_version=text,
    errors=st.lists(text, max_size=3).map(tuple),
    xattrs=st.booleans(),
    excluded_databases=st.lists(text, max_size=3).map(tuple),
)
