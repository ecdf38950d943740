"""``Location.decode``, built without the dataclass's ``__init__``: the same value, kind and
behaviour as a Location made the ordinary way, and the pack names it shares stay bounded."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casbackup.errors import FormatError, NotFound
from casbackup.repo import index as index_module
from casbackup.repo.ids import BlobId, FileId, Kind
from casbackup.repo.index import Location, chunk_location
from casbackup.testing.fixtures import make_repo

from .strategies import U32, blob_ids, file_ids


@given(
    file_ids,
    U32,
    U32,
    U32,
    st.sampled_from([Kind.DATA, Kind.TREE, Kind.DELTA, Kind.TREE_DELTA]),
    blob_ids,
)
@settings(deadline=None)
def test_decode_gives_what_the_constructor_gives(
    pack: FileId, offset: int, stored: int, raw: int, kind: Kind, base: BlobId
) -> None:
    made = Location(pack, offset, stored, raw, kind, base if kind in (9, 10) else None)
    got = Location.decode(made.encode())
    assert got == made
    assert hash(got) == hash(made)
    assert type(got) is Location and type(got.kind) is Kind and type(got.pack) is str
    assert dataclasses.astuple(got) == dataclasses.astuple(made)
    assert repr(got) == repr(made)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.offset = 1  # type: ignore[misc]


def test_blobs_of_one_pack_share_its_name() -> None:
    pack = FileId("ab" * 32)
    one = Location.decode(Location(pack, 0, 10, 10, Kind.DATA).encode())
    two = Location.decode(Location(pack, 10, 10, 10, Kind.TREE).encode())
    assert one.pack == pack and one.pack is two.pack


def test_the_shared_names_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "_PACK_NAMES", {})
    monkeypatch.setattr(index_module, "_PACK_NAMES_MAX", 4)
    for i in range(10):
        pack = FileId(bytes([i]).hex() * 32)
        assert Location.decode(Location(pack, 0, 1, 1, Kind.DATA).encode()).pack == pack
        assert len(index_module._PACK_NAMES) <= 4


def test_damaged_values_still_fail() -> None:
    value = Location(FileId("cd" * 32), 0, 1, 1, Kind.DATA).encode()
    with pytest.raises(ValueError):
        Location.decode(value[:-1] + bytes((200,)))  # no such kind
    delta = Location(FileId("cd" * 32), 0, 1, 1, Kind.DELTA, BlobId(bytes(32))).encode()
    with pytest.raises(FormatError, match="no base"):
        Location.decode(delta[:-32])


@given(file_ids, U32, U32, U32, blob_ids)
@settings(deadline=None)
def test_chunk_location_reads_what_decode_reads(
    pack: FileId, offset: int, stored: int, raw: int, chunk: BlobId
) -> None:
    loc = Location(pack, offset, stored, raw, Kind.DATA)
    assert chunk_location(chunk, loc.encode()) == ((chunk, pack, offset, stored, raw), Kind.DATA)


def test_locate_values_are_the_locations_stored(tmp_path: Path) -> None:
    repo = make_repo(str(tmp_path / "repo"))
    try:
        ids = [repo.save_blob(Kind.DATA, os.urandom(100 + i))[0] for i in range(5)]
        pending = repo.locate_values(ids)  # before the flush: this session's blobs
        repo.flush()
        stored = repo.locate_values(ids[::-1])
        assert [Location.decode(v) for v in stored] == repo.locate_many(ids[::-1])
        assert pending == stored[::-1]
        with pytest.raises(NotFound):
            repo.locate_values([*ids, BlobId(bytes(32))])
    finally:
        repo.close()
