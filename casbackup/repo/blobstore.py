"""Blob storage below the repository: envelopes, the index, packs and their uploads.

``BlobStore`` holds the state every repository operation shares (backend, keys, the open
packs, blobs stored but not yet indexed, the LMDB index cache) and implements the first two
steps of the write order (repository.py): blobs go into packs that are stored before an
index file names them. ``SnapshotStore`` (snapshotstore.py) and ``Repository``
(repository.py) build on it.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import blake3

from casbackup.crypto.envelope import ZERO_ID, Opener, Sealer
from casbackup.crypto.keys import MasterKey
from casbackup.errors import CasError, IntegrityError, MigrationRequired, NotFound, StorageError
from casbackup.repo import codec, delta
from casbackup.repo.config import FORMAT_VERSION, RepoConfig
from casbackup.repo.deltastore import DeltaWriting
from casbackup.repo.ids import FULL_KIND, BlobId, FileId, Kind, check_name, file_id, pack_group
from casbackup.repo.index import (
    Location,
    decode_index,
    decode_index_records,
    decode_index_with_bases,
    decode_supersedes,
    encode_index,
)
from casbackup.repo.indexcache import IndexCache, cache_root
from casbackup.repo.indexopen import open_index_cache
from casbackup.repo.localstate import LocalState
from casbackup.repo.pack import PackWriter, UploadPackWriter, open_blob, pack_name
from casbackup.repo.treecache import TreeCache, cap_bytes
from casbackup.repo.uploader import PackUploader
from casbackup.store import stopping
from casbackup.store.base import Backend, is_remote

if TYPE_CHECKING:
    from casbackup.repo.lock import Lock

# Flush a partial index during long backups so an interrupted run keeps its work (restic: 50k/10 min).
INDEX_FLUSH_BLOBS = 50_000
INDEX_FLUSH_SECONDS = 60
RESYNC_SECONDS = 5.0  # a read that finds a pack missing syncs the index at most this often
INDEX_FLUSH_PACKS = 8  # also every 8 packs (128 MiB by default): a kill loses little work


class BlobStore(DeltaWriting):
    """Encrypted objects, the index and blobs in packs (thread-safe where each method says).

    Not used on its own: ``Repository`` (repository.py) is the class callers open."""

    def __init__(
        self,
        backend: Backend,
        config: RepoConfig,
        key: MasterKey,
        key_name: str,
        state: LocalState | None = None,
    ) -> None:
        self.backend = backend
        self.config = config
        self.key = key
        self.key_name = key_name
        # This client's record of the repository (rollback and forgotten snapshots).
        self.state = state if state is not None else LocalState(config.id)
        # Loud warnings for the user (a rollback, a re-appearing snapshot); the CLI prints
        # them once the command ends. Never fatal on their own.
        self.alerts: list[str] = []
        # Locks taken through this handle (lock.py adds and removes them): each is
        # confirmed still held before an index file or snapshot is committed.
        self.held_locks: list[Lock] = []
        # identity -> records an interrupted tag change left over, as the last
        # ``list_snapshots`` saw them (snapshotstore.py ``superseded_records``).
        self._superseded: dict[str, list[str]] | None = None
        # A version 1 config is not authenticated: read, never write (MigrationRequired).
        self.writable = config.authenticated
        self._id_key = key.chunk_id_key
        self.sealer = Sealer(key.encryption_root)
        self.opener = Opener(key.encryption_root)
        self.compression_level: int | None = (
            config.compression_level if config.compression == "zstd" else None
        )
        self.verify_before_write = True
        self._lock = threading.Lock()
        self._index_lock = threading.Lock()
        # Trees and data go to separate packs (as restic does): a backup compared with its
        # parent reads every tree of it, and trees kept together cost a few sequential
        # reads instead of one random read per folder across all the data packs.
        self._packers = {Kind.DATA: self._new_packer(), Kind.TREE: self._new_packer()}
        self._claimed: set[bytes] = set()  # in the open pack or a pack being written
        self._pending: dict[bytes, Location] = {}  # in stored packs, not yet in an index file
        self._pending_packs: dict[FileId, list[tuple[BlobId, Location]]] = {}
        self._last_index_flush = time.monotonic()
        self._last_resync = -float("inf")  # _resync_after_missing_pack
        self._resyncs = 0  # how many of those changed the index
        self._cache: IndexCache | None = None
        self._cache_temp: str | None = None  # the folder of a temporary one (_temporary_cache)
        self._cache_lock = threading.Lock()
        # Remote stores: full packs are stored in the background (repo/uploader.py).
        self._uploader = PackUploader(self._write_pack) if is_remote(backend) else None
        self._tree_cache: TreeCache | None = None
        if is_remote(backend) and cap_bytes() > 0:
            # A tree read from a remote store is a request; from this cache, a file read.
            self._tree_cache = TreeCache(
                os.path.join(cache_root(), config.id, "trees"),
                self.sealer, self.opener, self.blob_id, cap_bytes(),
            )  # fmt: skip
        self.stats_blobs_added = 0
        self.stats_bytes_added = 0
        self.stats_bytes_stored = 0
        self.stats_deltas_added = 0  # of the blobs added, DELTA blobs

    def require_writable(self) -> None:
        """MigrationRequired unless this program may write the repository's format."""
        if not self.writable:
            raise MigrationRequired(
                f"repository format version {self.config.version} is read-only for this "
                f"casbackup (it writes version {FORMAT_VERSION}); run 'casbackup migrate' "
                "to upgrade it (older casbackup versions cannot open it afterwards)"
            )

    def confirm_locks(self, *, renew: bool = True) -> None:
        """Raise LockError when a lock this handle holds was taken away while it was held
        (deemed stale by another client, which may have pruned meanwhile): what this run
        would commit may name data that is gone (lock.py ``Lock.confirm``; ``renew``: and
        renew them). Without a lock (tests, a command that reads) nothing is checked."""
        for lock in list(self.held_locks):
            lock.confirm(renew=renew)

    def close(self) -> None:
        # A lock still held: its taker never got it back (a stop that landed as acquire()
        # returned, before the caller's try: finally) and would leave its file behind.
        for lock in list(self.held_locks):
            lock.release()
        if self._uploader is not None:
            self._uploader.close()
        with self._lock:
            for packer in self._packers.values():
                packer.abort()  # blobs never flushed: drop the pack's temp file
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        if self._cache_temp is not None:
            shutil.rmtree(self._cache_temp, ignore_errors=True)
            self._cache_temp = None
        self.backend.close()

    # ----------------------------------------------------------------- envelopes
    def put_encrypted(
        self, name: str, kind: Kind, plaintext: bytes, *, create_only: bool = False
    ) -> None:
        """Seal and store ``plaintext`` under ``name``. ``create_only`` (locks): where the
        backend has create-only writes (S3's If-None-Match), an existing object is never
        replaced and StorageError says so."""
        sealed = self.sealer.seal(kind, ZERO_ID, codec.compress(plaintext, 3))
        create = getattr(self.backend, "put_new", None) if create_only else None
        if create is None:
            self.backend.put(name, sealed)
        elif not create(name, sealed):
            raise StorageError(f"writing {name}: an object with this name already exists")

    def get_encrypted(self, name: str, kind: Kind) -> bytes:
        """Load and decrypt one object; a hash-named one must match its name (IntegrityError)."""
        data = self.backend.get(name)
        check_name(name, data)
        try:
            return codec.decompress(self.opener.open(kind, ZERO_ID, data))
        except IntegrityError as exc:
            raise IntegrityError(f"{name}: {exc}") from None

    def save_file_object(self, directory: str, kind: Kind, plaintext: bytes) -> FileId:
        """Store an encrypted object under ``directory/<file id>`` and return the id."""
        self.require_writable()
        sealed = self.sealer.seal(kind, ZERO_ID, codec.compress(plaintext, 3))
        fid = file_id(sealed)
        self.backend.put(f"{directory}/{fid}", sealed)
        return fid

    # ----------------------------------------------------------------- index
    @property
    def cache(self) -> IndexCache:
        if self._cache is None:
            with self._cache_lock:  # LMDB must not be opened twice in one process
                if self._cache is None:
                    self._open_cache()
        assert self._cache is not None
        return self._cache

    def _open_cache(self) -> None:
        path = os.path.join(cache_root(), self.config.id, "index")
        self._cache, self._cache_temp = open_index_cache(path, self.config.id)
        self.sync_index()

    def index_files(self) -> list[FileId]:
        return sorted(FileId(name.rsplit("/", 1)[1]) for name, _ in self.backend.list("index/"))

    def load_index_file(self, fid: FileId):  # -> IndexFile
        data = self.get_encrypted(f"index/{fid}", Kind.INDEX)
        return decode_index(data)

    def load_index_records(
        self, fid: FileId
    ) -> tuple[tuple[FileId, ...], list[tuple[FileId, bytes]]]:
        """An index file as (supersedes, [(pack, records)]): see ``decode_index_records``."""
        return decode_index_records(self.get_encrypted(f"index/{fid}", Kind.INDEX))

    def load_index_with_bases(
        self, fid: FileId
    ) -> tuple[tuple[FileId, ...], list[tuple[FileId, bytes]], dict[BlobId, BlobId]]:
        """``load_index_records`` plus {delta id: base id} (``decode_index_with_bases``)."""
        return decode_index_with_bases(self.get_encrypted(f"index/{fid}", Kind.INDEX))

    def sync_index(self, *, rebuild: bool = False) -> list[str]:
        """Bring the LMDB cache in line with the repository's index files.

        Returns warnings (damaged index files that were skipped).
        """
        cache = self._cache if self._cache is not None else self.cache
        present = set(self.index_files())
        known = cache.known_files()
        if rebuild or not known <= present:
            cache.clear()  # an index file vanished (prune): rebuild rather than guess
            known = set()
        missing = present - known
        if not missing:
            return []
        warnings: list[str] = []
        # Two passes keep memory bounded by one index file: first learn which files are
        # superseded (a replacement was written but the old one not yet deleted), then
        # load the others one at a time.
        candidates = sorted(present if not known else missing)
        superseded: set[FileId] = set()
        readable: list[FileId] = []
        for fid in candidates:
            try:
                superseded.update(decode_supersedes(self.get_encrypted(f"index/{fid}", Kind.INDEX)))
            except CasError as exc:
                warnings.append(
                    f"index file {fid[:12]} is unreadable ({exc}); run 'casbackup repair index'"
                )
                continue
            readable.append(fid)
        if known and superseded & known:
            # A new index file replaces ones the cache holds (prune, repair): their entries
            # may name packs that are about to go, so start again from the present files.
            return self.sync_index(rebuild=True)
        packs = _PackCheck(self.backend)
        if not known:
            # From nothing: sorted and appended (IndexCache.rebuild), linear in the entries.
            cache.rebuild(self._readable_index_files(readable, superseded, packs, warnings))
            return warnings
        for fid in readable:
            if fid in superseded:
                continue
            try:
                idx = self.load_index_file(fid)
            except CasError as exc:
                warnings.append(
                    f"index file {fid[:12]} is unreadable ({exc}); run 'casbackup repair index'"
                )
                continue
            gone = packs.missing(idx.packs)
            if gone and known:
                # Perhaps an old file a known one supersedes (put back beside it): only a
                # sync from every present file knows.
                return self.sync_index(rebuild=True)
            if gone:
                self._missing_packs(fid, gone, warnings)
            cache.add_file(
                fid, (e for pack, es in idx.packs.items() if pack not in gone for e in es)
            )
        return warnings

    def _missing_packs(self, fid: FileId, gone: set[FileId], warnings: list[str]) -> None:
        """An index file naming packs that are not there: an index rolled back to files a
        prune replaced (or packs deleted). Its other entries are used; these count as
        absent, so a backup stores their blobs again instead of naming data that is gone."""
        message = (
            f"index file {fid[:12]} names {len(gone)} missing pack(s) "
            f"({', '.join(sorted(g[:12] for g in gone)[:3])}): a rolled-back or damaged"
            " index; their blobs count as absent (run 'casbackup check', then"
            " 'casbackup repair index')"
        )
        warnings.append(message)
        if message not in self.alerts:
            self.alerts.append(message)

    def _readable_index_files(
        self,
        files: list[FileId],
        superseded: set[FileId],
        packs: _PackCheck,
        warnings: list[str],
    ) -> Iterator[tuple[FileId, list[tuple[FileId, bytes]], dict[BlobId, BlobId]]]:
        """(fid, sections, bases) of each of ``files`` not superseded, one at a time,
        without the sections of missing packs (``_missing_packs``); an unreadable file is
        a warning."""
        for fid in files:
            if fid in superseded:
                continue
            try:
                _, sections, bases = self.load_index_with_bases(fid)
            except CasError as exc:
                warnings.append(
                    f"index file {fid[:12]} is unreadable ({exc}); run 'casbackup repair index'"
                )
                continue
            gone = packs.missing(pack for pack, _ in sections)
            if gone:
                self._missing_packs(fid, gone, warnings)
                sections = [(pack, records) for pack, records in sections if pack not in gone]
            yield fid, sections, bases

    def has_blob(self, blob_id: bytes) -> bool:
        if blob_id in self._claimed or blob_id in self._pending:
            return True
        return self.cache.contains(blob_id)

    def has_blobs(self, blob_ids: Iterable[bytes]) -> bool:
        """Whether every one is stored (one index transaction for all of them)."""
        rest = [b for b in blob_ids if b not in self._claimed and b not in self._pending]
        return not rest or self.cache.contains_all(rest)

    def locate_many(self, blob_ids: Iterable[bytes]) -> list[Location]:
        """``locate`` for several blobs with one index transaction (restore: a file's chunks)."""
        ids = list(blob_ids)
        if self._pending or self._claimed:
            return [self.locate(b) for b in ids]  # blobs of this session: rare, take the slow way
        found = self.cache.get_many(ids)
        for blob_id, loc in zip(ids, found, strict=True):
            if loc is None:
                raise NotFound(f"blob {blob_id.hex()[:16]} is not in the index")
        return found  # type: ignore[return-value]

    def locate_values(self, blob_ids: list[bytes]) -> list[bytes]:
        """``locate_many`` as the index cache's stored values (``index.chunk_location``,
        ``Location.decode``), for callers that locate many chunks and need few of a
        Location's fields. Raises NotFound."""
        if self._pending or self._claimed:
            return [self.locate(b).encode() for b in blob_ids]
        found = self.cache.get_many_values(blob_ids)
        for blob_id, value in zip(blob_ids, found, strict=True):
            if value is None:
                raise NotFound(f"blob {blob_id.hex()[:16]} is not in the index")
        return found  # type: ignore[return-value]

    def locate(self, blob_id: bytes) -> Location:
        loc = self._pending.get(blob_id)
        if loc is None:
            loc = self.cache.get(blob_id)
        if loc is None:
            if blob_id in self._claimed:
                self.flush()
                return self.locate(blob_id)
            raise NotFound(f"blob {blob_id.hex()[:16]} is not in the index")
        return loc

    # ----------------------------------------------------------------- blobs
    def blob_id(self, data: bytes | memoryview) -> BlobId:
        return BlobId(blake3.blake3(data, key=self._id_key).digest())

    def save_blob(
        self, kind: Kind, data: bytes | memoryview, blob_id: BlobId | None = None
    ) -> tuple[BlobId, bool]:
        """Store a blob unless the repository has it. Thread-safe. Returns (id, added)."""
        if blob_id is None:
            blob_id = self.blob_id(data)
        self.require_writable()
        if self.has_blob(blob_id):
            return blob_id, False
        payload = codec.compress(data, self.compression_level)
        envelope = self.sealer.seal(kind, blob_id, payload)
        if self.verify_before_write:
            # Catch bad RAM and bugs before they reach the repository (restic does the same).
            if self.blob_id(codec.decompress(self.opener.open(kind, blob_id, envelope))) != blob_id:
                raise IntegrityError(
                    "a blob failed verification before it was written (memory or software fault)"
                )
        return blob_id, self.store_sealed(kind, blob_id, envelope, len(data))

    def store_sealed(
        self,
        kind: Kind,
        blob_id: BlobId,
        envelope: bytes,
        raw_len: int,
        base: BlobId | None = None,
    ) -> bool:
        """Add a blob sealed (and verified) elsewhere, e.g. by a reader process. Thread-safe.

        Returns False when the repository already has it (another reader sealed it
        first); the envelope is then dropped, so no blob is ever stored twice.
        ``base``: a DELTA blob's base (repo/delta.py), which must be stored already, or
        added before it in this process (its pack is then stored first: packs of one group
        are stored in order, repo/uploader.py).
        """
        self.require_writable()
        full: PackWriter | None = None
        with self._lock:
            # Pending before the cache, under the lock: an index flush adds to the cache
            # before it clears pending, so one of the two always sees a stored blob.
            if blob_id in self._claimed or blob_id in self._pending or self.cache.contains(blob_id):
                return False
            group = pack_group(kind)
            packer = self._packers[group]
            try:
                packer.add(kind, blob_id, envelope, raw_len, base)
            except BaseException:
                # The open pack is unusable: none of its blobs may count as present.
                for e in packer.entries:
                    self._claimed.discard(e.id)
                packer.abort()
                self._packers[group] = self._new_packer()
                raise
            self._claimed.add(blob_id)
            self.stats_blobs_added += 1
            self.stats_deltas_added += kind == Kind.DELTA
            self.stats_bytes_added += raw_len
            self.stats_bytes_stored += len(envelope)
            if packer.size >= self.config.pack_size:
                full, self._packers[group] = packer, self._new_packer()
        if full is not None:
            if self._uploader is not None:
                self._uploader.submit(full)  # a remote PUT: the caller goes on collecting
            else:
                self._write_pack(full)
        return True

    def store_sealed_batch(self, blobs: Iterable[tuple[bytes, bytes, int]]) -> None:
        """``store_sealed`` for the data blobs a reader process sends."""
        for blob_id, envelope, raw_len in blobs:
            self.store_sealed(Kind.DATA, BlobId(blob_id), envelope, raw_len)

    def _new_packer(self) -> PackWriter | UploadPackWriter:
        begin = getattr(self.backend, "begin_upload", None)
        if begin is None:
            return PackWriter()  # backends without streaming writes get the whole pack
        return UploadPackWriter(lambda: begin("data"))

    def _write_pack(self, packer: PackWriter | UploadPackWriter) -> None:
        try:
            pack_id, entries = packer.store(self.backend, self.sealer)
        except BaseException:
            packer.abort()
            # The pack never reached the store: its blobs must not count as present, or a
            # later save in this process would skip them and a snapshot would name nothing.
            with self._lock:
                for e in packer.entries:
                    self._claimed.discard(e.id)
            raise
        located = [
            (e.id, Location(pack_id, e.offset, e.stored_len, e.raw_len, e.kind, e.base))
            for e in entries
        ]
        with self._lock:
            for blob_id, loc in located:
                self._pending[blob_id] = loc
                self._claimed.discard(blob_id)
            self._pending_packs[pack_id] = located
            due = (
                len(self._pending) >= INDEX_FLUSH_BLOBS
                or len(self._pending_packs) >= INDEX_FLUSH_PACKS
                or time.monotonic() - self._last_index_flush > INDEX_FLUSH_SECONDS
            )
        if due:
            self._flush_index()

    def _flush_index(self) -> None:
        if not stopping.acquire(self._index_lock):
            raise StorageError(
                "an index write of the store did not finish after the stop; what it names "
                "is stored again by the next run"
            )
        try:
            with self._lock:
                packs, self._pending_packs = self._pending_packs, {}
            if not packs:
                return
            try:
                self.confirm_locks()  # an index naming packs a prune removed is damage
            except BaseException:
                with self._lock:
                    self._pending_packs.update(packs)
                raise
            fid = self.save_file_object("index", Kind.INDEX, encode_index(packs))
            entries = [item for located in packs.values() for item in located]
            self.cache.add_file(fid, entries)
            with self._lock:
                for blob_id, _loc in entries:
                    self._pending.pop(blob_id, None)
                self._last_index_flush = time.monotonic()
        finally:
            self._index_lock.release()

    def flush(self) -> None:
        """Store the open pack and an index file naming every stored pack.

        Raises what storing failed with; after a stop (store/stopping.py), an upload that
        did not finish in time still lets the packs stored before it be indexed (what the
        stopped run keeps for the next), and then raises its StorageError."""
        if self._uploader is not None:
            try:
                self._uploader.wait()  # packs first, then the index that names them
            except StorageError:
                if stopping.stopped() is None:
                    raise
                self._flush_index()
                raise
        with self._lock:
            packers = list(self._packers.values())
            self._packers = {group: self._new_packer() for group in self._packers}
        for packer in packers:
            if packer.entries:
                self._write_pack(packer)
        self._flush_index()

    def load_blob(self, blob_id: BlobId, kind: Kind | None = None) -> bytes:
        """A blob's full plaintext. ``kind`` DATA also accepts a DELTA blob and TREE a
        TREE_DELTA (resolved through its chain of bases, at most ``delta.MAX_DEPTH`` deep,
        two plaintexts in memory at a time, the result checked against its id). Raises
        NotFound, IntegrityError.

        A pack the index names but the store lacks may have been repacked or deleted by
        another client's prune since this handle synced its index (a long-lived reader such
        as the service): the index is synced again and the blob read from where it is now.
        A pack still missing with the index unchanged is damage (NotFound)."""
        synced = self._resyncs
        try:
            return self._load_blob(blob_id, kind)
        except NotFound:
            if synced == self._resyncs and not self._resync_after_missing_pack():
                raise
        return self._load_blob(blob_id, kind)

    def _resync_after_missing_pack(self) -> bool:
        """Sync the index after a read found a pack missing; True when it changed (the
        read is worth another try; a read that failed meanwhile in another thread retries
        too). At most once per RESYNC_SECONDS: a damaged repository with many missing packs
        costs one listing, not one per blob."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_resync < RESYNC_SECONDS:
                return False
            self._last_resync = now
        cache = self.cache
        before = cache.known_files()
        for message in self.sync_index():
            if message not in self.alerts:
                self.alerts.append(message)
        if cache.known_files() == before:
            return False
        with self._lock:
            self._resyncs += 1
        return True

    def _load_blob(self, blob_id: BlobId, kind: Kind | None) -> bytes:
        loc = self.locate(blob_id)
        if kind is not None and loc.kind != kind and FULL_KIND.get(loc.kind) != kind:
            raise IntegrityError(
                f"blob {blob_id.hex()[:16]} is a {loc.kind.name}, expected {kind.name}"
            )
        if loc.kind in FULL_KIND:
            return self.load_delta(blob_id, loc)
        envelope = self.backend.get(pack_name(loc.pack), loc.offset, loc.stored_len)
        return open_blob(self.opener, loc.kind, blob_id, loc.pack, envelope, loc.raw_len)

    def load_delta(self, blob_id: BlobId, loc: Location) -> bytes:
        """Resolve a DELTA or TREE_DELTA blob located at ``loc`` (see ``load_blob``)."""
        chain = delta.located_chain(self.locate, blob_id, loc)
        return delta.resolve_chain(
            self.fetch_envelope,
            self.opener,
            chain,
            hash_id=self.blob_id,
            kind=FULL_KIND.get(loc.kind, Kind.DATA),
        )

    def fetch_envelope(self, pack: str, offset: int, length: int) -> bytes:
        """Stored bytes of a pack (one ranged read), for ``delta.resolve_chain``."""
        return self.backend.get(pack_name(pack), offset, length)


class _PackCheck:
    """Whether the packs an index file names exist, asked once per sync: a stat per pack
    while few are asked (a night's new index file), one listing of ``data/`` beyond that
    (a cache built from scratch), so a sync costs at most one more listing."""

    STATS = 64  # packs stat'ed one by one before listing them all is cheaper

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.listed: set[str] | None = None
        self.stats = 0

    def missing(self, packs: Iterable[FileId]) -> set[FileId]:
        wanted = list(packs)
        if self.listed is None and self.stats + len(wanted) > self.STATS:
            self.listed = {name.rsplit("/", 1)[1] for name, _size in self.backend.list("data/")}
        if self.listed is not None:
            return {p for p in wanted if p not in self.listed}
        self.stats += len(wanted)
        return {p for p in wanted if not self.backend.exists(pack_name(p))}
