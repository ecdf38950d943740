"""The repository: the one object everything above the format talks to.

Write order (the crash-safety argument, see repo_format.md "Invariants"):
1. blobs go into packs; a pack is stored (temp name, fsync, rename, fsync dir)
   before anything names it;
2. an index file naming only stored packs is written after them;
3. a snapshot naming only indexed blobs is written last.
A crash at any point leaves at most packs no index names (``prune`` reclaims them)
or indexed blobs no snapshot uses; never a reference to something missing.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import blake3

from casbackup.crypto.envelope import ZERO_ID, Opener, Sealer
from casbackup.crypto.keyfile import KdfParams, wrap_key
from casbackup.crypto.keys import MasterKey
from casbackup.errors import (
    AmbiguousId,
    CasError,
    ConfigTampered,
    IntegrityError,
    MigrationRequired,
    NotFound,
    RepositoryExists,
    RepositoryNotFound,
    StorageError,
)
from casbackup.repo import codec, delta
from casbackup.repo.config import FORMAT_VERSION, RepoConfig
from casbackup.repo.ids import BlobId, FileId, Kind, check_name, file_id
from casbackup.repo.index import (
    IndexCache,
    Location,
    cache_root,
    decode_index,
    decode_index_records,
    decode_index_with_bases,
    decode_supersedes,
    encode_index,
)
from casbackup.repo.keyring import KeyChoice, find_key
from casbackup.repo.localstate import (
    LocalState,
    StateDoc,
    remember_snapshot,
    screen_snapshots,
)
from casbackup.repo.lock import Lock
from casbackup.repo.pack import PackWriter, UploadPackWriter, open_blob, pack_name
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.tree import Node, decode_tree, encode_tree
from casbackup.repo.treecache import TreeCache, cap_bytes
from casbackup.repo.uploader import PackUploader
from casbackup.store.base import Backend, odd_entries
from casbackup.units import plural

# Flush a partial index during long backups so an interrupted run keeps its work (restic: 50k/10 min).
INDEX_FLUSH_BLOBS = 50_000
INDEX_FLUSH_SECONDS = 60
INDEX_FLUSH_PACKS = 8  # also every 8 packs (128 MiB by default): a kill loses little work


class Repository:
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
        self._cache: IndexCache | None = None
        self._cache_lock = threading.Lock()
        # Remote stores: full packs are stored in the background (repo/uploader.py).
        self._uploader = (
            PackUploader(self._write_pack) if getattr(backend, "remote", False) else None
        )
        self._tree_cache: TreeCache | None = None
        if getattr(backend, "remote", False) and cap_bytes() > 0:
            # A tree read from a remote store is a request; from this cache, a file read.
            self._tree_cache = TreeCache(
                os.path.join(cache_root(), config.id, "trees"),
                self.sealer, self.opener, self.blob_id, cap_bytes(),
            )  # fmt: skip
        self.stats_blobs_added = 0
        self.stats_bytes_added = 0
        self.stats_bytes_stored = 0

    # ----------------------------------------------------------------- open/init
    @staticmethod
    def check_can_init(backend: Backend) -> None:
        """Refuse a location that holds a repository or anything else.

        Raises RepositoryExists (exit 20). `init` calls it again; callers call it first so
        that nobody types a new passphrase twice only to learn the location is taken.
        """
        if backend.exists("config"):
            raise RepositoryExists(f"a repository already exists at {backend.location}")
        if any(True for _ in backend.list("")) or odd_entries(backend):
            raise RepositoryExists(
                f"{backend.location} is not empty; choose an empty or new folder"
            )

    @classmethod
    def init(
        cls,
        backend: Backend,
        password: bytes,
        *,
        kdf: KdfParams = KdfParams(),
        config: RepoConfig | None = None,
        key: MasterKey | None = None,
    ) -> Repository:
        """Create a repository. ``key``: reuse another repository's master secret (``init
        --copy-chunker-params-from``: same blob ids and chunker seed, so dedup carries
        across a copy); by default a fresh random one."""
        cls.check_can_init(backend)
        config = config or RepoConfig()
        key = key or MasterKey.generate()
        if config.authenticated:
            config = config.sign(key)
        keyfile = wrap_key(key, password, config.id_bytes, kdf)
        key_name = f"keys/{file_id(keyfile)}"
        # Key first, config last: a folder with a config always has a key that opens it.
        backend.put(key_name, keyfile)
        backend.put("config", config.encode())
        repo = cls(backend, config, key, key_name)
        repo.remember_open()
        return repo

    @classmethod
    def open(
        cls, backend: Backend, password: bytes, *, choice: KeyChoice | None = None
    ) -> Repository:
        """Open with a passphrase: find its key file (keyring.py), then authenticate the config.

        Raises RepositoryNotFound, WrongPassword, FormatError (damaged key files or
        config), ConfigTampered (the config's MAC fails, or its version went back below
        one this client has seen), UnsupportedFormat (a newer format)."""
        try:
            raw = backend.get("config")
        except NotFound:
            raise RepositoryNotFound(
                f"no repository at {backend.location} (run 'casbackup init' to create one)"
            ) from None
        config = RepoConfig.decode(raw)
        state = LocalState(config.id)
        if config.version < state.doc.format_version:
            raise ConfigTampered(
                f"the repository config is format version {config.version}, but this client "
                f"has opened it as version {state.doc.format_version}: it was rolled back or "
                f"replaced. If you restored an old copy on purpose, delete {state.path}"
            )
        choice = choice or KeyChoice.from_env()
        if not choice.preferred:
            choice = KeyChoice(state.doc.last_key, choice.select, choice.max_tries, choice.limit)
        key, name = find_key(backend, config.id_bytes, password, choice)
        config.verify_mac(key)
        repo = cls(backend, config, key, name, state)
        repo.remember_open()
        return repo

    def remember_open(self) -> None:
        """Record the key file that opened the repository and the format version seen."""
        kid = self.key_name.rsplit("/", 1)[1]
        version = self.config.version

        def change(doc: StateDoc) -> bool:
            if doc.last_key == kid and doc.format_version >= version:
                return False
            doc.last_key, doc.format_version = kid, max(doc.format_version, version)
            return True

        self.state.update(change)
        if self.state.problem:
            self.alerts.append(self.state.problem)

    def require_writable(self) -> None:
        """MigrationRequired unless this program may write the repository's format."""
        if not self.writable:
            raise MigrationRequired(
                f"repository format version {self.config.version} is read-only for this "
                f"casbackup (it writes version {FORMAT_VERSION}); run 'casbackup migrate' "
                "to upgrade it (older casbackup versions cannot open it afterwards)"
            )

    def add_key(self, password: bytes, kdf: KdfParams = KdfParams()) -> str:
        self.require_writable()
        data = wrap_key(self.key, password, self.config.id_bytes, kdf)
        name = f"keys/{file_id(data)}"
        self.backend.put(name, data)
        return name

    def close(self) -> None:
        if self._uploader is not None:
            self._uploader.close()
        with self._lock:
            for packer in self._packers.values():
                packer.abort()  # blobs never flushed: drop the pack's temp file
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        self.backend.close()

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lock(self, *, exclusive: bool = False, command: str = "") -> Lock:
        if exclusive:
            self.require_writable()  # exclusive = forget, prune, repair, key changes
        return Lock(self, exclusive, command).acquire()

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
        try:
            self._cache = IndexCache(path)
        except CasError:
            shutil.rmtree(path, ignore_errors=True)  # a damaged cache is only a cache
            self._cache = IndexCache(path)
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
            cache.add_file(fid, idx.blobs())
        return warnings

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
        ``base``: a DELTA blob's base (repo/delta.py), which must be stored already.
        """
        self.require_writable()
        full: PackWriter | None = None
        with self._lock:
            # Pending before the cache, under the lock: an index flush adds to the cache
            # before it clears pending, so one of the two always sees a stored blob.
            if blob_id in self._claimed or blob_id in self._pending or self.cache.contains(blob_id):
                return False
            group = Kind.TREE if kind == Kind.TREE else Kind.DATA
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
        with self._index_lock:
            with self._lock:
                packs, self._pending_packs = self._pending_packs, {}
            if not packs:
                return
            fid = self.save_file_object("index", Kind.INDEX, encode_index(packs))
            entries = [item for located in packs.values() for item in located]
            self.cache.add_file(fid, entries)
            with self._lock:
                for blob_id, _loc in entries:
                    self._pending.pop(blob_id, None)
                self._last_index_flush = time.monotonic()

    def flush(self) -> None:
        """Store the open pack and an index file naming every stored pack."""
        if self._uploader is not None:
            self._uploader.wait()  # packs first, then the index that names them
        with self._lock:
            packers = list(self._packers.values())
            self._packers = {group: self._new_packer() for group in self._packers}
        for packer in packers:
            if packer.entries:
                self._write_pack(packer)
        self._flush_index()

    def load_blob(self, blob_id: BlobId, kind: Kind | None = None) -> bytes:
        """A blob's full plaintext. ``kind`` DATA also accepts a DELTA blob (resolved through
        its chain of bases, at most ``delta.MAX_DEPTH`` deep, two plaintexts in memory at a
        time, each level checked against its id). Raises NotFound, IntegrityError."""
        loc = self.locate(blob_id)
        if kind is not None and loc.kind != kind and (kind, loc.kind) != (Kind.DATA, Kind.DELTA):
            raise IntegrityError(
                f"blob {blob_id.hex()[:16]} is a {loc.kind.name}, expected {kind.name}"
            )
        if loc.kind == Kind.DELTA:
            return self.load_delta(blob_id, loc)
        envelope = self.backend.get(pack_name(loc.pack), loc.offset, loc.stored_len)
        return open_blob(self.opener, loc.kind, blob_id, loc.pack, envelope, loc.raw_len)

    def load_delta(self, blob_id: BlobId, loc: Location) -> bytes:
        """Resolve a DELTA blob located at ``loc`` (see ``load_blob``)."""
        chain = delta.located_chain(self.locate, blob_id, loc)
        return delta.resolve_chain(self.fetch_envelope, self.opener, chain, hash_id=self.blob_id)

    def fetch_envelope(self, pack: str, offset: int, length: int) -> bytes:
        """Stored bytes of a pack (one ranged read), for ``delta.resolve_chain``."""
        return self.backend.get(pack_name(pack), offset, length)

    @property
    def deltas_allowed(self) -> bool:
        """Whether this repository's format holds DELTA blobs (version 3 and later)."""
        return self.config.version >= 3 and self.writable

    def delta_depth(self, blob_id: bytes) -> int | None:
        """How many deltas lie above the full blob ``blob_id`` resolves from (0: a full
        blob), or None when it is not stored as data."""
        if blob_id in self._claimed:
            return None  # in a pack not yet stored: locating it would force a flush
        try:
            loc = self.locate(blob_id)
            if loc.kind not in (Kind.DATA, Kind.DELTA):
                return None
            return len(delta.chain_of(self.locate, blob_id, loc)) - 1
        except (NotFound, IntegrityError):
            return None

    def save_data_delta(
        self,
        data: bytes | memoryview,
        base_id: BlobId,
        base: bytes | None = None,
        blob_id: BlobId | None = None,
    ) -> tuple[BlobId, bool]:
        """``save_blob(Kind.DATA, data)``, stored as a DELTA against ``base_id`` when that
        pays: the base is stored, its chain leaves room (``delta.MAX_DEPTH``) and the delta
        is at most ``delta.MAX_SHARE`` of the data compressed on its own. ``base``: the base's plaintext when the
        caller has it (else it is loaded); ``blob_id``: ``data``'s id when known. Verified
        before it is written: the delta applied to the base must give ``data`` back.
        Returns (id, added)."""
        if blob_id is None:
            blob_id = self.blob_id(data)
        self.require_writable()
        if self.has_blob(blob_id):
            return blob_id, False
        depth = self.delta_depth(base_id) if self.deltas_allowed and base_id != blob_id else None
        if depth is None or depth >= delta.MAX_DEPTH:
            return self.save_blob(Kind.DATA, data, blob_id)
        if base is None:
            base = self.load_blob(base_id, Kind.DATA)
        level = self.compression_level if self.compression_level is not None else 3
        payload = delta.encode_delta(base_id, base, data, level)
        if len(payload) > len(data) // 16:
            # Rarely worth it (the base shares little): compare with the chunk compressed
            # on its own, and keep the delta only when it is clearly smaller.
            alone = codec.compress(data, self.compression_level)
            if len(payload) > delta.MAX_SHARE * len(alone):
                return self.save_blob(Kind.DATA, data, blob_id)
        envelope = self.sealer.seal(Kind.DELTA, blob_id, payload)
        if self.verify_before_write:
            plain = delta.apply_delta(
                delta.open_delta(self.opener, blob_id, envelope), bytes(base), len(data)
            )
            if self.blob_id(plain) != blob_id:
                raise IntegrityError(
                    "a delta blob failed verification before it was written (memory or "
                    "software fault)"
                )
        return blob_id, self.store_sealed(Kind.DELTA, blob_id, envelope, len(data), base_id)

    # ----------------------------------------------------------------- trees
    def save_tree(self, nodes: list[Node]) -> BlobId:
        data = encode_tree(nodes)
        tree_id = self.save_blob(Kind.TREE, data)[0]
        if self._tree_cache is not None:
            self._tree_cache.put(tree_id, data)  # the next backup compares with it
        return tree_id

    def load_tree(self, tree_id: BlobId, *, cached: bool = True) -> list[Node]:
        """A tree's nodes, from the local tree cache (repo/treecache.py: remote stores
        only; entries authenticated and checked against the id) or the repository.
        ``cached=False`` reads the repository's copy (``check`` verifies that one).
        Raises IntegrityError, NotFound, StorageError."""
        cache = self._tree_cache if cached else None
        data = cache.get(tree_id) if cache is not None else None
        if data is None and cache is not None:
            loc = self.locate(tree_id)
            try:  # a cold cache: the tree's whole pack at once, when it is small
                if cache.fill_from_pack(self.backend, loc.pack):
                    data = cache.get(tree_id)
            except CasError:
                data = None  # read just this tree below; its own errors are the ones to report
        if data is None:
            data = self.load_blob(tree_id, Kind.TREE)
            if self.blob_id(data) != tree_id:
                raise IntegrityError(f"tree {tree_id.hex()[:16]} does not match its id")
            if cache is not None:
                cache.put(tree_id, data)
        return decode_tree(data)

    # ----------------------------------------------------------------- snapshots
    def save_snapshot(self, snap: Snapshot) -> Snapshot:
        self.flush()  # invariant: everything the snapshot names is indexed first
        fid = self.save_file_object("snapshots", Kind.SNAPSHOT, snap.encode())
        remember_snapshot(self.state, fid)
        return snap.with_id(fid)

    def load_snapshot(self, fid: str) -> Snapshot:
        return Snapshot.decode(self.get_encrypted(f"snapshots/{fid}", Kind.SNAPSHOT), fid)

    def snapshot_ids(self) -> list[FileId]:
        return sorted(FileId(name.rsplit("/", 1)[1]) for name, _ in self.backend.list("snapshots/"))

    def alert(self, message: str) -> None:
        """A loud warning the user must see (once), collected for the CLI to print."""
        if message not in self.alerts:
            self.alerts.append(message)

    def usable_snapshot_ids(self, present: list[str] | None = None) -> list[str]:
        """The snapshot ids present (``snapshot_ids()`` unless given) less those this client
        forgot itself and that came back; each such finding becomes an ``alert``."""
        if present is None:
            present = self.snapshot_ids()
        usable, alerts = screen_snapshots(self.state, present)
        for message in alerts:
            self.alert(message)
        return usable

    def list_snapshots(
        self, *, warnings: list[str] | None = None, include_forgotten: bool = False
    ) -> list[Snapshot]:
        """All readable snapshots, oldest first. Unreadable ones are reported in ``warnings``.

        Snapshots this client forgot are left out even if present again (``alerts``),
        unless ``include_forgotten`` (prune: data that anything present names is kept)."""
        present = self.snapshot_ids()
        usable = self.usable_snapshot_ids(present)
        snaps = []
        for fid in present if include_forgotten else usable:
            try:
                snaps.append(self.load_snapshot(fid))
            except CasError as exc:
                if warnings is None:
                    raise
                warnings.append(f"snapshot {fid[:8]} is unreadable: {exc}")
        snaps.sort(key=lambda s: (s.start_ns, s.id))
        return snaps

    def delete_snapshot(self, fid: str) -> None:
        """Forget a snapshot: recorded locally first, so it is never trusted again even if
        its file comes back (a crash in between leaves it present but ignored here)."""
        remember_snapshot(self.state, fid, forgotten=True)
        self.backend.delete(f"snapshots/{fid}")

    def resolve_snapshot(
        self, ref: str, *, app: str | None = None, paths: Iterable[str] | None = None
    ) -> Snapshot:
        if ref == "latest":
            snaps = [s for s in self.list_snapshots(warnings=[]) if app is None or s.app == app]
            if paths is not None:
                wanted = tuple(sorted(paths))
                snaps = [s for s in snaps if tuple(sorted(s.paths)) == wanted]
            if not snaps:
                what = f" of application {app!r}" if app else ""
                raise NotFound(f"no snapshot{what} in the repository")
            return snaps[-1]
        ref = ref.lower()
        if not ref or any(c not in "0123456789abcdef" for c in ref):
            raise NotFound(
                f"{ref!r} is not a snapshot id (give an id, a unique prefix, or 'latest')"
            )
        matches = [fid for fid in self.snapshot_ids() if fid.startswith(ref)]
        if not matches:
            raise NotFound(f"no snapshot matches {ref!r}")
        if len(matches) > 1:
            raise AmbiguousId(
                f"{ref!r} matches {plural(len(matches), 'snapshot')}; give more digits"
            )
        if matches[0] in self.state.doc.forgotten:
            self.alert(
                f"snapshot {matches[0][:8]} was forgotten by this client and is back in the "
                "repository (rolled back or tampered with); using it only because it was named"
            )
        return self.load_snapshot(matches[0])

    # ----------------------------------------------------------------- walking
    def walk(self, tree_id: BlobId, prefix: bytes = b"") -> Iterator[tuple[bytes, Node]]:
        """Depth-first (path, node) for every node below a tree, each folder's node before its
        contents, in name order; loads one tree at a time, when its folder is reached.

        An explicit stack, not recursion: a snapshot may be any number of levels deep (anyone
        who can write the backed-up folders chooses the depth), and Python's recursion limit
        (about 1,000 frames) must not decide whether a snapshot can be read. Memory holds the
        trees along one path from the root, as recursion would.
        """
        stack: list[tuple[Iterator[Node], bytes]] = [(iter(self.load_tree(tree_id)), prefix)]
        while stack:
            nodes, where = stack[-1]
            node = next(nodes, None)
            if node is None:
                stack.pop()
                continue
            path = where + b"/" + node.name
            yield path, node
            if node.subtree is not None:
                stack.append((iter(self.load_tree(node.subtree)), path))

    def find_node(self, root: BlobId, path: str | bytes) -> Node | None:
        """The node at an absolute path in a snapshot, or None for the root itself."""
        raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
        parts = [p for p in raw.split(b"/") if p and p != b"."]
        tree: BlobId | None = root
        node: Node | None = None
        for i, part in enumerate(parts):
            if tree is None:
                raise NotFound(f"{path!r} does not exist in the snapshot")
            for candidate in self.load_tree(tree):
                if candidate.name == part:
                    node = candidate
                    break
            else:
                shown = b"/" + b"/".join(parts[: i + 1])
                raise NotFound(f"{shown.decode('utf-8', 'replace')} does not exist in the snapshot")
            tree = node.subtree
        return node

    @contextmanager
    def locked(self, *, exclusive: bool = False, command: str = "") -> Iterator[Repository]:
        lock = self.lock(exclusive=exclusive, command=command)
        try:
            yield self
        finally:
            lock.release()
