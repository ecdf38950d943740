"""Pack headers decoded as columns (``decode_header_columns``, no object per entry) say
exactly what the entry-by-entry decoder always said: the same entries, or the same error
for the same damage."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from casbackup.errors import FormatError
from casbackup.repo.ids import BLOB_KINDS, DELTA_KINDS, BlobId, Kind
from casbackup.repo.pack import PackEntry, decode_header, decode_header_columns

_COUNT = struct.Struct(">BI")
_ENTRY = struct.Struct(">B32sII")
_U32 = struct.Struct(">I")
_BASE = struct.Struct(">32s32s")


def reference_decode(data: bytes) -> list[PackEntry]:
    """The decoder as it was before the columns: one step and one PackEntry per entry."""
    if len(data) < _COUNT.size:
        raise FormatError("pack header is too short")
    version, count = _COUNT.unpack_from(data, 0)
    if version not in (1, 2):
        raise FormatError(f"unknown pack header version {version}")
    end = _COUNT.size + count * _ENTRY.size
    bases: dict[bytes, BlobId] = {}
    if version == 2:
        if len(data) < end + _U32.size:
            raise FormatError("pack header length does not match its entry count")
        (n_bases,) = _U32.unpack_from(data, end)
        if len(data) != end + _U32.size + n_bases * _BASE.size:
            raise FormatError("pack header length does not match its entry count")
        for delta, base in _BASE.iter_unpack(data[end + _U32.size :]):
            bases[delta] = BlobId(base)
    elif len(data) != end:
        raise FormatError("pack header length does not match its entry count")
    entries = []
    offset = 0
    pos = _COUNT.size
    for _ in range(count):
        kind, blob_id, stored_len, raw_len = _ENTRY.unpack_from(data, pos)
        pos += _ENTRY.size
        try:
            kind = Kind(kind)
        except ValueError:
            raise FormatError(f"unknown blob kind {kind} in pack header") from None
        allowed = BLOB_KINDS if bases else (Kind.DATA, Kind.TREE)
        if kind not in allowed:
            raise FormatError(f"blob kind {kind} cannot be in a pack")
        base = bases.get(blob_id) if kind in DELTA_KINDS else None
        if kind in DELTA_KINDS and (base is None or base == blob_id):
            raise FormatError("pack header names a delta blob without a valid base")
        entries.append(PackEntry(kind, BlobId(blob_id), offset, stored_len, raw_len, base))
        offset += stored_len
    if len(bases) != len({e.id for e in entries if e.kind in DELTA_KINDS}):
        raise FormatError("pack header's delta bases do not match its delta blobs")
    return entries


# Few distinct ids and kinds, so that duplicates, deltas naming themselves or a missing
# base, and kinds that cannot be in a pack all come up often.
_ids = st.sampled_from([bytes([i]) * 32 for i in range(4)])
_kinds = st.sampled_from([0, 1, 2, 3, 9, 10, 11, 200])


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    entries = draw(
        st.lists(
            st.tuples(_kinds, _ids, st.integers(0, 300), st.integers(0, 2**32 - 1)), max_size=8
        )
    )
    version = draw(st.sampled_from([1, 2, 2, 3]))
    count = len(entries) + draw(st.sampled_from([0, 0, 0, 1, -1]))
    parts = [_COUNT.pack(version, max(count, 0))]
    parts += [_ENTRY.pack(*e) for e in entries]
    if version == 2:
        bases = draw(st.lists(st.tuples(_ids, _ids), max_size=4))
        parts.append(_U32.pack(len(bases)))
        parts += [_BASE.pack(d, b) for d, b in bases]
    data = b"".join(parts)
    cut = draw(st.sampled_from([0, 0, 0, 1, 7]))
    return data[: len(data) - cut]


def _outcome(decode, data: bytes) -> object:  # type: ignore[no-untyped-def]
    try:
        return decode(data)
    except FormatError as exc:
        return ("error", str(exc))


@settings(max_examples=1500)
@given(headers() | st.binary(max_size=120))
def test_columns_decode_as_entry_by_entry_did(data: bytes) -> None:
    expected = _outcome(reference_decode, data)
    assert _outcome(decode_header, data) == expected
    cols = _outcome(decode_header_columns, data)
    if isinstance(expected, tuple):
        assert cols == expected
        return
    assert isinstance(cols, tuple) and not isinstance(cols[0], str)
    rows = zip(cols.kinds, cols.ids, cols.offsets, cols.stored, cols.raw, strict=True)
    assert [(e.kind, e.id, e.offset, e.stored_len, e.raw_len) for e in expected] == list(rows)
    assert all(type(e.kind) is Kind for e in decode_header(data))
