"""Delta blobs (format version 3): a data blob stored as a difference to another blob.

A DELTA blob's id is the keyed hash of the full plaintext it decodes to, exactly like a
DATA blob's: trees, dedup and every content list are unchanged, and a reader that
locates an id and finds kind DELTA resolves it here. Its envelope (kind DELTA, the id
as associated data, like every blob) holds::

    version[1] | base_id[32] | zstd frame

Version 1: the frame is the target compressed with zstd using the base's full plaintext as
a raw content dictionary ("patch-from"): whatever the target shares with the base costs a
few bytes. Version 2 (format version 6, DELTA only): the target is as long as its base
and the frame holds only the byte runs where they differ (repo/aligned_delta.py), far
cheaper to build for in-place changes; writers try ``encode_aligned`` first. The base is
itself DATA or DELTA; the chain from a delta down to its full (DATA) base is at most
``MAX_DEPTH`` deltas long, so reading any blob costs at most ``MAX_DEPTH + 1`` blob reads
and holds two plaintexts at a time. The index and pack
header name every delta's base too (repo/index.py, repo/pack.py), so prune and check
know the graph without decrypting anything.

TREE_DELTA blobs (format version 4) are the same for trees: a tree stored as the
difference to another tree (the parent snapshot's tree of the same folder), in the same
envelope layout, its chain of TREE_DELTA blobs ending in a TREE, at most ``MAX_DEPTH``
deltas deep. A chain never mixes the two: a DELTA's bases are DELTA or DATA, a
TREE_DELTA's are TREE_DELTA or TREE.

Pure functions only: readers with or without a Repository (restore's pack readers)
share ``resolve_chain``; prune closes its used set with ``close_over_spilled_bases``;
check follows each delta's bases through the index cache (verify/check.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import zstandard

from casbackup.crypto.envelope import Opener
from casbackup.errors import FormatError, IntegrityError
from casbackup.repo import aligned_delta, codec
from casbackup.repo.ids import DELTA_KINDS, DELTA_OF, FULL_KIND, ID_SIZE, BlobId, Kind

DELTA_VERSION = 1
ALIGNED_VERSION = aligned_delta.ALIGNED_VERSION
_PAYLOAD_VERSIONS = (DELTA_VERSION, ALIGNED_VERSION)
# An aligned delta is used only while at most this share of the chunk's bytes changed;
# beyond it the chunk was more likely rewritten or shifted than patched in place, and
# patch-from (which finds moved bytes) is used. On a 100 MB SQLite table, 1% of the rows
# rewritten in place at random changed ~0.4% of each chunk's bytes; 1% of the rows grown
# changed 5-45% (shifted cells): at 1/8 the chunks under it still became aligned deltas
# 12% larger than patch-from's, at 1/32 none did (bench/DUMPS.md "Aligned deltas").
ALIGNED_MAX_CHANGED = 1 / 32
# The longest chain of deltas above a full blob. Measured with bench/dump_dedup.py
# (repo_format.md "Delta blobs"): each level costs one more blob read and one more
# decompression on every read, while a full blob every N nights costs a whole chunk.
MAX_DEPTH = 8
# A delta is kept only when it is at most this share of the target compressed on its
# own: beyond it the target shares little with its base, and a full blob (which starts
# a new chain) costs little more.
MAX_SHARE = 0.5
# zstd's window must reach back over the whole base: bases are at most one chunk
# (16 MiB, the largest chunker max_size), so 2^25 covers base plus target.
_WINDOW_LOG = 25
_MAX_PLAIN = codec._MAX_DECOMPRESSED
# The largest base plus target a delta can span (zstd's window).
MAX_SPAN = 1 << _WINDOW_LOG
# ``encode_delta(wide=True)``'s largest match table: 2^23 entries (32 MiB); a 15 MB base
# (an 80,000-file folder's tree) needs 2^21, 5.7 MB 2^20, 1.9 MB 2^18.
WIDE_HASH_LOG = 23


def base_dictionary(base: bytes | memoryview) -> zstandard.ZstdCompressionDict:
    """``base`` as the raw-content dictionary deltas against it are built and applied with
    (made once when a writer does both: ~12 us a 100 kB base)."""
    return zstandard.ZstdCompressionDict(bytes(base), dict_type=zstandard.DICT_TYPE_RAWCONTENT)


def encode_delta(
    base_id: bytes,
    base: bytes | memoryview | zstandard.ZstdCompressionDict,
    target: bytes | memoryview,
    level: int,
    *,
    wide: bool = False,
) -> bytes:
    """The plaintext of a DELTA envelope turning ``base`` (its plaintext, or
    ``base_dictionary`` of it) into ``target`` (zstd ``level``).

    ``wide``: size zstd's match table to the base (trees, TREE_DELTA): an eighth as many
    entries as the base has bytes. At the level's own table (2^17 entries at level 3)
    zstd finds only part of a base of a few MB: the tree of a 10,000-file folder with
    one file changed (1.9 MB) gave a 370 kB delta at level 3 and 0.3-0.9 kB with 2^18 to
    2^23 entries; 2^19 is the one used (bench/DUMPS.md "Tree deltas")."""
    dictionary = base if isinstance(base, zstandard.ZstdCompressionDict) else base_dictionary(base)
    base_len = len(dictionary)

    def parameters(**tables: int) -> zstandard.ZstdCompressionParameters:
        return zstandard.ZstdCompressionParameters.from_level(
            level,
            source_size=len(target),
            window_log=_WINDOW_LOG,
            write_content_size=True,
            enable_ldm=base_len > 1 << 20,
            **tables,
        )

    if wide:
        params = parameters(hash_log=min(max(base_len.bit_length() - 2, 17), WIDE_HASH_LOG))
    else:
        params = parameters()
        # Data chunks too: the level's tables are sized for the target alone, and a base
        # over ~1 MiB outgrows them (a 2.3 MB base with a few rows changed gave a 114 kB
        # delta instead of 3 kB, an 8 MB one 644 kB instead of 11 kB; the files chunker's
        # chunks reach 8 MiB). One entry per 4-8 bytes of base keeps them (zstd 1.5.7, level
        # 3); up to 1 MiB (the dump chunker's largest) nothing changes.
        hash_log = max(base_len - 1, 1).bit_length() - 3
        if hash_log > params.hash_log:
            params = parameters(hash_log=hash_log, chain_log=max(params.chain_log, hash_log - 1))
    frame = zstandard.ZstdCompressor(dict_data=dictionary, compression_params=params).compress(
        target
    )
    return bytes((DELTA_VERSION,)) + bytes(base_id) + frame


def encode_aligned(
    base_id: bytes, base: bytes | memoryview, target: bytes | memoryview, level: int
) -> bytes | None:
    """The plaintext of an aligned DELTA envelope (payload version 2, format version 6)
    turning ``base`` into ``target``, or None when they differ in length or in more than
    ``ALIGNED_MAX_CHANGED`` of their bytes (then ``encode_delta``'s patch-from,
    which finds moved bytes, is the one to use)."""
    frame = aligned_delta.encode_frame(base, target, level, ALIGNED_MAX_CHANGED)
    return None if frame is None else bytes((ALIGNED_VERSION,)) + bytes(base_id) + frame


def payload_version(payload: bytes | memoryview) -> int:
    """A DELTA plaintext's version: 1 (patch-from) or 2 (aligned); FormatError else."""
    delta_base(payload)
    return payload[0]


def choose_base(stored_lens: Sequence[int]) -> int | None:
    """Where in a chain a new chunk's base is, the chain being its counterpart's in the
    parent snapshot (``stored_lens``: each link's stored length, the counterpart first and
    its full base last): the counterpart (0) while the chain is under ``MAX_DEPTH``; at
    the limit the full blob at the bottom (the last index: the new delta holds every change
    since it, one level deep) when the deltas above it, one more night added, come to at
    most ``MAX_SHARE`` of it; else None (a full blob, a new chain).

    Index-only, so a backup loads no base it will not use. Over 30 nights of 1% random
    changes to a 100 MB SQLite database the nights whose chains were full stored 3.2 MB
    each instead of an 11.3 MB full copy: 3.7x the first night instead of 6.1x
    (bench/DUMPS.md). Which base a writer picks is not format: readers follow whatever
    chain a delta names, at most ``MAX_DEPTH`` deep."""
    depth = len(stored_lens) - 1
    if depth < MAX_DEPTH:
        return 0
    deltas = sum(stored_lens[:-1])
    if deltas + deltas // max(depth, 1) <= MAX_SHARE * stored_lens[-1]:
        return depth
    return None


def delta_base(payload: bytes | memoryview) -> BlobId:
    """The base id a DELTA plaintext names (FormatError when it is malformed)."""
    if len(payload) < 1 + ID_SIZE or payload[0] not in _PAYLOAD_VERSIONS:
        raise FormatError("delta blob is malformed or of an unknown version")
    return BlobId(bytes(payload[1 : 1 + ID_SIZE]))


def apply_delta(
    payload: bytes | memoryview,
    base: bytes | zstandard.ZstdCompressionDict,
    raw_len: int,
    kind: Kind = Kind.DELTA,
) -> bytes:
    """The full plaintext: ``payload`` (the plaintext of a ``kind`` blob: DELTA or
    TREE_DELTA) applied to ``base`` (its plaintext, or ``base_dictionary`` of it).

    Raises FormatError (malformed, or an aligned TREE_DELTA), IntegrityError (wrong
    length)."""
    _check_version(payload, kind)
    if payload[0] == ALIGNED_VERSION:
        plain = base.as_bytes() if isinstance(base, zstandard.ZstdCompressionDict) else base
        return aligned_delta.apply_frame(memoryview(payload)[1 + ID_SIZE :], plain, raw_len)
    dictionary = base if isinstance(base, zstandard.ZstdCompressionDict) else base_dictionary(base)
    try:
        dec = zstandard.ZstdDecompressor(dict_data=dictionary, max_window_size=1 << _WINDOW_LOG)
    except zstandard.ZstdError as exc:
        raise FormatError(f"damaged delta payload: {exc}") from None  # a bad dictionary
    out = codec.decompress_frame(dec, memoryview(payload)[1 + ID_SIZE :], min(raw_len, _MAX_PLAIN))
    if len(out) != raw_len:
        raise IntegrityError("a delta blob decodes to the wrong length")
    return out


def _check_version(payload: bytes | memoryview, kind: Kind) -> None:
    """FormatError unless ``payload`` is a well-formed head of a ``kind`` blob: trees are
    never aligned (repo_format.md "Tree deltas": a TREE_DELTA's payload is version 1)."""
    delta_base(payload)
    if payload[0] == ALIGNED_VERSION and kind != Kind.DELTA:
        raise FormatError(f"a {kind.name} blob with a delta payload of version 2")


def open_delta(
    opener: Opener, blob_id: bytes, envelope: bytes | memoryview, kind: Kind = Kind.DELTA
) -> bytes:
    """Decrypt a DELTA (or ``kind`` TREE_DELTA) envelope into its plaintext
    (IntegrityError when it fails)."""
    return opener.open(kind, blob_id, envelope)


def resolve_chain(
    fetch_envelope: Callable[[str, int, int], bytes],
    opener: Opener,
    chain: Sequence[tuple[bytes, str, int, int, int]],
    *,
    hash_id: Callable[[bytes], bytes] | None = None,
    kind: Kind = Kind.DATA,
) -> bytes:
    """The full plaintext of ``chain[0]``, a blob of ``kind`` (DATA, or TREE for a tree's
    chain of TREE_DELTA blobs).

    ``chain``: (blob id, pack id, offset, stored length, raw length) of each blob from the
    wanted one down to its full base, each a delta of the next; ``fetch_envelope(pack,
    offset, length)`` returns stored bytes. At most ``MAX_DEPTH + 1`` long. The last is
    opened as ``kind`` and the others as its delta kind (DELTA, TREE_DELTA): the
    envelope's authentication binds the kind and id, so a chain that lies about them fails. Resolved bottom-up holding two
    plaintexts at a time; each delta's base id (inside its authenticated payload) must be
    the next link and each plaintext its raw length. With ``hash_id`` the result must hash
    to ``chain[0]``'s id; when it does not, the chain is resolved again checking every
    link's hash, so the error names the first damaged blob.
    Raises IntegrityError or FormatError naming the blob and pack that failed.
    """
    plain = _resolve(fetch_envelope, opener, chain, None, kind)
    if hash_id is not None and hash_id(plain) != chain[0][0]:
        # Only the result needs its hash: every link below it is authenticated and only
        # serves as the next one's dictionary, and a wrong link cannot decode to the right
        # result. Hashing each link (one keyed hash per level per chunk read) cost a
        # SQLite night's backup ~0.1 s of ~0.8 s at depth 8 (bench/DUMPS.md, "Backup CPU
        # night after night"); it is done only here, to name the damaged link.
        _resolve(fetch_envelope, opener, chain, hash_id, kind)
        _check(hash_id, chain[0][0], plain)
    return plain


def _resolve(
    fetch_envelope: Callable[[str, int, int], bytes],
    opener: Opener,
    chain: Sequence[tuple[bytes, str, int, int, int]],
    hash_id: Callable[[bytes], bytes] | None,
    kind: Kind = Kind.DATA,
) -> bytes:
    """``resolve_chain`` without its final hash check; with ``hash_id`` every link's."""
    if not chain or len(chain) > MAX_DEPTH + 1:
        raise IntegrityError(f"a delta chain of {len(chain)} blobs is over the depth limit")
    from casbackup.repo.pack import open_blob  # pack imports nothing of ours: no cycle

    bottom_id, pack, offset, stored_len, raw_len = chain[-1]
    plain = open_blob(
        opener, kind, bottom_id, pack, fetch_envelope(pack, offset, stored_len), raw_len
    )
    delta_kind = DELTA_OF[kind]
    _check(hash_id, bottom_id, plain)
    below = bottom_id
    # Aligned deltas (version 2) are applied in place in one buffer, level after level;
    # patch-from (version 1) needs its base as bytes for the zstd dictionary.
    buf: bytes | bytearray = plain
    for blob_id, pack, offset, stored_len, raw_len in reversed(chain[:-1]):
        try:
            payload = open_delta(
                opener, blob_id, fetch_envelope(pack, offset, stored_len), delta_kind
            )
            if delta_base(payload) != below:
                raise IntegrityError("its base is not the next blob of its chain")
            _check_version(payload, delta_kind)
            if payload[0] == ALIGNED_VERSION:
                if not isinstance(buf, bytearray):
                    buf = bytearray(buf)
                aligned_delta.apply_frame_into(memoryview(payload)[1 + ID_SIZE :], buf, raw_len)
            else:
                buf = apply_delta(
                    payload, bytes(buf) if isinstance(buf, bytearray) else buf, raw_len
                )
        except (IntegrityError, FormatError) as exc:
            raise IntegrityError(
                f"blob {blob_id.hex()[:16]} in pack {pack[:12]} is damaged: {exc}"
            ) from None
        _check(hash_id, blob_id, buf)
        below = blob_id
    return bytes(buf) if isinstance(buf, bytearray) else buf


def located_chain(
    locate: Callable[[bytes], Any], blob_id: bytes, loc: Any
) -> list[tuple[bytes, str, int, int, int]]:
    """``chain_of`` in the shape ``resolve_chain`` takes (and restore's writers carry).
    Each link's base must be the one its index entry names (IntegrityError)."""
    return [
        (link_id, link.pack, link.offset, link.stored_len, link.raw_len)
        for link_id, link in chain_of(locate, blob_id, loc)
    ]


def _check(
    hash_id: Callable[[bytes], bytes] | None, blob_id: bytes, plain: bytes | bytearray
) -> None:
    if hash_id is not None and hash_id(plain) != blob_id:
        raise IntegrityError(f"blob {blob_id.hex()[:16]} does not match its id")


def chain_of(locate: Callable[[bytes], Any], blob_id: bytes, loc: Any) -> list[tuple[bytes, Any]]:
    """(id, location) from ``blob_id`` down to its full base, following each ``base``.

    ``locate(id)`` returns a location or raises NotFound. IntegrityError when the chain
    is longer than ``MAX_DEPTH`` (a hostile or damaged index could even make a loop),
    mixes kinds or does not end in the full kind of its first delta (DATA below DELTA,
    TREE below TREE_DELTA). A full blob's chain is itself alone."""
    chain = [(blob_id, loc)]
    top = loc.kind
    while loc.kind in DELTA_KINDS:
        if loc.kind != top:
            raise IntegrityError(f"blob {blob_id.hex()[:16]}: its delta chain mixes kinds")
        if len(chain) > MAX_DEPTH:
            raise IntegrityError(
                f"blob {blob_id.hex()[:16]}: its delta chain is longer than {MAX_DEPTH}"
            )
        base = loc.base
        if base is None:
            raise IntegrityError(f"delta blob {chain[-1][0].hex()[:16]} names no base")
        loc = locate(base)
        chain.append((base, loc))
    if loc.kind != FULL_KIND.get(top, top):
        raise IntegrityError(
            f"blob {blob_id.hex()[:16]}: its delta chain ends in a {loc.kind.name}"
        )
    return chain


def close_over_spilled_bases(
    used_bucket: Callable[[int], frozenset[bytes]],
    add: Callable[[bytes], None],
    pairs: Callable[[int], Iterable[tuple[bytes, bytes]]],
    buckets: int,
    scratch: Callable[[], Any],
) -> None:
    """Close a used set over bases, for ``prune``: every base of every used delta
    (transitively) is added with ``add``.

    The set and the {delta: base} pairs are both split into ``buckets`` by the id's first
    byte (``used_bucket(b)``: the used ids of bucket b; ``pairs(b)``: the pairs whose delta
    is in bucket b), so memory holds one bucket at a time. Each round collects the bases
    of used deltas into ``scratch()`` (``add(bucket, id)``, ``records(bucket)``, ``close()``,
    like prune's RecordSpill), then adds those not yet used; a chain of n deltas takes n
    rounds. A loop in a hostile index ends too (nothing new is added). Raises
    IntegrityError if chains are still growing after ``MAX_DEPTH + 1`` rounds."""
    for _ in range(MAX_DEPTH + 2):
        found = scratch()
        try:
            for b in range(buckets):
                used = used_bucket(b)
                for blob_id, base in pairs(b):
                    if blob_id in used:
                        found.add(base[0], base)
            new = 0
            for b in range(buckets):
                used = used_bucket(b)
                for base in set(found.records(b)):
                    if base not in used:
                        add(bytes(base))
                        new += 1
        finally:
            found.close()
        if not new:
            return
    raise IntegrityError(f"delta chains in the index are longer than {MAX_DEPTH}")
