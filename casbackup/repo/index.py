"""Index files (the repository's authoritative index) and their local LMDB cache.

An index file ``index/<file id>`` is an envelope (kind INDEX, zero object id)
whose plaintext, after the codec byte, is::

    version[1]=1
    n_supersedes[4] | n_supersedes * file_id[32]          (index files this one replaces)
    n_packs[4] | n_packs * (pack_id[32] | n_blobs[4] | n_blobs * blob)
    blob := kind[1] | id[32] | offset[4] | stored_len[4] | raw_len[4]

Version 2 (written only when the file names a DELTA blob, format version 3) is the same
followed by the base of every DELTA (and, format 4, TREE_DELTA) blob the file names, in
record order::

    n_bases[4] | n_bases * (delta_id[32] | base_id[32])

All integers big-endian. Index files are written only after every pack they name
is durable. Readers ignore an index file named in another present file's
supersedes list (prune writes the replacement first, then deletes the old ones).

The local LMDB cache of these files (blob id -> location) is repo/indexcache.py.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from casbackup.errors import FormatError
from casbackup.repo.ids import DELTA_KINDS, BlobId, FileId, Kind

INDEX_VERSION = 1
INDEX_VERSION_DELTAS = 2  # adds the bases section (repo_format.md "Delta blobs")
_U32 = struct.Struct(">I")
_BLOB = struct.Struct(">B32sIII")  # 45 bytes
_BASE = struct.Struct(">32s32s")  # delta id, base id
RECORD_SIZE = _BLOB.size  # one blob's record in an index file (``iter_records``)
# pack[32] offset stored raw kind = 45 bytes; a DELTA's entry is followed by its base[32].
_LOCATION = struct.Struct(">32sIIIB")
LOCATION_SIZE = _LOCATION.size  # a location's cache value, without a delta's base
_PACK_KINDS = bytes((Kind.DATA, Kind.TREE))
_PACK_KINDS_V2 = bytes((Kind.DATA, Kind.TREE, Kind.DELTA, Kind.TREE_DELTA))


_new = object.__new__
_KIND_OF = {int(k): k for k in Kind}
# Pack id (32 raw bytes) -> its name (hex). One str object per pack instead of one per
# chunk looked up: less to build, and the restore's jobs, which name a chunk's pack, then
# pickle each name once per batch (pickle memoizes an object it has seen). Cleared when
# full, so a repository with more packs than this costs a rebuild now and then, never
# unbounded memory (about 200 bytes an entry).
_PACK_NAMES: dict[bytes, FileId] = {}
_PACK_NAMES_MAX = 1 << 16


def _pack_name(pack: bytes) -> FileId:
    if len(_PACK_NAMES) >= _PACK_NAMES_MAX:
        _PACK_NAMES.clear()
    name = _PACK_NAMES[pack] = FileId(pack.hex())
    return name


def chunk_location(blob_id: bytes, value: bytes) -> tuple[tuple[bytes, FileId, int, int, int], int]:
    """((blob id, pack, offset, stored_len, raw_len), kind as stored) from a cache value
    (``IndexCache.get_many_values``), without a Location: a restore locates every chunk
    it writes, and a Location is an object and its dict (``Location.decode`` builds the
    rest, a delta's base, when the kind says it is needed)."""
    pack, offset, stored, raw, kind = _LOCATION.unpack_from(value)
    name = _PACK_NAMES.get(pack)
    if name is None:
        name = _pack_name(pack)
    return (blob_id, name, offset, stored, raw), kind


@dataclass(frozen=True)
class Location:
    pack: FileId
    offset: int
    stored_len: int
    raw_len: int  # a DELTA's raw_len is the length of the full plaintext it decodes to
    kind: Kind
    base: BlobId | None = None  # the blob a DELTA is a difference to (None otherwise)

    def encode(self) -> bytes:
        head = _LOCATION.pack(
            bytes.fromhex(self.pack), self.offset, self.stored_len, self.raw_len, self.kind
        )
        return head if self.base is None else head + self.base

    @classmethod
    def decode(cls, data: bytes) -> Location:
        """A location from its cache value (``encode``). Raises FormatError for a delta
        without its base, ValueError for an unknown kind.

        Built without the dataclass's ``__init__`` (a frozen one sets each field through
        ``object.__setattr__``), the kind from a dict rather than an ``Enum`` call, and the
        pack's name shared by every blob of the pack (``_pack_name``): a restore and
        ``check`` decode one location per chunk (2.9 us each before, 1.7 us now, on the bench machine)."""
        pack, offset, stored, raw, kind = _LOCATION.unpack_from(data)
        base = None
        if kind in DELTA_KINDS:
            if len(data) != _LOCATION.size + 32:
                raise FormatError("index cache entry of a delta blob has no base")
            base = BlobId(bytes(data[_LOCATION.size :]))
        name = _PACK_NAMES.get(pack)
        if name is None:
            name = _pack_name(pack)
        blob_kind = _KIND_OF.get(kind)
        if blob_kind is None:
            blob_kind = Kind(kind)  # ValueError, as the Enum says it
        loc = _new(cls)
        loc.__dict__.update(
            pack=name, offset=offset, stored_len=stored, raw_len=raw, kind=blob_kind, base=base
        )
        return loc


@dataclass(frozen=True)
class IndexFile:
    supersedes: tuple[FileId, ...]
    packs: dict[FileId, list[tuple[BlobId, Location]]]

    def blobs(self) -> Iterator[tuple[BlobId, Location]]:
        for entries in self.packs.values():
            yield from entries


def encode_index(
    packs: dict[FileId, list[tuple[BlobId, Location]]], supersedes: Iterable[FileId] = ()
) -> bytes:
    """An index file's plaintext: version 1, or version 2 when a DELTA blob is named."""
    sup = list(supersedes)
    bases = [
        (blob_id, loc.base)
        for entries in packs.values()
        for blob_id, loc in entries
        if loc.kind in DELTA_KINDS
    ]
    if any(base is None for _, base in bases):
        raise ValueError("a delta blob's location must name its base")
    version = INDEX_VERSION_DELTAS if bases else INDEX_VERSION
    parts = [bytes((version,)), _U32.pack(len(sup))]
    parts.extend(bytes.fromhex(s) for s in sup)
    parts.append(_U32.pack(len(packs)))
    for pack_id, entries in packs.items():
        parts.append(bytes.fromhex(pack_id))
        parts.append(_U32.pack(len(entries)))
        parts.extend(
            _BLOB.pack(loc.kind, blob_id, loc.offset, loc.stored_len, loc.raw_len)
            for blob_id, loc in entries
        )
    if bases:
        parts.append(_U32.pack(len(bases)))
        parts.extend(_BASE.pack(d, b) for d, b in bases)
    return b"".join(parts)


def encode_record(blob_id: bytes, loc: Location) -> bytes:
    """One blob's record as an index file stores it (``iter_records`` reads it back)."""
    return _BLOB.pack(loc.kind, blob_id, loc.offset, loc.stored_len, loc.raw_len)


def encode_index_records(
    sections: Iterable[tuple[FileId, bytes]],
    supersedes: Iterable[FileId] = (),
    bases: dict[bytes, bytes] | None = None,
) -> bytes:
    """``encode_index`` from (pack, records) as ``decode_index_records`` gives them: no
    object per blob. Each ``records`` is a whole number of records (ValueError if not).
    ``bases``: {delta id: base id} holding (at least) every DELTA record's base; the file
    is version 2 when there is one (ValueError when a DELTA record's base is missing)."""
    sup = list(supersedes)
    secs = list(sections)
    pairs: dict[bytes, bytes] = {}
    for _, records in secs:
        for kind, blob_id, *_ in _BLOB.iter_unpack(
            bytes(records[: len(records) - len(records) % _BLOB.size])
        ):
            if kind in DELTA_KINDS:
                base = (bases or {}).get(blob_id)
                if base is None:
                    raise ValueError("a delta blob's record needs its base")
                pairs[blob_id] = base
    version = INDEX_VERSION_DELTAS if pairs else INDEX_VERSION
    parts = [bytes((version,)), _U32.pack(len(sup))]
    parts.extend(bytes.fromhex(s) for s in sup)
    parts.append(_U32.pack(len(secs)))
    for pack_id, records in secs:
        if len(records) % _BLOB.size:
            raise ValueError("index records must be whole records")
        parts.append(bytes.fromhex(pack_id))
        parts.append(_U32.pack(len(records) // _BLOB.size))
        parts.append(bytes(records))
    if pairs:
        parts.append(_U32.pack(len(pairs)))
        parts.extend(_BASE.pack(d, b) for d, b in pairs.items())
    return b"".join(parts)


def decode_supersedes(data: bytes) -> tuple[FileId, ...]:
    """Only the supersedes list: lets readers skip replaced files without parsing them."""
    try:
        if data[0] not in (INDEX_VERSION, INDEX_VERSION_DELTAS):
            raise FormatError(f"unknown index version {data[0]}")
        (n_sup,) = _U32.unpack_from(data, 1)
    except (IndexError, struct.error):
        raise FormatError("index file is truncated") from None
    if 5 + 32 * n_sup > len(data):
        raise FormatError("index file is truncated")
    return tuple(FileId(data[5 + 32 * i : 5 + 32 * (i + 1)].hex()) for i in range(n_sup))


def decode_index(data: bytes) -> IndexFile:
    supersedes, sections, bases = _decode_sections(data)
    packs: dict[FileId, list[tuple[BlobId, Location]]] = {}
    for pack, records in sections:
        entries = packs.setdefault(pack, [])
        for kind, blob_id, offset, stored, raw in _BLOB.iter_unpack(records):
            base = bases.get(blob_id) if kind in DELTA_KINDS else None
            entries.append((BlobId(blob_id), Location(pack, offset, stored, raw, Kind(kind), base)))
    return IndexFile(supersedes, packs)


def decode_index_records(data: bytes) -> tuple[tuple[FileId, ...], list[tuple[FileId, bytes]]]:
    """``decode_index`` without one object per blob: (supersedes, [(pack, records)]).

    ``records`` are the pack's blobs exactly as stored (see ``iter_records``). ``check``
    holds every pack's entries at once; as bytes they take 45 bytes a blob instead of
    about 300 as tuples of Locations.
    """
    supersedes, sections, _ = _decode_sections(data)
    return supersedes, sections


def decode_index_with_bases(
    data: bytes,
) -> tuple[tuple[FileId, ...], list[tuple[FileId, bytes]], dict[BlobId, BlobId]]:
    """``decode_index_records`` plus {delta id: base id} of every DELTA blob it names
    (empty for a version 1 file). Raises FormatError."""
    return _decode_sections(data)


def iter_records(records: bytes) -> Iterator[tuple[int, bytes, int, int, int]]:
    """(kind, blob id, offset, stored_len, raw_len) of each record of ``decode_index_records``."""
    return _BLOB.iter_unpack(records)


def _decode_sections(
    data: bytes,
) -> tuple[tuple[FileId, ...], list[tuple[FileId, bytes]], dict[BlobId, BlobId]]:
    """Check an index file's structure; return (supersedes, [(pack, its blob records)],
    {delta id: base id})."""
    bases: dict[BlobId, BlobId] = {}
    try:
        version = data[0]
        if version not in (INDEX_VERSION, INDEX_VERSION_DELTAS):
            raise FormatError(f"unknown index version {version}")
        pos = 1
        (n_sup,) = _U32.unpack_from(data, pos)
        pos += 4
        if pos + 32 * n_sup > len(data):
            raise FormatError("index file is truncated")
        supersedes = tuple(
            FileId(data[pos + 32 * i : pos + 32 * (i + 1)].hex()) for i in range(n_sup)
        )
        pos += 32 * n_sup
        (n_packs,) = _U32.unpack_from(data, pos)
        pos += 4
        sections: list[tuple[FileId, bytes]] = []
        for _ in range(n_packs):
            if pos + 36 > len(data):
                raise FormatError("index file is truncated")
            pack = FileId(data[pos : pos + 32].hex())
            (n_blobs,) = _U32.unpack_from(data, pos + 32)
            pos += 36
            if pos + n_blobs * _BLOB.size > len(data):
                raise FormatError("index file is truncated")
            sections.append((pack, data[pos : pos + n_blobs * _BLOB.size]))
            pos += n_blobs * _BLOB.size
        if version == INDEX_VERSION_DELTAS:
            (n_bases,) = _U32.unpack_from(data, pos)
            pos += 4
            if pos + n_bases * _BASE.size != len(data):
                raise FormatError("index file's delta bases are truncated or have trailing bytes")
            for delta, base in _BASE.iter_unpack(data[pos:]):
                bases[BlobId(delta)] = BlobId(base)
            pos = len(data)
        if pos != len(data):
            raise FormatError("index file has trailing bytes")
    except (IndexError, struct.error, ValueError) as exc:
        if isinstance(exc, FormatError):
            raise
        raise FormatError(f"index file is malformed: {exc}") from None
    allowed = _PACK_KINDS_V2 if version == INDEX_VERSION_DELTAS else _PACK_KINDS
    deltas: set[bytes] = set()
    for _, records in sections:
        # Every record's first byte is its kind: only DATA and TREE (and, in version 2,
        # DELTA and TREE_DELTA) may be in a pack.
        if records[:: _BLOB.size].translate(None, allowed):
            raise FormatError("index names a blob of a kind that cannot be in a pack")
        if version == INDEX_VERSION_DELTAS:
            for kind, blob_id, *_ in _BLOB.iter_unpack(records):
                if kind in DELTA_KINDS:
                    base = bases.get(blob_id)
                    if base is None or base == blob_id:
                        raise FormatError("index names a delta blob without a valid base")
                    deltas.add(blob_id)
    if len(deltas) != len(bases):
        raise FormatError("index file's delta bases do not match its delta blobs")
    return supersedes, sections, bases
