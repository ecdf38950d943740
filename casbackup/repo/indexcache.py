"""The local LMDB cache of the repository's index: blob id -> location, for fast look-ups.

It lives under the user's cache directory (``cache_root``), private to the user. It is
never the only copy: it records which index files (repo/index.py) it holds and is brought
up to date (or rebuilt) whenever the repository's index/ listing differs. Readers in other
processes open it read-only (archiver/workers.py); a large cache answers most look-ups of
absent blobs from a Bloom filter (repo/bloom.py) and releases its mapped pages as it goes,
so its memory does not grow with the repository.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from operator import itemgetter
from typing import TYPE_CHECKING

import lmdb

from casbackup.errors import FormatError, StorageError
from casbackup.repo.bloom import FULL_FILL, BlobFilter
from casbackup.repo.ids import DELTA_KINDS, BlobId, FileId
from casbackup.repo.index import LOCATION_SIZE, Location
from casbackup.repo.mapped import madvise_dontneed, mapped_ranges, read_ahead
from casbackup.repo.userdirs import (
    ForeignCacheEntry,
    local_base,
    refuse_foreign,
    unwritable_because,
)

if TYPE_CHECKING:  # spill.py imports this module
    from casbackup.maintenance.spill import IdSet

_U32 = struct.Struct(">I")
# ``rebuild``: an index record split as (kind, id, offset|stored|raw), and a spilled
# entry as (id, file seq, value).
_RECORD = struct.Struct(">c32s12s")
_SPILLED = struct.Struct(f">32s4s{LOCATION_SIZE}s")
_KEY_VALUE = itemgetter(0, 2)
_LAST_BYTE = itemgetter(-1)


def _has_delta(values: dict[bytes, bytes]) -> bool:
    """Whether a value (``Location.encode`` without a base yet) names a delta kind."""
    kinds = bytes(map(_LAST_BYTE, values.values()))
    return any(k in kinds for k in DELTA_KINDS)


def cache_root() -> str:
    explicit = os.environ.get("CASBACKUP_CACHE_DIR")
    if explicit:
        return explicit
    return os.path.join(local_base("XDG_CACHE_HOME", ".cache"), "casbackup")


def cache_bound(variable: str, default_mib: int) -> int:
    """A local cache's bound in bytes from the environment ``variable`` (MiB; 0: off). A
    value that is not a non-negative integer falls back to ``default_mib``: it is only a
    cache, and a typo must not stop a backup."""
    raw = os.environ.get(variable, "")
    try:
        mib = int(raw) if raw.strip() else default_mib
    except ValueError:
        mib = default_mib
    return (mib if mib >= 0 else default_mib) << 20


# The cache lists which blobs (keyed ids) the repository holds and where: nobody else's
# business, whatever the umask says (restic and borg keep their caches private too).
CACHE_DIR_MODE = 0o700
CACHE_FILE_MODE = 0o600


def _chain(path: str) -> list[str]:
    """The folders from the cache root (or ``path`` itself, outside the root) down to
    ``path``, absolute; the first is the one that may be shared (``refuse_foreign``)."""
    root = os.path.abspath(cache_root())
    path = os.path.abspath(path)
    top = root if path == root or path.startswith(root + os.sep) else path
    chain = [top]
    for part in os.path.relpath(path, top).split(os.sep):
        if part != ".":
            chain.append(os.path.join(chain[-1], part))
    return chain


def owned_dirs(path: str) -> bool:
    """Whether the folder ``path`` exists and it and every folder from the cache root down
    to it are ours and no links (``userdirs.refuse_foreign``; the root may be shared).
    Creates nothing. What removes or reads files of a cache folder asks this first: in a
    shared CASBACKUP_CACHE_DIR another user could have made our repository's folder first
    and put a link to a folder of ours there, whose files a sweep would then delete."""
    chain = _chain(path)
    try:
        for folder in chain:
            refuse_foreign(folder, shared_ok=folder == chain[0])
        return os.path.isdir(chain[-1])
    except OSError:
        return False


def private_dirs(path: str) -> None:
    """Create ``path`` and every missing folder from the cache root down, each 0700; tighten
    the cache root, the folders below it and the files in ``path`` that an older version
    left 0755/0644. Folders above the cache root (``~/.cache``) are not ours to change.

    Raises OSError, and ForeignCacheEntry (an OSError, EPERM) for a folder or file there
    that is not ours (``userdirs.refuse_foreign``): in a shared CASBACKUP_CACHE_DIR another user
    could have made our folders first, to read our index or plant one of theirs."""
    chain = _chain(path)
    top, path = chain[0], chain[-1]
    os.makedirs(os.path.dirname(top), exist_ok=True)
    for folder in chain:
        try:
            os.mkdir(folder, CACHE_DIR_MODE)
        except FileExistsError:
            refuse_foreign(folder, shared_ok=folder == top)
            _tighten(folder, CACHE_DIR_MODE)
    for entry in os.scandir(path):
        if entry.is_file(follow_symlinks=False):
            refuse_foreign(entry.path, shared_ok=False)
            _tighten(entry.path, CACHE_FILE_MODE)


def _tighten(path: str, mode: int) -> None:
    """Take from ``path`` (if ours) the permissions ``mode`` does not give; never add any (a
    folder its owner made read-only stays so: casbackup then runs without it)."""
    st = os.lstat(path)
    if st.st_uid == os.geteuid() and st.st_mode & 0o777 & ~mode:
        os.chmod(path, st.st_mode & 0o777 & mode, follow_symlinks=False)


ADD_BATCH = 1024  # index entries per LMDB write transaction (see add_file)
# From this many entries on, a Bloom filter (repo/bloom.py) answers most look-ups of
# absent blobs; below it the LMDB pages stay cached and a filter probe would only add.
FILTER_FROM = 1_000_000
FILTER_FILE = "blob-filter"


# How many LMDB visits (look-ups that reach the B-tree, entries written) between two
# ``release_pages`` calls. One visit can map far more than the 3 or 4 pages it reads:
# a fault maps the neighbours already in the page cache too (fault-around, and whole
# large folios on recent kernels): measured on Linux 6.18, 32 random look-ups in a warm
# 1M-entry cache left 46 MiB mapped, 256 left 82 MiB. Releasing more often costs time,
# as every visit after a release faults its pages in again (100k random look-ups: 41 us
# each releasing every 256, 72 us every 64, 92 us every 16, on a busy 2-core machine).
# A release itself costs about 2 us (the map's page tables up to the file's end).
RELEASE_EVERY = 256
# A cache file up to this size is treated whole. Its pages are never released: a window
# of RELEASE_EVERY random visits maps about that much anyway (fault-around, above), so
# releasing bounded nothing and cost a re-fault of every page after it (an unchanged
# re-backup of the 1 GiB bench corpus, 11 MiB cache, 73,652 look-ups in the readers'
# comparison: 279 releases of about 1.4 ms each, and the faults after them, were a
# quarter of the comparison's CPU time, bench/RESULTS.md). And it is read ahead when
# opened: LMDB maps it with readahead off, so on a cold cache every page a look-up met
# was a 4 KiB read of its own, one after another.
WHOLE_FILE_BYTES = 32 << 20


def _read_ahead_small(file_path: str) -> None:
    """``read_ahead`` of ``file_path`` if it is at most ``WHOLE_FILE_BYTES``."""
    read_ahead(file_path, WHOLE_FILE_BYTES)


class IndexCache:
    """blob id -> Location in LMDB, plus the set of index files it was built from.

    LMDB is multi-process safe; write transactions are serialized by LMDB itself.

    Memory: LMDB reads through a shared map of its file, and every page a look-up or a
    write visits stays in this process's resident set until the map is gone: with 5
    million entries (about 600 MiB of pages) a backup's inserts of new chunks visited
    a random leaf each and grew the backup by 220 MiB, and ``check`` walking every
    chunk would have mapped the whole file. Those pages are the kernel's page cache,
    not ours to hold: every ``RELEASE_EVERY`` page visits the map's pages are dropped
    from this process (``madvise(MADV_DONTNEED)``; LMDB maps read-only without
    ``writemap``, so nothing can be lost, and the next visit finds the page in the page
    cache again). Look-ups answered by the Bloom filter visit no page. A cache whose
    used part is at most ``WHOLE_FILE_BYTES`` is left mapped whole.
    """

    def __init__(self, path: str, *, readonly: bool = False) -> None:
        """``readonly`` is for other processes looking blobs up while this one writes."""
        self.path = path
        self.readonly = readonly
        # Held while the map's address range is released, and while the environment is
        # closed or opened: madvise on a range that was unmapped and reused by another
        # allocation would zero that memory.
        self._map_lock = threading.Lock()
        self._ranges: list[tuple[int, int]] = []
        self._carried: tuple[BlobFilter, IdSet] | None = None  # see _carry_filter
        self._open()

    def _open(self) -> None:
        path, readonly = self.path, self.readonly
        try:
            if not readonly:
                private_dirs(path)
            self.env = lmdb.open(
                path,
                mode=CACHE_FILE_MODE,
                map_size=1 << 38,
                max_dbs=4,
                subdir=True,
                metasync=False,
                sync=False,
                readahead=False,
                readonly=readonly,
            )
            self.blobs = self.env.open_db(b"blobs", create=not readonly)
            self.files = self.env.open_db(b"index-files", create=not readonly)
        except ForeignCacheEntry as exc:
            why = f"{exc.filename} {exc.strerror}"
            raise StorageError(f"cannot open the index cache at {path}: {why}") from None
        except OSError as exc:
            why = unwritable_because(path, cache_root(), exc)
            raise StorageError(f"cannot open the index cache at {path}: {why}") from None
        except lmdb.Error as exc:
            raise StorageError(f"cannot open the index cache at {path}: {exc}") from None
        self._visits = 0
        if not readonly:  # the readers open theirs after this one: once is enough
            _read_ahead_small(os.path.join(path, "data.mdb"))
        with self._map_lock:
            self._ranges = mapped_ranges(os.path.join(path, "data.mdb"))
        self._page_size = int(self.env.stat()["psize"])
        self._filter: BlobFilter | None = None
        self._open_filter()

    def release_pages(self) -> None:
        """Drop the LMDB map's pages from this process's resident memory (see the class
        docstring); a no-op where ``madvise`` or /proc is missing, or for a cache of at most
        ``WHOLE_FILE_BYTES``. Never raises."""
        self._visits = 0
        if madvise_dontneed is None:
            return
        with self._map_lock:
            if not self._ranges:
                return
            try:
                # Only the part of the map the file fills: the rest (map_size is 256 GiB) has
                # no pages, and walking its page tables cost 85 us a call against 2 us.
                used = (self.env.info()["last_pgno"] + 1) * self._page_size
            except lmdb.Error:
                return
            if used <= WHOLE_FILE_BYTES:
                return  # a small cache: all of it mapped costs less than releasing it
            for start, end in self._ranges:
                madvise_dontneed(start, min(end - start, used))

    def _close_env(self) -> None:
        with self._map_lock:
            self._ranges = []
            self.env.close()

    def _visited(self, pages: int) -> None:
        self._visits += pages
        if self._visits >= RELEASE_EVERY:
            self.release_pages()

    def _open_filter(self) -> None:
        """Use the filter when it covers exactly LMDB's entries; (re)build it if we write."""
        self._drop_filter()
        entries = self.count()
        if entries < FILTER_FROM:
            return
        path = os.path.join(self.path, FILTER_FILE)
        try:
            found = BlobFilter(path, writable=not self.readonly)
        except (OSError, ValueError):
            found = None
        if found is not None and found.covered == entries and entries <= found.capacity:
            self._filter = found
            return
        if found is not None:
            found.close()
        if not self.readonly:
            self._build_filter(entries)

    def _build_filter(self, entries: int) -> None:
        """A new filter from every key in LMDB (once per doubling of the index)."""
        try:
            bloom = BlobFilter.create(os.path.join(self.path, FILTER_FILE), 2 * entries)
        except OSError:
            return  # only an optimisation: look-ups go to LMDB
        with self.env.begin(db=self.blobs) as txn:
            bloom.add(self._released(txn.cursor().iternext(keys=True, values=False)))
        bloom.set_covered(entries)
        self._filter = bloom

    def _released(self, keys: Iterable[bytes]) -> Iterator[bytes]:
        """``keys`` as they come, releasing pages as a scan over them goes on (about 45
        entries a leaf page)."""
        for i, key in enumerate(keys):
            if i % (45 * RELEASE_EVERY) == 0:
                self.release_pages()
            yield key
        self.release_pages()

    def _drop_filter(self) -> None:
        if self._filter is not None:
            self._filter.close()
            self._filter = None

    def close(self) -> None:
        self._drop_carried()
        self._drop_filter()
        self._close_env()

    @contextmanager
    def closed_for_fork(self) -> Iterator[None]:
        """Close the environment while child processes that open their own view are forked.

        py-lmdb refuses to open an environment twice in one process, and a forked child
        inherits its parent's record that this one is open: the child's own read-only
        open then fails. Closed across the fork, the record is gone in the child.
        """
        self._drop_carried()
        self._drop_filter()
        self._close_env()
        try:
            yield
        finally:
            self._open()

    def known_files(self) -> set[FileId]:
        with self.env.begin(db=self.files) as txn:
            return {FileId(k.decode()) for k, _ in txn.cursor()}

    def _absent(self, blob_id: bytes) -> bool:
        """True when the filter proves ``blob_id`` is not in the index; False means "ask LMDB".

        A "no" from a filter that another process has since replaced (a rebuild: new inode,
        the old map misses every bit set after it) or that no longer covers every LMDB
        entry (a writer without a filter, or one mid-way through adding) could be wrong:
        storing a chunk twice, or a present blob reported missing. So a "no" is confirmed:
        the file is the one mapped and its covered count is LMDB's (one ``stat`` and one
        meta-page read, on negative answers only; a "maybe" costs nothing more). A
        replaced file is reloaded; a count mismatch sends this look-up to LMDB.
        """
        bloom = self._filter
        if bloom is None or bloom.might_contain(blob_id):
            return False
        if not bloom.is_current(os.path.join(self.path, FILTER_FILE)):
            self._reload_filter()
            bloom = self._filter
            if bloom is None or bloom.might_contain(blob_id):
                return False
        return bloom.covered == self.count()

    def _reload_filter(self) -> None:
        """Map the filter file anew (``_open_filter``: used only if it covers LMDB exactly;
        a writer rebuilds it otherwise, a reader then asks LMDB alone)."""
        try:
            self._open_filter()
        except (OSError, lmdb.Error):
            self._drop_filter()

    def get(self, blob_id: bytes) -> Location | None:
        if self._absent(blob_id):
            return None
        with self.env.begin(db=self.blobs, buffers=False) as txn:
            value = txn.get(blob_id)
        self._visited(1)
        return None if value is None else Location.decode(value)

    def get_many(self, blob_ids: list[bytes]) -> list[Location | None]:
        """Each id's Location (None when absent), in one read transaction; pages are
        released every RELEASE_EVERY look-ups, so a big tree's chunks map no more."""
        decode = Location.decode
        return [None if v is None else decode(v) for v in self.get_many_values(blob_ids)]

    def get_many_values(self, blob_ids: list[bytes]) -> list[bytes | None]:
        """``get_many`` as the stored values (``Location.decode``, ``chunk_location``)."""
        # In key order: neighbouring ids share leaf pages, so a release window maps fewer
        # (a 100k-id batch: 21 us an id sorted against 92 us in the callers' order).
        order = sorted(range(len(blob_ids)), key=blob_ids.__getitem__)
        values: list[bytes | None] = [None] * len(blob_ids)
        with self.env.begin(db=self.blobs, buffers=False) as txn:
            get = txn.get
            for start in range(0, len(order), RELEASE_EVERY):
                window = order[start : start + RELEASE_EVERY]
                if self._filter is None:  # no filter to ask first (under FILTER_FROM entries)
                    for i in window:
                        values[i] = get(blob_ids[i])
                    self._visited(len(window))
                    continue
                visits = 0
                for i in window:
                    if not self._absent(blob_ids[i]):
                        values[i] = get(blob_ids[i])
                        visits += 1
                self._visited(visits)
        return values

    def raw_values(self, ids: list[bytes]) -> dict[bytes, bytes]:
        """{id: its stored value (``Location.decode`` reads it)} for those of ``ids`` (sorted,
        no repeats) that are in the index, in one read transaction.

        Where the ids are dense in their key range (``check``'s walk: nearly every entry
        of the range is a chunk some snapshot uses), the range is read with a cursor, leaf
        after leaf, instead of one B-tree descent per id: a descent in a 5M-entry tree
        reaches a leaf no earlier look-up mapped, so its cost grows with the tree, while a
        scan costs the same per entry at any size. Sparse ids are looked up one by one.
        Pages are released as they go (``RELEASE_EVERY``)."""
        found: dict[bytes, bytes] = {}
        if not ids:
            return found
        lo = int.from_bytes(ids[0][:8], "big")
        hi = int.from_bytes(ids[-1][:8], "big")
        in_range = self.count() * ((hi - lo + 1) / 2**64)
        with self.env.begin(db=self.blobs, buffers=False) as txn:
            if len(ids) * 4 >= in_range:
                wanted = set(ids)
                last = ids[-1]
                cursor = txn.cursor()
                if cursor.set_range(ids[0]):
                    for i, (key, value) in enumerate(cursor.iternext()):
                        if key > last:
                            break
                        if key in wanted:
                            found[key] = value
                        if i % (45 * RELEASE_EVERY) == 0:
                            self.release_pages()
            else:
                for i, blob_id in enumerate(ids):
                    value = txn.get(blob_id)
                    if value is not None:
                        found[blob_id] = value
                    if i % RELEASE_EVERY == 0:
                        self.release_pages()
        self.release_pages()
        return found

    def contains(self, blob_id: bytes) -> bool:
        if self._absent(blob_id):
            return False
        self._visited(1)
        with self.env.begin(db=self.blobs) as txn:
            return txn.get(blob_id) is not None

    def contains_all(self, blob_ids: Iterable[bytes]) -> bool:
        ids = list(blob_ids)
        if any(map(self._absent, ids)):
            return False
        self._visited(len(ids))
        with self.env.begin(db=self.blobs) as txn:
            return all(txn.get(b) is not None for b in ids)

    def add_file(self, name: FileId, entries: Iterable[tuple[BlobId, Location]]) -> None:
        """Record an index file's entries, then its name.

        Entries go in transactions of ADD_BATCH: LMDB copies every page a write
        transaction touches into memory until it commits, and one transaction for an
        index file of 50,000 blobs held about that many 4 KiB pages. The name goes in
        with the last batch, so a crash in between only leaves entries that the next
        sync adds again (putting an entry twice is harmless).
        """
        # All of the file's entries in key order, not each batch: consecutive batches then
        # walk the B-tree front to back, and a leaf page is visited (and mapped) about
        # once for the file instead of once per batch that lands in it.
        ordered = sorted(entries, key=lambda e: e[0])
        last = max(0, (len(ordered) - 1) // ADD_BATCH * ADD_BATCH)  # the last batch's start
        for start in range(0, last, ADD_BATCH):
            self._put(ordered[start : start + ADD_BATCH])
        self._put(ordered[last:], name)
        entries_now = self.count()
        if self._filter is not None and entries_now <= self._filter.capacity:
            self._filter.set_covered(entries_now)
        elif entries_now >= FILTER_FROM:
            self._build_filter(entries_now)  # first time, or grown past its capacity

    def _put(self, entries: list[tuple[BlobId, Location]], name: FileId | None = None) -> None:
        entries.sort(key=lambda e: e[0])  # neighbouring keys share pages: fewer touched
        if self._filter is not None:
            self._filter.add(b for b, _ in entries)  # before the commit: never too little
        with self.env.begin(write=True) as txn:
            for i, (blob_id, loc) in enumerate(entries, 1):
                txn.put(blob_id, loc.encode(), db=self.blobs)
                if i % RELEASE_EVERY == 0:
                    self.release_pages()  # safe mid-transaction: writes are not in the map
            if name is not None:
                txn.put(name.encode(), b"", db=self.files)
        self._visited(len(entries) % RELEASE_EVERY)

    def rebuild(
        self, files: Iterable[tuple[FileId, list[tuple[FileId, bytes]], dict[BlobId, BlobId]]]
    ) -> None:
        """Replace every entry with those of ``files`` (fid, sections, bases) as
        ``decode_index_with_bases`` gives them, in time linear in the number of entries.

        Adding file after file puts each entry into a random leaf of a growing B-tree (a
        5M-entry rebuild after prune: minutes, most of it page faults). Here the entries
        are first spilled to temporary files by their id's first byte, then each bucket is
        sorted and appended (LMDB's append mode: only the B-tree's right edge is written),
        one write transaction per bucket. A blob named by several files takes the last
        file's location, as ``add_file`` file after file would. The file names go in with
        the last bucket: a crash before leaves entries without names, and the next sync
        rebuilds again.

        A Bloom filter that covered every entry (``clear`` carries it) is kept and given
        only the ids it lacks (after prune: none, prune only drops and moves blobs): 7
        bits set in Python for each of 5M ids were 11 of prune's 47 CPU seconds. Raises
        StorageError (temporary files) or lmdb.Error."""
        from casbackup.maintenance.spill import ID_BUCKETS, RecordSpill

        self.clear()  # carries a filter that covered every entry (or one sync_index's did)
        kept, before = self._carried or (None, None)
        self._carried = None
        if kept is not None and not kept.is_current(os.path.join(self.path, FILTER_FILE)):
            kept.close()  # replaced since (a new filter is filled below)
            kept = None
        # key[32] | file seq[4] | location[45]: sorting the records sorts by (id, file).
        spill = RecordSpill(32 + 4 + LOCATION_SIZE, ID_BUCKETS)
        bases = RecordSpill(64, ID_BUCKETS)
        names: list[FileId] = []
        try:
            for seq, (fid, sections, file_bases) in enumerate(files):
                names.append(fid)
                tag = _U32.pack(seq)
                for pack, records in sections:
                    # record: kind id offset stored raw -> value: pack offset stored raw kind
                    middle = tag + bytes.fromhex(pack)
                    spill.add_by_first_byte(
                        [i + middle + lens + k for k, i, lens in _RECORD.iter_unpack(records)]
                    )
                for delta_id, base in file_bases.items():
                    bases.add(delta_id[0], delta_id + base)
            bloom = None
            if spill.count >= FILTER_FROM:
                if kept is not None and spill.count <= kept.capacity:
                    bloom, kept = kept, None
                else:
                    if before is not None:  # every id goes into a new filter
                        before.close()
                        before = None
                    try:
                        path = os.path.join(self.path, FILTER_FILE)
                        bloom = BlobFilter.create(path, 2 * spill.count)
                    except OSError:
                        bloom = None  # only an optimisation
            last = ID_BUCKETS - 1
            for bucket in range(ID_BUCKETS):
                # (id, file seq, value) sorted, then into a dict: a blob named by several
                # files keeps the last file's value, and the keys stay in sorted order.
                # All by sort, zip and dict: no Python step per entry.
                values = dict(map(_KEY_VALUE, sorted(_SPILLED.iter_unpack(spill.read(bucket)))))
                if _has_delta(values):
                    base_of = {r[:32]: r[32:] for r in bases.records(bucket)}
                    for key, value in values.items():
                        if value[-1] in DELTA_KINDS:
                            base = base_of.get(key)
                            if base is None:
                                raise FormatError("index names a delta blob without a base")
                            values[key] = value + base
                if bloom is not None:  # before the commit: never too little
                    bloom.add(values if before is None else values.keys() - before.bucket(bucket))
                with self.env.begin(write=True) as txn:
                    if values:
                        txn.cursor(db=self.blobs).putmulti(values.items(), append=True)
                    if bucket == last:
                        for fid in names:
                            txn.put(fid.encode(), b"", db=self.files)
                self.release_pages()
            if bloom is not None:
                entries = self.count()
                if before is not None and bloom.fill() > FULL_FILL:
                    bloom.close()  # kept too long: the bits of ids gone since make it vague
                    self._build_filter(entries)
                else:
                    bloom.set_covered(entries)
                    self._filter = bloom
        finally:
            spill.close()
            bases.close()
            if before is not None:
                before.close()
            if kept is not None:
                kept.close()

    def _carry_filter(self) -> None:
        """Before the entries go: keep this cache's filter and the ids in LMDB for the
        next ``rebuild`` (``_carried``), if the filter is the file in place, covers every
        entry and is no fuller than a new one at its capacity. Only an optimisation: a
        failure to spill the ids carries nothing. Other processes' maps of the filter stay
        right: bits are only added, each before its entry's commit."""
        from casbackup.maintenance.spill import IdSet

        bloom = self._filter  # None: perhaps carried already (sync_index, then rebuild)
        if bloom is None or not bloom.is_current(os.path.join(self.path, FILTER_FILE)):
            return
        if bloom.covered != self.count() or bloom.fill() > FULL_FILL:
            return
        self._drop_carried()  # rebuild adds what a carried filter lacks: any one will do
        ids = None
        try:
            ids = IdSet()
            with self.env.begin(db=self.blobs) as txn:
                keys = txn.cursor().iternext(keys=True, values=False)
                while batch := list(islice(keys, 45 * RELEASE_EVERY)):
                    ids.update(batch)
                    self.release_pages()
        except StorageError:
            if ids is not None:
                ids.close()
            return
        self._filter = None  # not closed by ``_drop_filter``: carried
        self._carried = (bloom, ids)

    def _drop_carried(self) -> None:
        if self._carried is not None:
            bloom, ids = self._carried
            self._carried = None
            bloom.close()
            ids.close()

    def clear(self) -> None:
        """Remove every entry and index file name (a filter that covered them is carried
        to the next ``rebuild``: ``_carry_filter``)."""
        self._carry_filter()
        self._drop_filter()
        with self.env.begin(write=True) as txn:
            txn.drop(self.blobs, delete=False)
            txn.drop(self.files, delete=False)
        # Dropping walks the whole B-tree: 115 MiB of a 5M-entry cache's pages stayed
        # mapped (and counted) in prune until the next release.
        self.release_pages()

    def count(self) -> int:
        with self.env.begin(db=self.blobs) as txn:
            return int(txn.stat(self.blobs)["entries"])

    def sync(self) -> None:
        self.env.sync(True)
