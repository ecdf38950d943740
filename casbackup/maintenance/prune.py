"""``prune``: reclaim the space of blobs no snapshot needs, in an order that cannot lose data.

Plan (read-only, :func:`plan_prune`): walk every snapshot's trees to find the used
blobs, read the authoritative index files (not the local cache), and sort each pack
into keep / repack / delete. Execute (:func:`execute_prune`), in this order:

1. repack: copy the used blobs of partly used packs, envelopes as they are (no
   re-encryption), into new packs; each is durable before the next step;
2. write the new index naming every kept pack and every new pack, in files of at most
   INDEX_FILE_BLOBS entries; only the last one, written when all others are durable,
   has a ``supersedes`` list, naming every old index file;
3. delete the old index files;
4. delete unused and repacked packs (and unindexed packs older than a margin);
5. delete stray temp files older than the margin.

An interruption anywhere leaves a consistent repository: before 2 the new packs are
merely unindexed; during 2 the new files only repeat entries of durable packs while the
old ones stay in force; between 2 and 3 readers ignore the superseded index files; after
3 every pack that is still to be deleted is named by no index. Running prune again
finishes the job. Prune must run under the repository's exclusive lock.

Memory does not grow with the number of blobs: the used ids and the index entries go to
temporary files split by the ids' first byte (``spill.py``), and every pass over them
loads one such bucket (about 20,000 entries with 5 million blobs); per pack a few
integers are held.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from casbackup.errors import CasError, IntegrityError, NotFound
from casbackup.maintenance.spill import ID_BUCKETS, IdSet, RecordSpill
from casbackup.maintenance.usage import collect_used_blobs
from casbackup.repo import codec, delta
from casbackup.repo.ids import BlobId, FileId, Kind
from casbackup.repo.index import (
    RECORD_SIZE,
    Location,
    encode_index_records,
    encode_record,
    iter_records,
)
from casbackup.repo.pack import PackWriter, pack_name
from casbackup.repo.repository import Repository
from casbackup.reporter import NULL_REPORTER, Progress, Reporter
from casbackup.store.base import skipped_names
from casbackup.store.names import TOP_FOLDERS
from casbackup.units import plural

# A pack no index names may belong to a backup whose index is not written yet; the
# exclusive lock already excludes that, this margin also covers a stale-looking lock.
UNINDEXED_MARGIN_S = 3600.0
_HEADER_OVERHEAD = 25 + 16 + 1 + 5 + 4  # envelope prefix, tag, codec, header prefix, trailer
_HEADER_ENTRY = 41
_INDEX_OVERHEAD = 25 + 16 + 1 + 1 + 4 + 4
_INDEX_PACK = 36
_INDEX_BLOB = 45
# Entries per index file prune writes: each file is read whole (about 4.5 MiB here), so
# one file of 5 million entries would cost every reader 225 MiB at once.
INDEX_FILE_BLOBS = 100_000


@dataclass(frozen=True)
class PruneOptions:
    max_unused: float = 0.05  # repack a pack when more than this share of its blobs is unused
    max_repack_size: int | None = None  # bytes of packs to repack in one run (None: no limit)
    unindexed_margin: float = UNINDEXED_MARGIN_S
    verify_copies: bool = True  # authenticate every blob before copying it to a new pack
    keep_trees: tuple[BlobId, ...] = ()  # more roots to keep (records that name trees)


@dataclass(frozen=True)
class PackUse:
    """One pack's share of used and unused blobs (counts and stored bytes)."""

    pack: FileId
    size: int  # the pack file's size
    used_blobs: int
    used_bytes: int
    unused_blobs: int
    unused_bytes: int

    @property
    def unused_share(self) -> float:
        total = self.used_bytes + self.unused_bytes
        return self.unused_bytes / total if total else 1.0


@dataclass(frozen=True)
class PrunePlan:
    """What prune will do. Immutable; printed by ``prune --dry-run``.

    ``work`` holds the plan's temporary files (the index entries, per id bucket, and the
    used ids) that ``execute_prune`` reads; ``close`` removes them (collecting the plan
    does too)."""

    snapshots: int
    used_blobs: int
    packs_total: int
    bytes_total: int  # all packs' sizes
    keep: tuple[PackUse, ...]
    repack: tuple[PackUse, ...]
    delete: tuple[PackUse, ...]  # no used blob
    unindexed: tuple[tuple[FileId, int], ...]  # (pack, size) named by no index, old enough
    unindexed_young: int  # unindexed packs left alone because they are recent
    old_index_files: tuple[tuple[FileId, int], ...]
    temp_files: tuple[str, ...]
    missing_packs: tuple[FileId, ...]  # named by the index but gone; no used blob in them
    duplicate_blobs: int  # used blobs stored in more than one pack
    work: _Work | None = field(default=None, repr=False, compare=False)

    @property
    def rewrite_index(self) -> bool:
        return bool(
            self.repack
            or self.delete
            or self.missing_packs
            or len(self.old_index_files) > self.new_index_files
        )

    @property
    def index_blobs(self) -> int:
        """Entries the new index will hold: every blob of kept packs, the repacked ones."""
        return sum(p.used_blobs + p.unused_blobs for p in self.keep) + self.blobs_rewritten

    @property
    def new_index_files(self) -> int:
        """How many index files the new index takes (INDEX_FILE_BLOBS entries each)."""
        return max(1, -(-self.index_blobs // INDEX_FILE_BLOBS))

    @property
    def bytes_rewritten(self) -> int:
        return sum(p.used_bytes for p in self.repack)

    @property
    def blobs_rewritten(self) -> int:
        return sum(p.used_blobs for p in self.repack)

    @property
    def bytes_deleted(self) -> int:
        return sum(p.size for p in (*self.delete, *self.repack)) + sum(s for _, s in self.unindexed)

    @property
    def unused_bytes_kept(self) -> int:
        return sum(p.unused_bytes for p in self.keep)

    def new_pack_estimate(self, pack_size: int) -> int:
        """Bytes the repacked blobs will take, headers included (uncompressed, so an upper bound)."""
        if not self.repack:
            return 0
        packs = max(1, -(-self.bytes_rewritten // max(pack_size, 1)))
        return (
            self.bytes_rewritten + packs * _HEADER_OVERHEAD + self.blobs_rewritten * _HEADER_ENTRY
        )

    def new_index_estimate(self) -> int:
        if not self.rewrite_index:
            return 0
        packs = len(self.keep) + max(1, len(self.repack))
        return (
            self.new_index_files * _INDEX_OVERHEAD + 32 * len(self.old_index_files)
            + packs * _INDEX_PACK + self.index_blobs * _INDEX_BLOB
        )  # fmt: skip

    def bytes_freed(self, pack_size: int) -> int:
        """Expected shrinkage of the repository: packs and index files removed minus written."""
        index_freed = (
            sum(s for _, s in self.old_index_files) - self.new_index_estimate()
            if self.rewrite_index
            else 0
        )
        return self.bytes_deleted - self.new_pack_estimate(pack_size) + index_freed

    @property
    def empty(self) -> bool:
        return not (self.rewrite_index or self.unindexed or self.temp_files)

    def close(self) -> None:
        """Remove the plan's temporary files (``execute_prune`` needs them: call it after)."""
        if self.work is not None:
            self.work.close()


@dataclass
class PruneResult:
    packs_written: list[FileId] = field(default_factory=list)
    bytes_written: int = 0
    new_index: FileId | None = None  # the last new index file: the one that supersedes
    index_files_written: int = 0
    index_files_deleted: int = 0
    packs_deleted: int = 0
    bytes_deleted: int = 0
    temp_files_deleted: int = 0
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- plan
# Every index entry, spilled by its blob id's first byte: the pack's number in
# ``_Work.packs``, then the entry's record exactly as the index file holds it.
_ENTRY = struct.Struct(">IB32sIII")
_PACK_NO = struct.Struct(">I")
PACK_GROUPS = 64  # the entries the new index keeps, spilled by pack number modulo this


class _Work:
    """What planning learned that executing needs, in temporary files (see spill.py).

    Memory is a few integers per pack and one id bucket at a time; nothing per blob."""

    def __init__(self) -> None:
        self.used = IdSet()
        self.entries = RecordSpill(_ENTRY.size, ID_BUCKETS, folder=None)
        # Every delta blob's base (delta id[32] | base id[32]), by the delta's first byte,
        # from the index files: the used set is closed over them, and copied deltas and
        # the new index name them (repo/delta.py).
        self.bases = RecordSpill(64, ID_BUCKETS, folder=None)
        self.packs: list[FileId] = []  # pack number -> id
        self.numbers: dict[FileId, int] = {}
        self.blobs: list[int] = []  # per pack number: entries (each blob once per pack)
        self.bytes: list[int] = []  # their stored bytes
        self.used_copies: list[int] = []  # stored bytes of used blobs, counting every copy
        self.present: list[bool] = []

    def close(self) -> None:
        self.used.close()
        self.entries.close()
        self.bases.close()

    def bases_of(self, ids: Iterable[bytes]) -> dict[bytes, bytes]:
        """{delta id: base id} for ``ids`` (reads only the buckets they fall in)."""
        wanted: dict[int, set[bytes]] = {}
        for blob_id in ids:
            wanted.setdefault(blob_id[0], set()).add(bytes(blob_id))
        found: dict[bytes, bytes] = {}
        for bucket, want in wanted.items():
            for record in self.bases.records(bucket):
                if record[:32] in want:
                    found[bytes(record[:32])] = bytes(record[32:])
        return found

    def number(self, pack: FileId) -> int:
        n = self.numbers.get(pack)
        if n is None:
            n = self.numbers[pack] = len(self.packs)
            self.packs.append(pack)
        return n

    def add_section(self, pack: FileId, records: bytes) -> None:
        prefix = _PACK_NO.pack(self.number(pack))
        add = self.entries.add
        for i in range(0, len(records), RECORD_SIZE):
            add(records[i + 1], prefix + records[i : i + RECORD_SIZE])

    def copies(self, bucket: int) -> dict[bytes, dict[int, bytes]]:
        """Blob id -> {pack number: its entry} for the blobs of one id bucket (a pack
        named by several index files counts its blob once)."""
        found: dict[bytes, dict[int, bytes]] = {}
        data = self.entries.read(bucket)
        size = _ENTRY.size
        for i in range(0, len(data), size):
            entry = data[i : i + size]
            (n,) = _PACK_NO.unpack_from(entry)
            found.setdefault(entry[5:37], {}).setdefault(n, entry)
        return found

    def chosen(self, candidates: Iterable[int]) -> int:
        """The copy of a used blob stored twice that counts as used: the pack used most
        otherwise, so the other copy can go with its pack rather than force a repack."""
        return max(candidates, key=lambda n: (self.used_copies[n], self.packs[n]))


def _live_index_files(repo: Repository) -> tuple[list[FileId], list[tuple[FileId, int]]]:
    """(readable index files no other one supersedes, every index file with its size).
    A damaged one stops prune: its packs would otherwise look unindexed, and their
    blobs unused. One file in memory at a time."""
    listed = sorted((FileId(n.rsplit("/", 1)[1]), s) for n, s in repo.backend.list("index/"))
    superseded: set[str] = set()
    for fid, _size in listed:
        superseded.update(_load_sections(repo, fid)[0])
    return [f for f, _ in listed if f not in superseded], listed


def _load_sections(
    repo: Repository, fid: FileId
) -> tuple[tuple[FileId, ...], list[tuple[FileId, bytes]], dict[BlobId, BlobId]]:
    try:
        return repo.load_index_with_bases(fid)
    except CasError as exc:
        raise IntegrityError(
            f"index file {fid[:12]} is unreadable ({exc}); run 'casbackup repair index' first"
        ) from None


def plan_prune(
    repo: Repository, options: PruneOptions = PruneOptions(), reporter: Reporter = NULL_REPORTER
) -> PrunePlan:
    """Plan a prune (read-only). Raises IntegrityError when anything needed is unreadable
    or missing: prune then deletes nothing. Close the plan (or execute it) when done."""
    work = _Work()
    try:
        return _plan(repo, options, reporter, work)
    except BaseException:
        work.close()
        raise


def _plan(repo: Repository, options: PruneOptions, reporter: Reporter, work: _Work) -> PrunePlan:
    now = time.time()
    snapshots = collect_used_blobs(repo, work.used, reporter, options.keep_trees)
    live, all_index_files = _live_index_files(repo)
    present = {FileId(n.rsplit("/", 1)[1]): s for n, s in repo.backend.list("data/")}
    for fid in live:
        _, sections, bases = _load_sections(repo, fid)
        for pack, records in sections:
            work.add_section(pack, records)
        for blob_id, base in bases.items():
            work.bases.add(blob_id[0], blob_id + base)
    # A used delta keeps its whole chain of bases alive (repo/delta.py).
    delta.close_over_spilled_bases(
        work.used.bucket,
        work.used.add,
        lambda b: ((r[:32], r[32:]) for r in work.bases.records(b)),
        ID_BUCKETS,
        lambda: RecordSpill(32, ID_BUCKETS),
    )
    count = len(work.packs)
    work.blobs, work.bytes, work.used_copies = [0] * count, [0] * count, [0] * count
    work.present = [p in present for p in work.packs]

    # Pass 1, one id bucket at a time: per pack, its blobs and how much of it is used.
    not_indexed = used_total = 0
    for bucket in range(ID_BUCKETS):
        used = work.used.bucket(bucket)
        used_total += len(used)
        copies = work.copies(bucket)
        not_indexed += sum(1 for b in used if b not in copies)
        for blob_id, where in copies.items():
            is_used = blob_id in used
            for n, entry in where.items():
                stored = _ENTRY.unpack(entry)[4]
                work.blobs[n] += 1
                work.bytes[n] += stored
                if is_used:
                    work.used_copies[n] += stored
    if not_indexed:
        raise IntegrityError(
            f"{plural(not_indexed, 'blob')} that snapshots need are not in the index; "
            "run 'casbackup repair index' (and 'check') before pruning"
        )

    # Pass 2: which copy of each used blob counts (see ``_Work.chosen``).
    chosen_blobs, chosen_bytes, needed = [0] * count, [0] * count, [0] * count
    duplicates = 0
    for bucket in range(ID_BUCKETS):
        used = work.used.bucket(bucket)
        for blob_id, where in work.copies(bucket).items():
            if blob_id not in used:
                continue
            candidates = [n for n in where if work.present[n]]
            if not candidates:
                for n in where:
                    needed[n] += 1
                continue
            if len(candidates) > 1:
                duplicates += 1
            n = work.chosen(candidates)
            chosen_blobs[n] += 1
            chosen_bytes[n] += _ENTRY.unpack(where[n])[4]
    missing = sorted(p for p, here in zip(work.packs, work.present, strict=True) if not here)
    for pack in missing:
        if needed[work.numbers[pack]]:
            raise IntegrityError(
                f"pack {pack[:12]} is missing but holds "
                f"{plural(needed[work.numbers[pack]], 'blob')} that snapshots need; "
                "run 'casbackup check' to see what is affected"
            )

    keep, repack_candidates, delete = [], [], []
    for pack in sorted(p for p in work.packs if p in present):
        n = work.numbers[pack]
        use = PackUse(
            pack, present[pack], chosen_blobs[n], chosen_bytes[n],
            work.blobs[n] - chosen_blobs[n], work.bytes[n] - chosen_bytes[n],
        )  # fmt: skip
        if not use.used_blobs:
            delete.append(use)
        elif use.unused_blobs and use.unused_share > options.max_unused:
            repack_candidates.append(use)
        else:
            keep.append(use)

    # Most wasteful first, within the byte budget; the rest wait for the next prune.
    repack = []
    budget = options.max_repack_size
    for use in sorted(repack_candidates, key=lambda u: (-u.unused_share, u.pack)):
        if budget is not None and use.size > budget:
            keep.append(use)
            continue
        repack.append(use)
        if budget is not None:
            budget -= use.size
    keep.sort(key=lambda u: u.pack)

    modified = getattr(repo.backend, "modified", None)
    unindexed, young = [], 0
    for pack in sorted(set(present) - set(work.numbers)):
        try:
            age = now - modified(pack_name(pack)) if modified else 0.0
        except CasError:
            continue  # gone, or replaced by something that is not a pack: left alone
        if modified is not None and age >= options.unindexed_margin:
            unindexed.append((pack, present[pack]))
        else:
            young += 1
    temp_files = []
    if modified is not None and hasattr(repo.backend, "list_temp_files"):
        for name in sorted(repo.backend.list_temp_files()):
            try:
                if now - modified(name) >= options.unindexed_margin:
                    temp_files.append(name)
            except CasError:
                continue  # gone, or not a regular file any more: never touched

    _refuse_incomplete_listings(repo)
    return PrunePlan(
        snapshots=snapshots, used_blobs=used_total, packs_total=len(present),
        bytes_total=sum(present.values()), keep=tuple(keep), repack=tuple(repack),
        delete=tuple(delete), unindexed=tuple(unindexed), unindexed_young=young,
        old_index_files=tuple(all_index_files), temp_files=tuple(temp_files),
        missing_packs=tuple(missing), duplicate_blobs=duplicates, work=work,
    )  # fmt: skip


def _refuse_incomplete_listings(repo: Repository) -> None:
    """What is used is known only if every snapshot and index file was listed: a folder
    replaced by a symlink, or a snapshot under a planted link, would make data that a
    snapshot needs look unused. Prune then deletes nothing (as for an unreadable snapshot)."""
    blocking = [
        name
        for name in skipped_names(repo.backend)
        if name in TOP_FOLDERS or name.startswith(("snapshots/", "index/"))
    ]
    if blocking:
        raise IntegrityError(
            f"{blocking[0]!r} in the repository is not a folder or object of its format; prune "
            "cannot tell which data is used and deleted nothing (run 'casbackup check')"
        )


# ---------------------------------------------------------------------------- execute
def execute_prune(
    repo: Repository,
    plan: PrunePlan,
    options: PruneOptions = PruneOptions(),
    reporter: Reporter = NULL_REPORTER,
) -> PruneResult:
    """Carry ``plan`` out in the crash-safe order (module docstring); closes the plan."""
    result = PruneResult()
    try:
        if plan.rewrite_index:
            if plan.work is None:
                raise ValueError("this plan's temporary files are gone (closed)")
            _rewrite_index(repo, plan, plan.work, options, result, reporter)
            for fid, _size in plan.old_index_files:
                _delete(repo, f"index/{fid}")
                result.index_files_deleted += 1
    finally:
        plan.close()
    doomed = [(u.pack, u.size) for u in (*plan.delete, *plan.repack)] if plan.rewrite_index else []
    doomed += list(plan.unindexed)
    progress = Progress(phase="deleting packs", files_total=len(doomed))
    for pack, size in doomed:
        if _delete(repo, pack_name(pack)):
            result.packs_deleted += 1
            result.bytes_deleted += size
        progress.files_done += 1
        reporter.progress(progress)
    remove_temp = getattr(repo.backend, "remove_temp", None)
    for name in plan.temp_files if remove_temp is not None else ():
        try:
            remove_temp(name)  # a regular temp file of this run's listing, never a link's target
            result.temp_files_deleted += 1
        except NotFound:
            continue
        except CasError as exc:
            result.warnings.append(f"could not remove temp file {name}: {exc}")
    repo.sync_index()
    return result


def _delete(repo: Repository, name: str) -> bool:
    try:
        repo.backend.delete(name)
    except NotFound:
        return False  # gone already: a previous, interrupted prune got this far
    return True


class _IndexWriter:
    """Writes the new index as files of at most INDEX_FILE_BLOBS entries.

    Every file but the last supersedes nothing: until the last one is durable the old
    files stay in force, and the new ones only repeat entries of durable packs (readers
    take a blob named twice from either). The last one supersedes every old file."""

    def __init__(
        self, repo: Repository, supersedes: list[FileId], result: PruneResult, bases: _Work
    ) -> None:
        self.repo = repo
        self.bases = bases
        self.supersedes = supersedes
        self.result = result
        self.sections: list[tuple[FileId, bytes]] = []
        self.blobs = 0

    def add(self, pack: FileId, records: bytes) -> None:
        n = len(records) // RECORD_SIZE
        if self.sections and self.blobs + n > INDEX_FILE_BLOBS:
            self._write(())
        self.sections.append((pack, records))
        self.blobs += n

    def _write(self, supersedes: Iterable[FileId]) -> FileId:
        deltas = [
            blob_id
            for _, records in self.sections
            for kind, blob_id, *_ in iter_records(records)
            if kind == Kind.DELTA
        ]
        bases = self.bases.bases_of(deltas) if deltas else None
        fid = self.repo.save_file_object(
            "index", Kind.INDEX, encode_index_records(self.sections, supersedes, bases)
        )
        self.sections, self.blobs = [], 0
        self.result.index_files_written += 1
        return fid

    def finish(self) -> None:
        self.result.new_index = self._write(self.supersedes)


def _rewrite_index(
    repo: Repository,
    plan: PrunePlan,
    work: _Work,
    options: PruneOptions,
    result: PruneResult,
    reporter: Reporter,
) -> None:
    """Steps 1 and 2: repack, then the new index (its last file supersedes the old)."""
    keep = {work.numbers[u.pack] for u in plan.keep}
    repack = {work.numbers[u.pack] for u in plan.repack}
    # Pass 3 over the id buckets: the entries the new index keeps (every entry of a kept
    # pack) and the blobs to copy (the chosen copy in a repacked pack), by pack group.
    kept = RecordSpill(_ENTRY.size, PACK_GROUPS)
    try:
        for bucket in range(ID_BUCKETS):
            used = work.used.bucket(bucket)
            for blob_id, where in work.copies(bucket).items():
                chosen = None
                if blob_id in used:
                    chosen = work.chosen(n for n in where if work.present[n])
                for n, entry in where.items():
                    if n in keep or (n in repack and n == chosen):
                        kept.add(n % PACK_GROUPS, entry)
        writer = _IndexWriter(repo, [f for f, _ in plan.old_index_files], result, work)
        copier = _Copier(repo, options, result, writer, plan, reporter, work)
        for group in range(PACK_GROUPS):
            by_pack: dict[int, bytearray] = {}
            for entry in kept.records(group):
                by_pack.setdefault(_PACK_NO.unpack_from(entry)[0], bytearray()).extend(entry)
            for n in sorted(by_pack, key=lambda n: work.packs[n]):
                entries = bytes(by_pack.pop(n))
                if n in keep:
                    records = b"".join(
                        entries[i + 4 : i + _ENTRY.size]
                        for i in range(0, len(entries), _ENTRY.size)
                    )
                    writer.add(work.packs[n], records)
                else:
                    copier.copy(work.packs[n], entries)
        copier.finish()
        writer.finish()
    finally:
        kept.close()


class _Copier:
    """Step 1: copies used blob envelopes of repacked packs, unchanged, into new packs;
    each new pack is durable before the index writer names it."""

    def __init__(
        self,
        repo: Repository,
        options: PruneOptions,
        result: PruneResult,
        writer: _IndexWriter,
        plan: PrunePlan,
        reporter: Reporter,
        work: _Work,
    ) -> None:
        self.repo, self.options, self.result, self.writer = repo, options, result, writer
        self.reporter = reporter
        self.work = work
        # Trees and data stay in separate packs, as the backup writes them (repo_format.md).
        self.writers = {Kind.DATA: PackWriter(), Kind.TREE: PackWriter()}
        self.progress = Progress(
            phase="repacking", files_total=len(plan.repack), bytes_total=plan.bytes_rewritten
        )

    def _store(self, w: PackWriter) -> None:
        pack_id, data, written = w.finish(self.repo.sealer)
        self.repo.backend.put(pack_name(pack_id), data)  # durable before the index names it
        self.writer.add(
            pack_id,
            b"".join(
                encode_record(e.id, Location(pack_id, e.offset, e.stored_len, e.raw_len, e.kind))
                for e in written
            ),
        )
        self.result.packs_written.append(pack_id)
        self.result.bytes_written += len(data)

    def copy(self, pack: FileId, entries: bytes) -> None:
        data = self.repo.backend.get(pack_name(pack))
        records = [_ENTRY.unpack_from(entries, i) for i in range(0, len(entries), _ENTRY.size)]
        bases = self.work.bases_of(r[2] for r in records if r[1] == Kind.DELTA)
        for _n, kind, blob_id, offset, stored_len, raw_len in records:
            base = bases.get(blob_id) if kind == Kind.DELTA else None
            if kind == Kind.DELTA and base is None:
                raise IntegrityError(f"delta blob {blob_id.hex()[:16]} has no base in the index")
            loc = Location(
                pack, offset, stored_len, raw_len, Kind(kind), BlobId(base) if base else None
            )
            envelope = data[offset : offset + stored_len]
            if len(envelope) != stored_len:
                raise IntegrityError(f"pack {pack[:12]} is shorter than its index says")
            if self.options.verify_copies:
                _verify(self.repo, BlobId(blob_id), loc, envelope, pack)
            group = Kind.TREE if loc.kind == Kind.TREE else Kind.DATA
            writer = self.writers[group]
            writer.add(loc.kind, BlobId(blob_id), envelope, raw_len, loc.base)
            self.progress.bytes_done += stored_len
            if writer.size >= self.repo.config.pack_size:
                self._store(writer)
                self.writers[group] = PackWriter()
        self.progress.files_done += 1
        self.reporter.progress(self.progress)

    def finish(self) -> None:
        for writer in self.writers.values():
            if writer.entries:
                self._store(writer)


def _verify(repo: Repository, blob_id: BlobId, loc: Location, envelope: bytes, pack: str) -> None:
    """A damaged blob must not be copied into a new pack as if it were good (a delta is
    applied to its base, itself resolved and checked, before it is copied)."""
    try:
        if loc.kind == Kind.DELTA:
            payload = delta.open_delta(repo.opener, blob_id, envelope)
            if loc.base is None or delta.delta_base(payload) != loc.base:
                raise IntegrityError("its base is not the one the index names")
            plain = delta.apply_delta(payload, repo.load_blob(loc.base, Kind.DATA), loc.raw_len)
        else:
            plain = codec.decompress(repo.opener.open(loc.kind, blob_id, envelope))
    except CasError as exc:
        raise IntegrityError(
            f"blob {blob_id.hex()[:16]} in pack {pack[:12]} is damaged ({exc}); "
            "prune stopped before deleting anything: run 'casbackup check --read-data'"
        ) from None
    if len(plain) != loc.raw_len or repo.blob_id(plain) != blob_id:
        raise IntegrityError(
            f"blob {blob_id.hex()[:16]} in pack {pack[:12]} does not match its id; "
            "prune stopped before deleting anything: run 'casbackup check --read-data'"
        )


def prune(
    repo: Repository, options: PruneOptions = PruneOptions(), reporter: Reporter = NULL_REPORTER
) -> tuple[PrunePlan, PruneResult]:
    plan = plan_prune(repo, options, reporter)
    return plan, execute_prune(repo, plan, options, reporter)
