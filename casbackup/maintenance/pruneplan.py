"""Planning a prune (read-only): which packs to keep, repack or delete, and why.

:func:`plan_prune` walks every snapshot's trees to find the used blobs, reads the
authoritative index files (not the local cache), and sorts each pack into keep / repack /
delete; the immutable :class:`PrunePlan` it returns is printed (``--dry-run``) or carried
out once by ``execute_prune`` (prune.py, whose docstring gives the crash-safe order).
Memory does not grow with the number of blobs: see prune.py.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import compress, groupby
from operator import itemgetter

from casbackup.errors import CasError, IntegrityError, StorageError
from casbackup.maintenance.spill import ID_BUCKETS, IdSet, RecordSpill
from casbackup.maintenance.usage import collect_used_blobs
from casbackup.repo import delta
from casbackup.repo.ids import BlobId, FileId
from casbackup.repo.index import (
    RECORD_SIZE,
)
from casbackup.repo.pack import pack_name
from casbackup.repo.repository import Repository
from casbackup.reporter import NULL_REPORTER, Reporter
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
    # Snapshots to count as gone: what ``forget --prune --dry-run`` would forget, so its
    # plan shows what the prune after the forget would do. Such a plan is only for showing:
    # the snapshots are still there, and execute_prune refuses it.
    ignore_snapshots: frozenset[str] = frozenset()


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
    hypothetical: bool = False  # planned with ignore_snapshots: shown, never executed
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
        """Bytes the repacked blobs will take, headers included (an upper bound).

        Headers are counted uncompressed, but the old packs' headers are compressed: for
        small blobs that alone made the estimate larger than the packs it replaces (a
        negative ``bytes_freed``). The blobs are copied as stored, so they never take more
        than they took in their old packs less the unused blobs: the estimate is capped there.
        """
        if not self.repack:
            return 0
        packs = max(1, -(-self.bytes_rewritten // max(pack_size, 1)))
        headers = packs * _HEADER_OVERHEAD + self.blobs_rewritten * _HEADER_ENTRY
        return min(
            self.bytes_rewritten + headers, sum(p.size - p.unused_bytes for p in self.repack)
        )

    def new_index_estimate(self) -> int:
        """Bytes of the new index (an upper bound). Entries are counted uncompressed while the
        old index files are compressed, so the estimate is capped at the old files' total
        plus the list of files it supersedes: the new index names no blob they do not."""
        if not self.rewrite_index:
            return 0
        packs = len(self.keep) + max(1, len(self.repack))
        supersedes = 32 * len(self.old_index_files)
        estimate = (
            self.new_index_files * _INDEX_OVERHEAD + supersedes
            + packs * _INDEX_PACK + self.index_blobs * _INDEX_BLOB
        )  # fmt: skip
        return min(estimate, sum(s for _, s in self.old_index_files) + supersedes)

    def bytes_freed(self, pack_size: int) -> int:
        """Expected shrinkage of the repository (a lower bound, never below zero): packs and
        index files removed minus written. Only a plan that merely merges index files can
        grow the repository, by their supersedes list (32 bytes a file): that counts as 0."""
        index_freed = (
            sum(s for _, s in self.old_index_files) - self.new_index_estimate()
            if self.rewrite_index
            else 0
        )
        return max(self.bytes_deleted - self.new_pack_estimate(pack_size) + index_freed, 0)

    @property
    def empty(self) -> bool:
        return not (self.rewrite_index or self.unindexed or self.temp_files)

    def close(self) -> None:
        """Remove the plan's temporary files (``execute_prune`` needs them: call it after)."""
        if self.work is not None:
            self.work.close()


# ---------------------------------------------------------------------------- plan
# Every index entry, spilled by its blob id's first byte: the pack's number in
# ``_Work.packs``, then the entry's record exactly as the index file holds it.
_ENTRY = struct.Struct(">IB32sIII")
_PACK_NO = struct.Struct(">I")
_RECORD = struct.Struct(f"{RECORD_SIZE}s")
_ROW = struct.Struct(">Ix32s4xI4x")  # an entry's pack number, blob id and stored length
_FIRST = itemgetter(0)


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
        # Id buckets where a blob is in more than one pack: gone through entry by entry.
        self.several_copies: list[int] = []

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
        # By the blob id's first byte: byte 5 of an entry, after the pack number and kind.
        self.entries.add_by_byte([prefix + r for (r,) in _RECORD.iter_unpack(records)], 5)

    def columns(self, bucket: int) -> tuple[tuple[int, ...], tuple[bytes, ...], tuple[int, ...]]:
        """(pack numbers, blob ids, stored lengths) of one id bucket's entries, in the
        order added (one pack's entries together), as columns: no Python step per entry."""
        rows = _ROW.iter_unpack(self.entries.read(bucket))
        return tuple(zip(*rows, strict=True)) or ((), (), ())  # type: ignore[return-value]

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
    except StorageError as exc:  # permissions, I/O: not damage, and no repair would help
        raise StorageError(
            f"index file {fid[:12]} cannot be read ({exc}); prune deleted nothing"
        ) from None
    except CasError as exc:
        raise IntegrityError(
            f"index file {fid[:12]} is unreadable ({exc}); run 'casbackup repair index' first"
        ) from None


def plan_prune(
    repo: Repository, options: PruneOptions = PruneOptions(), reporter: Reporter = NULL_REPORTER
) -> PrunePlan:
    """Plan a prune (read-only). Raises IntegrityError when anything needed is damaged or
    missing, StorageError when the store cannot read it: prune then deletes nothing. Close the plan (or execute it) when done."""
    work = _Work()
    try:
        return _plan(repo, options, reporter, work)
    except BaseException:
        work.close()
        raise


def _plan(repo: Repository, options: PruneOptions, reporter: Reporter, work: _Work) -> PrunePlan:
    now = time.time()
    snapshots = collect_used_blobs(
        repo, work.used, reporter, options.keep_trees, skip=options.ignore_snapshots
    )
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
    # In a bucket where each blob is in one pack only (nearly always), pass 2's choice of
    # copy is made too, by columns: no Python step per entry, only per run of one pack's
    # entries. Buckets with a blob in several packs are done entry by entry.
    chosen_blobs, chosen_bytes, needed = [0] * count, [0] * count, [0] * count
    not_indexed = used_total = 0
    for bucket in range(ID_BUCKETS):
        used = work.used.bucket(bucket)
        used_total += len(used)
        numbers, ids, stored = work.columns(bucket)
        in_bucket = set(ids)
        not_indexed += len(used.difference(in_bucket))
        if len(in_bucket) != len(ids):
            work.several_copies.append(bucket)
            _count_copies(work, bucket, used)
            continue
        del in_bucket
        rows = zip(numbers, stored, map(used.__contains__, ids), strict=True)
        for n, run in groupby(rows, key=_FIRST):
            _, sizes, is_used = zip(*run, strict=True)
            used_bytes = sum(compress(sizes, is_used))
            used_blobs = sum(is_used)
            work.blobs[n] += len(sizes)
            work.bytes[n] += sum(sizes)
            work.used_copies[n] += used_bytes
            if work.present[n]:
                chosen_blobs[n] += used_blobs
                chosen_bytes[n] += used_bytes
            else:
                needed[n] += used_blobs
    if not_indexed:
        raise IntegrityError(
            f"{plural(not_indexed, 'blob')} that snapshots need are not in the index; "
            "run 'casbackup repair index' (and 'check') before pruning"
        )

    # Pass 2, over the buckets with a blob in several packs: which copy of each used blob
    # counts (see ``_Work.chosen``).
    duplicates = 0
    for bucket in work.several_copies:
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
            n = candidates[0] if len(candidates) == 1 else work.chosen(candidates)
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
        missing_packs=tuple(missing), duplicate_blobs=duplicates,
        hypothetical=bool(options.ignore_snapshots), work=work,
    )  # fmt: skip


def _count_copies(work: _Work, bucket: int, used: frozenset[bytes]) -> None:
    """Pass 1 for a bucket where some blob is in several packs, entry by entry."""
    for blob_id, where in work.copies(bucket).items():
        is_used = blob_id in used
        for n, entry in where.items():
            stored = _ENTRY.unpack(entry)[4]
            work.blobs[n] += 1
            work.bytes[n] += stored
            if is_used:
                work.used_copies[n] += stored


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
