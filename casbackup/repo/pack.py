"""Pack files: many encrypted blobs followed by an encrypted header.

Layout::

    blob_1 || blob_2 || ... || blob_n || header_envelope || header_len[4, u32 LE]

Each blob is an envelope (kind DATA, TREE, DELTA or TREE_DELTA, aad bound to its id), so
one blob can be fetched with a ranged read and a pack can be repacked without re-encrypting.
The header envelope (kind PACK_HEADER, object id all zero) holds, after the codec
byte::

    version[1]=1 | count[4, u32 BE] | count * (kind[1] | id[32] | stored_len[4] | raw_len[4])

Header version 2 (written only when the pack holds a DELTA blob, format version 3)
appends the base of each DELTA and TREE_DELTA entry (format 4), in entry order::

    n_bases[4, u32 BE] | n_bases * (delta_id[32] | base_id[32])

Offsets are implicit: blob i starts where blob i-1 ended, blob 1 at 0. The header
lets ``repair index`` rebuild the index from packs alone. A pack's name is
``data/<first 2 hex>/<file id>`` where the file id is BLAKE3 of the whole pack.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, NamedTuple

import blake3

from casbackup.crypto.envelope import ZERO_ID, Opener, Sealer
from casbackup.errors import FormatError, IntegrityError
from casbackup.repo import codec
from casbackup.repo.ids import BLOB_KINDS, DELTA_KINDS, ID_SIZE, BlobId, FileId, Kind, file_id

HEADER_VERSION = 1
HEADER_VERSION_DELTAS = 2
_BASE = struct.Struct(">32s32s")
_U32 = struct.Struct(">I")
_COUNT = struct.Struct(">BI")
_ENTRY = struct.Struct(">B32sII")  # kind[1] id[32] stored_len[4] raw_len[4] = 41 bytes
_TRAILER = struct.Struct("<I")
_PACK_KINDS = bytes((Kind.DATA, Kind.TREE))
_PACK_KINDS_V2 = bytes(BLOB_KINDS)


def pack_name(pack_id: FileId) -> str:
    return f"data/{pack_id[:2]}/{pack_id}"


@dataclass(frozen=True)
class PackEntry:
    kind: Kind
    id: BlobId
    offset: int
    stored_len: int
    raw_len: int
    base: BlobId | None = None  # a DELTA's base blob


class PackWriter:
    """Accumulates blobs in memory until the pack is big enough to store."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.entries: list[PackEntry] = []

    def add(
        self,
        kind: Kind,
        blob_id: BlobId,
        envelope: bytes,
        raw_len: int,
        base: BlobId | None = None,
    ) -> None:
        self.entries.append(
            PackEntry(kind, blob_id, len(self.buffer), len(envelope), raw_len, base)
        )
        self.buffer += envelope

    @property
    def size(self) -> int:
        return len(self.buffer)

    def finish(self, sealer: Sealer) -> tuple[FileId, memoryview, list[PackEntry]]:
        """Seal the header; return the pack id, a view of its bytes and its entries.

        The view shares the writer's buffer (no 16 MiB copy per pack): drop the writer
        once the bytes are stored.
        """
        header = encode_header(self.entries)
        sealed = sealer.seal(Kind.PACK_HEADER, ZERO_ID, codec.compress(header, 3))
        self.buffer += sealed
        self.buffer += _TRAILER.pack(len(sealed))
        data = memoryview(self.buffer)
        return file_id(data), data, self.entries

    def store(self, backend: Any, sealer: Sealer) -> tuple[FileId, list[PackEntry]]:
        """Store the pack under its name (atomic, durable); return its id and entries."""
        pack_id, data, entries = self.finish(sealer)
        backend.put(pack_name(pack_id), data)
        return pack_id, entries

    def abort(self) -> None:
        self.buffer = bytearray()


class UploadPackWriter:
    """A PackWriter that writes each blob to the backend as it comes (``begin_upload``).

    Holds no pack in memory: the backup process stays 16 MiB smaller, and no 16 MiB
    buffer is grown and copied per pack. The name (a hash of the bytes) is computed
    as they go and given at commit.
    """

    def __init__(self, begin: Callable[[], Any]) -> None:
        self._begin = begin
        self._upload: Any = None
        self._hasher = blake3.blake3()
        self.entries: list[PackEntry] = []
        self.size = 0

    def add(
        self,
        kind: Kind,
        blob_id: BlobId,
        envelope: bytes,
        raw_len: int,
        base: BlobId | None = None,
    ) -> None:
        if self._upload is None:
            self._upload = self._begin()  # no temp file for a pack that gets nothing
        self._upload.write(envelope)
        self._hasher.update(envelope)
        self.entries.append(PackEntry(kind, blob_id, self.size, len(envelope), raw_len, base))
        self.size += len(envelope)

    def store(self, backend: Any, sealer: Sealer) -> tuple[FileId, list[PackEntry]]:
        header = encode_header(self.entries)
        tail = sealer.seal(Kind.PACK_HEADER, ZERO_ID, codec.compress(header, 3))
        tail += _TRAILER.pack(len(tail))
        self._upload.write(tail)
        self._hasher.update(tail)
        pack_id = FileId(self._hasher.hexdigest())
        self._upload.commit(pack_name(pack_id))
        self._upload = None
        return pack_id, self.entries

    def abort(self) -> None:
        if self._upload is not None:
            self._upload.abort()
            self._upload = None


def open_blob(
    opener: Opener, kind: Kind, blob_id: bytes, pack: str, envelope: bytes, raw_len: int
) -> bytes:
    """Decrypt and decompress one blob read from a pack; damage names the blob and pack."""
    try:
        data = codec.decompress(opener.open(kind, blob_id, envelope))
    except IntegrityError as exc:
        raise IntegrityError(
            f"blob {blob_id.hex()[:16]} in pack {pack[:12]} is damaged: {exc}"
        ) from None
    if len(data) != raw_len:
        raise IntegrityError(f"blob {blob_id.hex()[:16]} in pack {pack[:12]} has the wrong length")
    return data


def encode_header(entries: list[PackEntry]) -> bytes:
    """A pack header's plaintext: version 1, or 2 when a DELTA or TREE_DELTA entry needs
    its base."""
    deltas = [e for e in entries if e.kind in DELTA_KINDS]
    if any(e.base is None for e in deltas):
        raise ValueError("a delta blob's pack entry must name its base")
    version = HEADER_VERSION_DELTAS if deltas else HEADER_VERSION
    parts = [_COUNT.pack(version, len(entries))]
    parts.extend(_ENTRY.pack(e.kind, e.id, e.stored_len, e.raw_len) for e in entries)
    if deltas:
        parts.append(_U32.pack(len(deltas)))
        parts.extend(_BASE.pack(e.id, e.base) for e in deltas)
    return b"".join(parts)


class HeaderColumns(NamedTuple):
    """A decoded pack header as parallel columns, entry ``i`` at index ``i`` of each:
    built by ``struct.iter_unpack`` with no object per entry (``check`` compares millions
    of index records against headers; a PackEntry each was 38% of its CPU time)."""

    kinds: bytes  # one byte per entry: a Kind allowed in a pack
    ids: tuple[bytes, ...]
    offsets: list[int]  # implicit in the layout: the sum of the stored lengths before
    stored: tuple[int, ...]
    raw: tuple[int, ...]
    bases: dict[bytes, BlobId]  # a DELTA or TREE_DELTA entry's base (version 2 only)
    body: bytes  # the entries as stored: count * (kind[1] | id[32] | stored_len[4] | raw_len[4])

    def end(self) -> int:
        """Where the last blob ends (0 for no entry): the header starts there."""
        return self.offsets[-1] + self.stored[-1] if self.ids else 0


def decode_header_columns(data: bytes) -> HeaderColumns:
    """A pack header's plaintext as ``HeaderColumns``. Raises FormatError, with the
    message ``decode_header`` gives for the same damage."""
    if len(data) < _COUNT.size:
        raise FormatError("pack header is too short")
    version, count = _COUNT.unpack_from(data, 0)
    if version not in (HEADER_VERSION, HEADER_VERSION_DELTAS):
        raise FormatError(f"unknown pack header version {version}")
    end = _COUNT.size + count * _ENTRY.size
    bases: dict[bytes, BlobId] = {}
    if version == HEADER_VERSION_DELTAS:
        if len(data) < end + _U32.size:
            raise FormatError("pack header length does not match its entry count")
        (n_bases,) = _U32.unpack_from(data, end)
        if len(data) != end + _U32.size + n_bases * _BASE.size:
            raise FormatError("pack header length does not match its entry count")
        for delta, base in _BASE.iter_unpack(data[end + _U32.size :]):
            bases[delta] = BlobId(base)
    elif len(data) != end:
        raise FormatError("pack header length does not match its entry count")
    body = data[_COUNT.size : end]
    kinds = bytes(body[:: _ENTRY.size])
    if kinds.translate(None, _PACK_KINDS_V2 if bases else _PACK_KINDS):
        _refuse_entries(body, bases)
    if not count:
        ids: tuple[bytes, ...] = ()
        stored: tuple[int, ...] = ()
        raw: tuple[int, ...] = ()
    else:
        _, ids, stored, raw = zip(*_ENTRY.iter_unpack(body), strict=True)
    offsets = list(accumulate(stored, initial=0))
    offsets.pop()
    if bases:
        deltas = set()
        for kind, blob_id in zip(kinds, ids, strict=True):
            if kind in DELTA_KINDS:
                base = bases.get(blob_id)
                if base is None or base == blob_id:
                    raise FormatError("pack header names a delta blob without a valid base")
                deltas.add(blob_id)
        if len(bases) != len(deltas):
            raise FormatError("pack header's delta bases do not match its delta blobs")
    return HeaderColumns(kinds, ids, offsets, stored, raw, bases, bytes(body))


def _refuse_entries(body: bytes, bases: dict[bytes, BlobId]) -> None:
    """Raise FormatError for the first entry that cannot be in this pack, checking entry
    after entry as readers always have (an unknown kind, a kind that is not a blob's, a
    delta without a valid base), so a damaged header gets the same message."""
    allowed = BLOB_KINDS if bases else (Kind.DATA, Kind.TREE)
    for value, blob_id, _, _ in _ENTRY.iter_unpack(body):
        try:
            kind = Kind(value)
        except ValueError:
            raise FormatError(f"unknown blob kind {value} in pack header") from None
        if kind not in allowed:
            raise FormatError(f"blob kind {kind} cannot be in a pack")
        if kind in DELTA_KINDS and bases.get(blob_id, blob_id) == blob_id:
            raise FormatError("pack header names a delta blob without a valid base")
    raise FormatError("pack header names a blob kind that cannot be in a pack")


def decode_header(data: bytes) -> list[PackEntry]:
    """A pack header's plaintext as one PackEntry per blob, in pack order. Raises
    FormatError. (``decode_header_columns`` gives the same without an object each.)"""
    return _entries(decode_header_columns(data))


def _entries(cols: HeaderColumns) -> list[PackEntry]:
    bases = cols.bases
    return [
        _entry(_KIND_OF[k], i, o, s, r, bases.get(i) if k in DELTA_KINDS else None)
        for k, i, o, s, r in zip(
            cols.kinds, cols.ids, cols.offsets, cols.stored, cols.raw, strict=True
        )
    ]


_KIND_OF = {int(k): k for k in Kind}
_new = object.__new__


def _entry(
    kind: Kind, blob_id: bytes, offset: int, stored: int, raw: int, base: bytes | None
) -> PackEntry:
    """A PackEntry without the frozen dataclass's ``__init__`` (one ``object.__setattr__``
    per field): what the field values are is checked by ``decode_header_columns``."""
    e = _new(PackEntry)
    e.__dict__.update(
        kind=kind, id=blob_id, offset=offset, stored_len=stored, raw_len=raw, base=base
    )
    return e


def parse_pack_tail(opener: Opener, tail: bytes, pack_size: int) -> tuple[int, list[PackEntry]]:
    """Given the last bytes of a pack, return (header_len, entries).

    ``tail`` must hold at least the trailer; raises FormatError(needs=...) style
    errors when the header does not fit, so the caller can read more.
    """
    header_len, cols = parse_pack_tail_columns(opener, tail, pack_size)
    return header_len, _entries(cols)


def parse_pack_tail_columns(
    opener: Opener, tail: bytes, pack_size: int
) -> tuple[int, HeaderColumns]:
    """``parse_pack_tail`` with the header as ``HeaderColumns`` (no object per entry)."""
    if pack_size < _TRAILER.size or len(tail) < _TRAILER.size:
        raise FormatError("pack is too short to hold a header")
    (header_len,) = _TRAILER.unpack_from(tail, len(tail) - _TRAILER.size)
    if header_len + _TRAILER.size > pack_size:
        raise FormatError("pack header length points before the start of the pack")
    if header_len > MAX_HEADER_LEN:
        # A planted trailer must not make a reader fetch gigabytes (repo_format.md "Limits").
        raise FormatError(f"pack header length {header_len} is over the {MAX_HEADER_LEN} limit")
    if header_len + _TRAILER.size > len(tail):
        raise _NeedMore(header_len + _TRAILER.size)
    sealed = tail[len(tail) - _TRAILER.size - header_len : len(tail) - _TRAILER.size]
    cols = decode_header_columns(codec.decompress(opener.open(Kind.PACK_HEADER, ZERO_ID, sealed)))
    blobs_end = pack_size - _TRAILER.size - header_len
    if cols.ids and cols.end() != blobs_end:
        raise FormatError("pack header does not account for every byte of the pack")
    return header_len, cols


#: A header decompresses to at most 64 MiB (repo/codec.py); stored, it adds the envelope.
MAX_HEADER_LEN = 64 * 1024 * 1024 + 64 * 1024


class _NeedMore(FormatError):
    def __init__(self, need: int) -> None:
        super().__init__(f"need {need} bytes")
        self.need = need


def read_header(backend_get, name: str, size: int, opener: Opener) -> list[PackEntry]:
    """Read and authenticate a pack's header with one (rarely two) ranged reads."""
    return _entries(read_header_columns(backend_get, name, size, opener))


def read_header_columns(backend_get, name: str, size: int, opener: Opener) -> HeaderColumns:
    """``read_header`` as ``HeaderColumns`` (no object per entry). Raises what
    ``backend_get`` raises, FormatError and IntegrityError."""
    want = min(size, 64 * 1024)
    tail = backend_get(name, size - want, want)
    try:
        return parse_pack_tail_columns(opener, tail, size)[1]
    except _NeedMore as more:
        tail = backend_get(name, size - more.need, more.need)
        return parse_pack_tail_columns(opener, tail, size)[1]


assert _ENTRY.size == 1 + ID_SIZE + 8
