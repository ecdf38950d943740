"""Byte layouts of delta blobs (repo_format.md "Delta blobs"): index and pack header version 2,
the cache entry's base, the delta payload, and what readers refuse."""

from __future__ import annotations

import os
import random

import pytest

from casbackup.crypto.envelope import Opener, Sealer
from casbackup.errors import FormatError, IntegrityError
from casbackup.repo import codec, delta
from casbackup.repo.ids import BlobId, FileId, Kind
from casbackup.repo.index import (
    INDEX_VERSION,
    INDEX_VERSION_DELTAS,
    Location,
    decode_index,
    decode_index_with_bases,
    encode_index,
)
from casbackup.repo.pack import PackEntry, decode_header, encode_header

PACK = FileId("ab" * 32)
A, B, C = (BlobId(bytes([i]) * 32) for i in (1, 2, 3))


def test_index_without_deltas_stays_version_1() -> None:
    data = encode_index({PACK: [(A, Location(PACK, 0, 10, 20, Kind.DATA))]})
    assert data[0] == INDEX_VERSION
    assert decode_index_with_bases(data)[2] == {}


def test_index_version_2_round_trips_bases() -> None:
    entries = [
        (A, Location(PACK, 0, 10, 20, Kind.DATA)),
        (B, Location(PACK, 10, 5, 20, Kind.DELTA, A)),
        (C, Location(PACK, 15, 5, 20, Kind.DELTA, B)),
    ]
    data = encode_index({PACK: entries})
    assert data[0] == INDEX_VERSION_DELTAS
    assert data.endswith(b"\x00\x00\x00\x02" + B + A + C + B)
    assert list(decode_index(data).blobs()) == entries
    assert decode_index_with_bases(data)[2] == {B: A, C: B}


@pytest.mark.parametrize(
    "damage",
    ["no base for a delta", "a base for a data blob", "a delta its own base", "delta in v1",
     "truncated bases"],
)  # fmt: skip
def test_index_readers_refuse_damaged_bases(damage: str) -> None:
    entries = [
        (A, Location(PACK, 0, 10, 20, Kind.DATA)),
        (B, Location(PACK, 10, 5, 20, Kind.DELTA, A)),
    ]
    data = bytearray(encode_index({PACK: entries}))
    if damage == "no base for a delta":
        data[-68:] = b"\x00\x00\x00\x00"
    elif damage == "a base for a data blob":
        data[-64:-32] = A
    elif damage == "a delta its own base":
        data[-32:] = B
    elif damage == "delta in v1":
        data[0] = INDEX_VERSION
    else:
        del data[-1]
    with pytest.raises(FormatError):
        decode_index_with_bases(bytes(data))


def test_cache_entry_carries_the_base() -> None:
    loc = Location(PACK, 7, 5, 20, Kind.DELTA, A)
    assert len(loc.encode()) == 77 and Location.decode(loc.encode()) == loc
    plain = Location(PACK, 7, 5, 20, Kind.DATA)
    assert len(plain.encode()) == 45 and Location.decode(plain.encode()) == plain
    with pytest.raises(FormatError):
        Location.decode(loc.encode()[:45])


def test_pack_header_version_2() -> None:
    entries = [PackEntry(Kind.DATA, A, 0, 10, 20), PackEntry(Kind.DELTA, B, 10, 5, 20, A)]
    header = encode_header(entries)
    assert header[0] == 2 and decode_header(header) == entries
    assert encode_header(entries[:1])[0] == 1
    with pytest.raises(FormatError):
        decode_header(bytes([1]) + header[1:])  # a delta in a version 1 header
    with pytest.raises(FormatError):
        decode_header(header[:-1])


def _sealed_delta(base: bytes, target: bytes) -> tuple[Opener, BlobId, bytes]:
    root = os.urandom(32)
    blob_id = BlobId(os.urandom(32))
    payload = delta.encode_delta(A, base, target, 3)
    return Opener(root), blob_id, Sealer(root).seal(Kind.DELTA, blob_id, payload)


def test_delta_payload_round_trip_and_damage() -> None:
    base = os.urandom(50_000)
    target = base[:20_000] + b"changed" + base[20_007:]
    opener, blob_id, envelope = _sealed_delta(base, target)
    payload = delta.open_delta(opener, blob_id, envelope)
    assert delta.delta_base(payload) == A and len(payload) < 500
    assert delta.apply_delta(payload, base, len(target)) == target
    with pytest.raises(IntegrityError):
        delta.apply_delta(payload, base, len(target) + 1)  # the index's length is wrong
    with pytest.raises(FormatError):
        delta.apply_delta(payload[:-3], base, len(target))  # a cut frame
    with pytest.raises(FormatError):
        delta.delta_base(b"\x03" + payload[1:])  # unknown version
    bad = bytearray(envelope)
    bad[len(bad) // 2] ^= 1
    with pytest.raises(IntegrityError):
        delta.open_delta(opener, blob_id, bytes(bad))
    with pytest.raises(IntegrityError):  # a delta presented as data
        opener.open(Kind.DATA, blob_id, envelope)


def test_resolve_chain_checks_every_link() -> None:
    root = os.urandom(32)
    sealer, opener = Sealer(root), Opener(root)
    base = os.urandom(40_000)
    # Each level changes a byte (XOR), not sets it: a fixed byte would leave random data
    # as it was one time in 256, and a link equal to its base checks nothing.
    mid = base[:1000] + bytes([base[1000] ^ 0x5A]) + base[1001:]
    top = mid[:30_000] + bytes([mid[30_000] ^ 0xA5]) + mid[30_001:]
    ids = {name: BlobId(os.urandom(32)) for name in ("base", "mid", "top")}
    store: dict[int, bytes] = {}

    def put(
        kind: Kind, blob_id: BlobId, plain: bytes, raw: int, base_id: BlobId | None
    ) -> Location:
        body = codec.compress(plain, 3) if kind == Kind.DATA else plain
        store[len(store)] = sealer.seal(kind, blob_id, body)
        return Location(FileId(f"{len(store) - 1:064x}"), len(store) - 1, 0, raw, kind, base_id)

    locs = {
        "base": put(Kind.DATA, ids["base"], base, len(base), None),
        "mid": put(Kind.DELTA, ids["mid"], delta.encode_delta(ids["base"], base, mid, 3), len(mid), ids["base"]),
        "top": put(Kind.DELTA, ids["top"], delta.encode_delta(ids["mid"], mid, top, 3), len(top), ids["mid"]),
    }  # fmt: skip

    def fetch(pack: str, offset: int, length: int) -> bytes:
        return store[offset]

    by_id = {v: k for k, v in ids.items()}
    chain = delta.located_chain(lambda b: locs[by_id[b]], ids["top"], locs["top"])
    assert [c[0] for c in chain] == [ids["top"], ids["mid"], ids["base"]]
    assert delta.resolve_chain(fetch, opener, chain) == top
    with pytest.raises(IntegrityError):  # a link skipped: the payload names another base
        delta.resolve_chain(fetch, opener, [chain[0], chain[2]])
    with pytest.raises(IntegrityError):  # a chain that does not end in data
        delta.resolve_chain(fetch, opener, chain[:2])
    with pytest.raises(IntegrityError):  # a raw length that does not match
        delta.resolve_chain(fetch, opener, [(*chain[0][:4], len(top) + 1), *chain[1:]])
    with pytest.raises(IntegrityError):  # the hash check catches a wrong id
        delta.resolve_chain(fetch, opener, chain, hash_id=lambda data: b"\x00" * 32)
    real = {base: ids["base"], mid: ids["mid"], top: ids["top"]}
    assert delta.resolve_chain(fetch, opener, chain, hash_id=real.__getitem__) == top
    # Only the result is hashed when it matches; when it does not, the error names the
    # first link whose plaintext does not match its id (here the middle one).
    lying = {**real, mid: BlobId(os.urandom(32)), top: BlobId(os.urandom(32))}
    with pytest.raises(IntegrityError, match=f"blob {ids['mid'].hex()[:16]} does not match"):
        delta.resolve_chain(fetch, opener, chain, hash_id=lying.__getitem__)
    hashed: list[bytes] = []
    delta.resolve_chain(fetch, opener, chain, hash_id=lambda d: hashed.append(d) or real[d])
    assert hashed == [top]


def test_chain_of_refuses_loops_and_overlong_chains() -> None:
    loop = {A: Location(PACK, 0, 1, 1, Kind.DELTA, B), B: Location(PACK, 1, 1, 1, Kind.DELTA, A)}
    with pytest.raises(IntegrityError, match="longer than"):
        delta.chain_of(loop.__getitem__, A, loop[A])


class _Scratch:
    """An in-memory stand-in for prune's RecordSpill."""

    def __init__(self) -> None:
        self.data: dict[int, list[bytes]] = {}

    def add(self, bucket: int, record: bytes) -> None:
        self.data.setdefault(bucket, []).append(record)

    def records(self, bucket: int) -> list[bytes]:
        return self.data.get(bucket, [])

    def close(self) -> None:
        self.data = {}


def _closure(used: set[bytes], bases: dict[bytes, bytes]) -> set[bytes]:
    delta.close_over_spilled_bases(
        lambda b: frozenset(i for i in used if i[0] == b),
        used.add,
        lambda b: [(d, base) for d, base in bases.items() if d[0] == b],
        256,
        _Scratch,
    )
    return used


def test_prune_closure_over_bases() -> None:
    D = BlobId(b"\x04" * 32)
    bases = {B: A, C: B}
    assert _closure({C}, bases) == {A, B, C}  # two rounds: C -> B -> A
    assert _closure({D}, bases) == {D}
    assert _closure({A}, bases) == {A}  # a base keeps nothing above it
    assert _closure({A}, {A: B, B: A}) == {A, B}  # a loop ends


@pytest.mark.parametrize("mb", [1, 3, 9])
def test_a_large_base_keeps_its_matches(mb: int) -> None:
    """Chunks of the files chunker reach 8 MiB: a few changed bytes stay a small delta."""
    rng = random.Random(mb)
    rows = b"".join(b"%08d %032x %s\n" % (i, rng.getrandbits(128), b"note" * (i % 5))
                    for i in range(mb * 16_000))  # fmt: skip
    base = rows[: mb * 1_000_000]
    target = bytearray(base)
    for pos in rng.sample(range(len(base) - 8), 40):
        target[pos : pos + 8] = b"CHANGED!"
    payload = delta.encode_delta(b"\0" * 32, base, bytes(target), 3)
    assert len(payload) < 4_000, len(payload)  # 40 changes; before: 100x that at 3 MB
    assert delta.apply_delta(payload, base, len(target)) == target
