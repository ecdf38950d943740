"""Every decoder, fed arbitrary or damaged bytes, raises only casbackup's own format errors.

Callers report damage precisely ("pack X is damaged") only if nothing else escapes:
an IndexError or struct.error from a decoder would reach the user as a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casbackup.crypto.envelope import Opener, Sealer
from casbackup.crypto.keys import MasterKey
from casbackup.errors import FormatError, IntegrityError, UnsupportedFormat
from casbackup.repo import codec
from casbackup.repo.config import RepoConfig
from casbackup.repo.ids import BlobId, Kind
from casbackup.repo.index import decode_index, decode_index_records, encode_index, iter_records
from casbackup.repo.pack import PackEntry, PackWriter, decode_header, encode_header, parse_pack_tail
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.tree import decode_tree, encode_tree, raw_nodes
from tests.repo.strategies import U32, blob_ids, index_packs, json_values, node_lists, snapshots

OWN_ERRORS = (FormatError, IntegrityError, UnsupportedFormat)
ROOT = bytes(range(32))
OPENER = Opener(ROOT)


def _pack_tail(data: bytes) -> object:
    return parse_pack_tail(OPENER, data, len(data))


DECODERS: dict[str, Callable[[bytes], object]] = {
    "tree": decode_tree,
    "tree_raw": raw_nodes,
    "index": decode_index,
    "index_records": decode_index_records,
    "pack_header": decode_header,
    "pack_tail": _pack_tail,
    "config": RepoConfig.decode,
    "snapshot": Snapshot.decode,
    "codec": codec.decompress,
    "envelope": lambda data: OPENER.open(Kind.DATA, bytes(32), data),
}


def decodes_or_refuses(decoder: Callable[[bytes], object], data: bytes) -> None:
    try:
        decoder(data)
    except OWN_ERRORS:
        pass


@pytest.mark.parametrize("name", sorted(DECODERS))
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes(name: str, data: bytes) -> None:
    decodes_or_refuses(DECODERS[name], data)


def _pack(blobs: list[bytes]) -> bytes:
    sealer = Sealer(ROOT)
    writer = PackWriter()
    for i, data in enumerate(blobs):
        blob_id = BlobId(i.to_bytes(32, "big"))
        writer.add(
            Kind.DATA, blob_id, sealer.seal(Kind.DATA, blob_id, codec.compress(data, 3)), len(data)
        )
    return writer.finish(sealer)[1]


# Valid encodings of every structure, to be damaged below.
VALID: dict[str, st.SearchStrategy[bytes]] = {
    "tree": node_lists().map(encode_tree),
    "tree_raw": node_lists().map(encode_tree),
    "index": index_packs().map(encode_index),
    "index_records": index_packs().map(encode_index),
    "pack_header": st.lists(
        st.builds(
            PackEntry, st.sampled_from([Kind.DATA, Kind.TREE]), blob_ids, st.just(0), U32, U32
        ),
        max_size=6,
    ).map(encode_header),
    "pack_tail": st.lists(st.binary(max_size=200), max_size=4).map(_pack),
    "config": st.just(RepoConfig().sign(MasterKey(bytes(32))).encode()),
    "snapshot": snapshots.map(Snapshot.encode),
    "codec": st.binary(max_size=300).map(lambda b: codec.compress(b * 3, 3)),
    "envelope": st.binary(max_size=300).map(lambda b: Sealer(ROOT).seal(Kind.DATA, bytes(32), b)),
}


@pytest.mark.parametrize("name", sorted(DECODERS))
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_damaged_valid_encodings(name: str, data: st.DataObject) -> None:
    raw = bytearray(data.draw(VALID[name]))
    action = data.draw(st.sampled_from(["flip", "truncate", "append", "set"]))
    if action == "truncate":
        raw = raw[: data.draw(st.integers(0, max(0, len(raw) - 1)))]
    elif action == "append":
        raw += data.draw(st.binary(min_size=1, max_size=40))
    elif raw:
        pos = data.draw(st.integers(0, len(raw) - 1))
        if action == "flip":
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        else:
            raw[pos] = data.draw(st.integers(0, 255))
    decodes_or_refuses(DECODERS[name], bytes(raw))


def _mutate_json(base: dict[str, Any], data: st.DataObject) -> bytes:
    """Replace, drop or add one (possibly nested) field: type confusion, not just bad bytes."""
    doc = json.loads(json.dumps(base))
    target = doc
    nested = [k for k, v in doc.items() if isinstance(v, dict) and v]
    if nested and data.draw(st.booleans()):
        target = doc[data.draw(st.sampled_from(sorted(nested)))]
    key = data.draw(st.sampled_from(sorted(target)) | st.text(max_size=8))
    if data.draw(st.booleans()):
        target.pop(key, None)
    else:
        target[key] = data.draw(json_values | st.sampled_from([1e308 * 10, -1e400, 2**70, True]))
    return json.dumps(doc).encode()


JSON_DECODERS: dict[str, tuple[Callable[[bytes], object], st.SearchStrategy[dict[str, Any]]]] = {
    "config": (
        RepoConfig.decode,
        st.just(json.loads(RepoConfig().sign(MasterKey(bytes(32))).encode())),
    ),
    "snapshot": (Snapshot.decode, snapshots.map(lambda s: json.loads(s.encode()))),
}


@pytest.mark.parametrize("name", sorted(JSON_DECODERS))
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_json_type_confusion(name: str, data: st.DataObject) -> None:
    decoder, docs = JSON_DECODERS[name]
    decodes_or_refuses(decoder, _mutate_json(data.draw(docs), data))


@pytest.mark.parametrize("name", sorted(DECODERS))
def test_deeply_nested_json(name: str) -> None:
    decodes_or_refuses(DECODERS[name], b"[" * 100_000 + b"]" * 100_000)
    decodes_or_refuses(DECODERS[name], b'{"a":' * 50_000 + b"1" + b"}" * 50_000)


@settings(max_examples=100, deadline=None)
@given(data=index_packs().map(encode_index))
def test_index_records_hold_what_decode_index_holds(data: bytes) -> None:
    # check keeps index files as records; they must say exactly what the Locations say.
    full = decode_index(data)
    supersedes, sections = decode_index_records(data)
    assert supersedes == full.supersedes
    packs: dict[str, list[tuple[bytes, int, int, int, int]]] = {}
    for pack, records in sections:
        packs.setdefault(pack, []).extend(
            (bid, off, stored, raw, kind) for kind, bid, off, stored, raw in iter_records(records)
        )
    assert packs == {
        pack: [(bid, loc.offset, loc.stored_len, loc.raw_len, loc.kind) for bid, loc in entries]
        for pack, entries in full.packs.items()
    }
