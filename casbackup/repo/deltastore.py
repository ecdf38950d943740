"""Writing delta blobs (issue 16): the part of ``BlobStore`` that chooses a base for a new
chunk and stores the chunk as a DELTA of it (repo/delta.py holds the format itself).

A mixin, kept apart so that blobstore.py stays about storing and locating blobs: it uses
the store's ``locate``, ``load_blob``, ``save_blob``, ``store_sealed``, ``fetch_envelope``,
``sealer``, ``opener`` and ``_claimed`` (the ids of blobs in packs not yet stored).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import blake3
import zstandard

from casbackup.errors import CasError, IntegrityError, NotFound
from casbackup.repo import codec, delta
from casbackup.repo.basereads import PackWindows
from casbackup.repo.ids import BlobId, Kind
from casbackup.repo.pack import pack_name
from casbackup.store.base import is_remote

if TYPE_CHECKING:
    from casbackup.crypto.envelope import Opener, Sealer
    from casbackup.repo.config import RepoConfig
    from casbackup.repo.index import Location
    from casbackup.store.base import Backend


# ``_chain_intact``: links asked of one pack before it is read and hashed whole (from an
# object store, as soon as it was read from once: a request per link costs more there than
# the pack's bytes, which then answer every later read of it, ``PackWindows.whole``), and
# the two verdicts it then keeps for as long as this repository stays open (one command,
# one service job).
WHOLE_PACK_AFTER = 8
PACK_WHOLE = -1
PACK_BAD = -2


@dataclass(frozen=True)
class DeltaBase:
    """What ``BlobStore.delta_base_for`` chose: the base's id, its plaintext (None: store
    the new chunk full, a new chain), its depth, and the stored length of the full blob at
    the bottom of its chain (0 when not known). ``refuted``: the caller's ``known``
    plaintext was checked against the repository and the repository disagreed (or could
    not be read): the plaintext here, if any, is the repository's."""

    id: BlobId
    plain: bytes | None
    depth: int
    full_len: int
    refuted: bool = False


class DeltaWriting:
    """Storing DATA chunks as DELTA blobs; mixed into ``BlobStore``."""

    if TYPE_CHECKING:  # what the mixin uses of BlobStore
        backend: Backend
        config: RepoConfig
        writable: bool
        sealer: Sealer
        opener: Opener
        compression_level: int | None
        verify_before_write: bool
        _claimed: set[bytes]

        def require_writable(self) -> None: ...
        def locate(self, blob_id: bytes) -> Location: ...
        def has_blob(self, blob_id: bytes) -> bool: ...
        def blob_id(self, data: bytes | memoryview) -> BlobId: ...
        def load_blob(self, blob_id: BlobId, kind: Kind | None = None) -> bytes: ...
        def fetch_envelope(self, pack: str, offset: int, length: int) -> bytes: ...
        def save_blob(
            self, kind: Kind, data: bytes | memoryview, blob_id: BlobId | None = None
        ) -> tuple[BlobId, bool]: ...
        def store_sealed(
            self, kind: Kind, blob_id: BlobId, envelope: bytes, raw_len: int,
            base: BlobId | None = None,
        ) -> bool: ...  # fmt: skip

    @property
    def deltas_allowed(self) -> bool:
        """Whether this repository's format holds DELTA blobs (version 3 and later)."""
        return self.config.version >= 3 and self.writable

    @property
    def aligned_deltas_allowed(self) -> bool:
        """Whether this repository's format holds aligned DELTA payloads (payload version
        2, format version 6 and later: repo/aligned_delta.py)."""
        return self.config.version >= 6 and self.writable

    def delta_depth(self, blob_id: bytes) -> int | None:
        """How many deltas lie above the full blob ``blob_id`` resolves from (0: a full
        blob), or None when it is not stored as data."""
        try:
            chain = self._data_chain(blob_id)
        except (NotFound, IntegrityError):
            return None
        return None if chain is None else len(chain) - 1

    def _data_chain(self, blob_id: bytes) -> list[tuple[bytes, Location]] | None:
        """(id, location) from ``blob_id`` down to its full DATA blob (``delta.chain_of``),
        or None when it is not stored as data or is in a pack not yet stored (locating it
        would force a flush). Raises NotFound, IntegrityError (a chain too deep, a loop)."""
        if blob_id in self._claimed:
            return None
        loc = self.locate(blob_id)
        if loc.kind not in (Kind.DATA, Kind.DELTA):
            return None
        return delta.chain_of(self.locate, blob_id, loc)

    def delta_base_for(
        self, counterpart: BlobId, known: bytes | None = None, *, check: bool = False
    ) -> DeltaBase | None:
        """The base to store a new chunk against, whose counterpart (the same bytes in the
        parent snapshot's version of the stream) is ``counterpart``; None when the
        counterpart is not stored as data here (missing, damaged, in a pack not yet stored).

        The choice needs only the index (``delta.choose_base``): the counterpart itself
        while its chain leaves room, else the full blob at the bottom of its chain when a
        delta against it is likely worth it (so a full chain costs one more delta instead
        of a full copy), else no base (``DeltaBase.plain`` None: store the chunk full and
        start a new chain, without loading anything). The chosen base is resolved through
        its own chain and checked against its id (``resolve_chain``), except when it is the
        counterpart and the caller ``known`` its plaintext (read from the stream's local
        copy, authenticated as its id there: archiver/base_copies.py): then only every link
        of its chain here is checked (``_chain_intact``), unless the caller asks to
        ``check`` it, when it is resolved all the same and compared. ``refuted`` when the
        repository disagrees with ``known`` or cannot give it back."""
        try:
            chain = self._data_chain(counterpart)
            if chain is None:
                return None
            at = delta.choose_base([link.stored_len for _, link in chain])
            if at is None:
                return DeltaBase(chain[-1][0], None, len(chain) - 1, 0)
            full_len = chain[-1][1].stored_len
            if at == 0 and known is not None and not check:
                # The bytes come from the copy; that the repository can still give them
                # back is what every link's envelope authenticating says (each link was
                # checked against its base when written): a damaged or missing link is
                # noticed here, and the chunk stored whole, as when resolving the chain.
                if not self._chain_intact(chain):
                    return DeltaBase(counterpart, None, 0, 0, refuted=True)
                return DeltaBase(counterpart, known, len(chain) - 1, full_len)
            links = [
                (link_id, link.pack, link.offset, link.stored_len, link.raw_len)
                for link_id, link in chain[at:]
            ]
            plain = delta.resolve_chain(
                self._base_reads(), self.opener, links, hash_id=self.blob_id
            )
        except CasError:  # missing, damaged, unreadable: the chunk is stored full
            if check and known is not None:
                return DeltaBase(counterpart, None, 0, 0, refuted=True)
            return None
        refuted = check and known is not None and at == 0 and plain != known
        return DeltaBase(links[0][0], plain, len(links) - 1, full_len, refuted)

    def _chain_intact(self, chain: list[tuple[bytes, Location]]) -> bool:
        """Whether every link of ``chain`` (``_data_chain``) is stored as it was written:
        its envelope read and authenticated (nothing decompressed), or, from the
        ``WHOLE_PACK_AFTER``-th link asked of one pack on (from an object store, once the
        pack was read from at all; while this repository is open), the whole pack read
        once and hashed to its name (a pack's name is the BLAKE3 of its bytes:
        repo_format.md), which vouches for every blob in it at the cost of one read
        instead of a request and an AES-GCM open per link."""
        fetch = self._base_reads()
        packs: dict[str, int] = self.__dict__.setdefault("_packs_checked", {})
        windows = self._pack_windows_for_remote() if is_remote(self.backend) else None
        try:
            for link_id, link in chain:
                seen = packs.get(link.pack, 0)
                if seen == PACK_BAD:
                    return False
                if seen == PACK_WHOLE:
                    continue
                # From an object store, a pack already read from (this check's first link,
                # a spot check, a base resolved whole) is hashed whole now: its next read
                # would fetch a read-ahead window, and hashing the same bytes again.
                if seen + 1 >= WHOLE_PACK_AFTER or (
                    windows is not None and windows.seen(link.pack)
                ):
                    if windows is not None:
                        whole = windows.whole(link.pack)  # what was read ahead is used
                    else:
                        whole = self.backend.get(pack_name(link.pack))
                    good = blake3.blake3(whole).hexdigest() == link.pack
                    good = good and link.offset + link.stored_len <= len(whole)
                    packs[link.pack] = PACK_WHOLE if good else PACK_BAD
                    if not good:
                        return False
                    continue
                packs[link.pack] = seen + 1
                self.opener.open(link.kind, link_id, fetch(link.pack, link.offset, link.stored_len))
        except CasError:
            return False
        return True

    def _base_reads(self) -> Callable[[str, int, int], bytes]:
        """How ``delta_base_for`` reads links: from an object store, packs read ahead
        (repo/basereads.py: a night's bases go through the same few packs in order);
        from a folder, one ``pread`` each."""
        if not is_remote(self.backend):
            return self.fetch_envelope
        return self._pack_windows_for_remote().fetch

    def _pack_windows_for_remote(self) -> PackWindows:
        windows: PackWindows | None = getattr(self, "_pack_windows", None)
        if windows is None:
            windows = self._pack_windows = PackWindows(self.backend)
        return windows

    def save_data_delta(
        self,
        data: bytes | memoryview,
        base_id: BlobId,
        base: bytes | None = None,
        blob_id: BlobId | None = None,
        *,
        depth: int | None = None,
        full_len: int = 0,
    ) -> tuple[BlobId, bool]:
        """``save_blob(Kind.DATA, data)``, stored as a DELTA against ``base_id`` when that
        pays: the base is stored, its chain leaves room (``delta.MAX_DEPTH``) and the delta
        is at most ``delta.MAX_SHARE`` of the data compressed on its own. ``base``: the
        base's plaintext when the caller has it (else it is loaded); ``depth``: the base's
        depth when the caller resolved it (``delta_base_for``; else looked up);
        ``full_len``: the stored length of the full blob at the bottom of the base's chain,
        when known, which stands in for the data compressed on its own (else it is
        compressed to compare); ``blob_id``: ``data``'s id when known. Verified before it is
        written: the delta applied to the base must give ``data`` back. Returns (id, added)."""
        if blob_id is None:
            blob_id = self.blob_id(data)
        self.require_writable()
        if self.has_blob(blob_id):
            return blob_id, False
        if not self.deltas_allowed or base_id == blob_id:
            depth = None
        elif depth is None:
            depth = self.delta_depth(base_id)
        if depth is None or depth >= delta.MAX_DEPTH:
            return self.save_blob(Kind.DATA, data, blob_id)
        if base is None:
            base = self.load_blob(base_id, Kind.DATA)
            # load_blob authenticates a full blob but hashes only a resolved delta: a base
            # must be what its id says, or a delta built on it is lost with it (repair).
            if self.blob_id(base) != base_id:
                return self.save_blob(Kind.DATA, data, blob_id)
        level = self.compression_level if self.compression_level is not None else 3
        reference: bytes | zstandard.ZstdCompressionDict = base
        payload = None
        if self.aligned_deltas_allowed:
            payload = delta.encode_aligned(base_id, base, data, level)
        if payload is None:
            reference = delta.base_dictionary(base)  # built once for encoding and the check
            payload = delta.encode_delta(base_id, reference, data, level)
        if len(payload) > len(data) // 16:
            # Rarely worth it (the base shares little): compare with the chunk compressed
            # on its own, and keep the delta only when it is clearly smaller.
            alone = full_len or len(codec.compress(data, self.compression_level))
            if len(payload) > delta.MAX_SHARE * alone:
                return self.save_blob(Kind.DATA, data, blob_id)
        return blob_id, self._store_delta(blob_id, payload, data, base_id, reference)

    def save_encoded_delta(
        self,
        data: bytes,
        base_id: BlobId,
        base: bytes,
        frame: bytes | memoryview,
        blob_id: BlobId,
        *,
        depth: int | None,
        version: int = delta.DELTA_VERSION,
    ) -> tuple[BlobId, bool]:
        """``save_data_delta`` for a delta already encoded (``copy``: the source's zstd
        ``frame``, which turns ``base``, the plaintext of ``base_id``, into ``data``, whose
        id here is ``blob_id``; ``version``: its payload version), so nothing is compressed
        again, except an aligned frame (version 2) where this repository's format does not
        hold one: it is encoded again as patch-from. Stored as DATA instead when
        deltas are not allowed here or ``depth`` (the base's, None: unknown) leaves no room.
        Verified before it is written like every delta. Returns (id, added)."""
        self.require_writable()
        if self.has_blob(blob_id):
            return blob_id, False
        if not self.deltas_allowed or depth is None or depth >= delta.MAX_DEPTH:
            return self.save_blob(Kind.DATA, data, blob_id)
        if version == delta.ALIGNED_VERSION and not self.aligned_deltas_allowed:
            level = self.compression_level if self.compression_level is not None else 3
            payload = delta.encode_delta(base_id, base, data, level)
        else:
            payload = bytes((version,)) + bytes(base_id) + bytes(frame)
        return blob_id, self._store_delta(blob_id, payload, data, base_id, base)

    def _store_delta(
        self,
        blob_id: BlobId,
        payload: bytes,
        data: bytes | memoryview,
        base_id: BlobId,
        base: bytes | zstandard.ZstdCompressionDict,
    ) -> bool:
        """Seal a DELTA plaintext, check that it gives ``data`` back, store it."""
        envelope = self.sealer.seal(Kind.DELTA, blob_id, payload)
        if self.verify_before_write:
            # The decoded bytes are compared with the chunk itself rather than hashed: the
            # same guarantee (what is written decodes to the chunk whose id this is, with
            # the base every reader resolves, itself checked against its id on load) for a
            # memcmp instead of a keyed hash (~17 us a 100 kB chunk).
            plain = delta.apply_delta(
                delta.open_delta(self.opener, blob_id, envelope), base, len(data)
            )
            if plain != (data if isinstance(data, bytes) else bytes(data)):
                raise IntegrityError(
                    "a delta blob failed verification before it was written (memory or "
                    "software fault)"
                )
        return self.store_sealed(Kind.DELTA, blob_id, envelope, len(data), base_id)
