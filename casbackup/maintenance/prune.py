"""``prune``: reclaim the space of blobs no snapshot needs, in an order that cannot lose data.

Plan (read-only, :func:`plan_prune`): walk every snapshot's trees to find the used
blobs, read the authoritative index files (not the local cache), and sort each pack
into keep / repack / delete. Execute (:func:`execute_prune`), in this order:

1. repack: copy the used blobs of partly used packs, envelopes as they are (no
   re-encryption), into new packs; each is durable before the next step;
2. write ONE index file naming every kept pack and every new pack, whose
   ``supersedes`` lists every old index file;
3. delete the old index files;
4. delete unused and repacked packs (and unindexed packs older than a margin);
5. delete stray temp files older than the margin.

An interruption anywhere leaves a consistent repository: before 2 the new packs are
merely unindexed; between 2 and 3 readers ignore the superseded index files; after 3
every pack that is still to be deleted is named by no index. Running prune again
finishes the job. Prune must run under the repository's exclusive lock.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from casbackup.errors import CasError, IntegrityError, NotFound
from casbackup.maintenance.usage import find_used_blobs
from casbackup.repo import codec, delta
from casbackup.repo.delta import close_over_bases
from casbackup.repo.ids import BlobId, FileId, Kind
from casbackup.repo.index import IndexFile, Location, encode_index
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


@dataclass(frozen=True)
class PruneOptions:
    max_unused: float = 0.05  # repack a pack when more than this share of its blobs is unused
    max_repack_size: int | None = None  # bytes of packs to repack in one run (None: no limit)
    unindexed_margin: float = UNINDEXED_MARGIN_S
    verify_copies: bool = True  # authenticate every blob before copying it to a new pack
    keep_trees: tuple[BlobId, ...] = ()  # more roots to keep (records that name trees)


@dataclass(frozen=True)
class PackUse:
    pack: FileId
    size: int  # the pack file's size
    used: tuple[tuple[BlobId, Location], ...]
    unused: tuple[tuple[BlobId, Location], ...]

    @property
    def used_bytes(self) -> int:
        return sum(loc.stored_len for _, loc in self.used)

    @property
    def unused_bytes(self) -> int:
        return sum(loc.stored_len for _, loc in self.unused)

    @property
    def unused_share(self) -> float:
        total = self.used_bytes + self.unused_bytes
        return self.unused_bytes / total if total else 1.0


@dataclass(frozen=True)
class PrunePlan:
    """What prune will do. Immutable; printed by ``prune --dry-run``."""

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

    @property
    def rewrite_index(self) -> bool:
        return bool(
            self.repack or self.delete or self.missing_packs or len(self.old_index_files) > 1
        )

    @property
    def bytes_rewritten(self) -> int:
        return sum(p.used_bytes for p in self.repack)

    @property
    def blobs_rewritten(self) -> int:
        return sum(len(p.used) for p in self.repack)

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
        blobs = sum(len(p.used) + len(p.unused) for p in self.keep) + self.blobs_rewritten
        packs = len(self.keep) + max(1, len(self.repack))
        return (
            _INDEX_OVERHEAD + 32 * len(self.old_index_files) + packs * _INDEX_PACK
            + blobs * _INDEX_BLOB
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


@dataclass
class PruneResult:
    packs_written: list[FileId] = field(default_factory=list)
    bytes_written: int = 0
    new_index: FileId | None = None
    index_files_deleted: int = 0
    packs_deleted: int = 0
    bytes_deleted: int = 0
    temp_files_deleted: int = 0
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- plan
def _read_index(repo: Repository) -> tuple[dict[FileId, IndexFile], list[tuple[FileId, int]]]:
    """Every readable, non-superseded index file. A damaged one stops prune: its packs
    would otherwise look unindexed, and their blobs unused."""
    listed = [(FileId(n.rsplit("/", 1)[1]), s) for n, s in repo.backend.list("index/")]
    loaded: dict[FileId, IndexFile] = {}
    for fid, _size in sorted(listed):
        try:
            loaded[fid] = repo.load_index_file(fid)
        except CasError as exc:
            raise IntegrityError(
                f"index file {fid[:12]} is unreadable ({exc}); run 'casbackup repair index' first"
            ) from None
    superseded = {s for idx in loaded.values() for s in idx.supersedes}
    return {f: i for f, i in loaded.items() if f not in superseded}, sorted(listed)


def plan_prune(
    repo: Repository, options: PruneOptions = PruneOptions(), reporter: Reporter = NULL_REPORTER
) -> PrunePlan:
    now = time.time()
    snapshots, used = find_used_blobs(repo, reporter, options.keep_trees)
    live_index, all_index_files = _read_index(repo)
    present = {FileId(n.rsplit("/", 1)[1]): s for n, s in repo.backend.list("data/")}

    # Every copy of every blob, per pack (a pack can appear in several index files).
    packs: dict[FileId, dict[BlobId, Location]] = defaultdict(dict)
    copies: dict[BlobId, list[FileId]] = defaultdict(list)
    bases: dict[bytes, BlobId] = {}
    for idx in live_index.values():
        for pack, entries in idx.packs.items():
            for blob_id, loc in entries:
                if blob_id not in packs[pack]:
                    packs[pack][blob_id] = loc
                    copies[blob_id].append(pack)
                if loc.base is not None:
                    bases[blob_id] = loc.base
    # A used delta keeps its whole chain of bases (repo/delta.py), wherever they are.
    used = close_over_bases(used, bases.get)

    not_indexed = [b for b in used if b not in copies]
    if not_indexed:
        raise IntegrityError(
            f"{plural(len(not_indexed), 'blob')} that snapshots need are not in the index; "
            "run 'casbackup repair index' (and 'check') before pruning"
        )
    missing = sorted(p for p in packs if p not in present)
    for pack in missing:
        needed = [b for b in packs[pack] if b in used and all(p in missing for p in copies[b])]
        if needed:
            raise IntegrityError(
                f"pack {pack[:12]} is missing but holds {plural(len(needed), 'blob')} that snapshots need; "
                "run 'casbackup check' to see what is affected"
            )

    # A used blob stored twice counts as used in one pack only: the pack that is the most
    # used otherwise, so the other copy can go with its pack rather than force a repack.
    chosen: dict[BlobId, FileId] = {}
    used_bytes: dict[FileId, int] = defaultdict(int)
    for blob_id in used:
        for pack in copies[blob_id]:
            used_bytes[pack] += packs[pack][blob_id].stored_len
    duplicates = 0
    for blob_id in used:
        candidates = [p for p in copies[blob_id] if p in present]
        if len(candidates) > 1:
            duplicates += 1
        chosen[blob_id] = max(candidates, key=lambda p: (used_bytes[p], p))

    keep, repack_candidates, delete = [], [], []
    for pack in sorted(p for p in packs if p in present):
        entries = packs[pack]
        in_use = tuple((b, loc) for b, loc in entries.items() if chosen.get(b) == pack)
        unused = tuple((b, loc) for b, loc in entries.items() if chosen.get(b) != pack)
        use = PackUse(pack, present[pack], in_use, unused)
        if not in_use:
            delete.append(use)
        elif unused and use.unused_share > options.max_unused:
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
    for pack in sorted(set(present) - set(packs)):
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
        snapshots=snapshots, used_blobs=len(used), packs_total=len(present),
        bytes_total=sum(present.values()), keep=tuple(keep), repack=tuple(repack),
        delete=tuple(delete), unindexed=tuple(unindexed), unindexed_young=young,
        old_index_files=tuple(all_index_files), temp_files=tuple(temp_files),
        missing_packs=tuple(missing), duplicate_blobs=duplicates,
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
    result = PruneResult()
    if plan.rewrite_index:
        new_packs = _repack(repo, plan, options, result, reporter)
        entries = {u.pack: [*u.used, *u.unused] for u in plan.keep}
        entries.update(new_packs)
        result.new_index = repo.save_file_object(
            "index", Kind.INDEX, encode_index(entries, [f for f, _ in plan.old_index_files])
        )
        for fid, _size in plan.old_index_files:
            _delete(repo, f"index/{fid}")
            result.index_files_deleted += 1
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


def _repack(
    repo: Repository,
    plan: PrunePlan,
    options: PruneOptions,
    result: PruneResult,
    reporter: Reporter,
) -> dict[FileId, list[tuple[BlobId, Location]]]:
    new_packs: dict[FileId, list[tuple[BlobId, Location]]] = {}
    # Trees and data stay in separate packs, as the backup writes them (repo_format.md).
    writers = {Kind.DATA: PackWriter(), Kind.TREE: PackWriter()}
    progress = Progress(
        phase="repacking", files_total=len(plan.repack), bytes_total=plan.bytes_rewritten
    )

    def store(w: PackWriter) -> None:
        pack_id, data, written = w.finish(repo.sealer)
        repo.backend.put(pack_name(pack_id), data)  # durable before the index names it
        new_packs[pack_id] = [
            (e.id, Location(pack_id, e.offset, e.stored_len, e.raw_len, e.kind, e.base))
            for e in written
        ]
        result.packs_written.append(pack_id)
        result.bytes_written += len(data)

    for use in plan.repack:
        data = repo.backend.get(pack_name(use.pack))
        for blob_id, loc in use.used:
            envelope = data[loc.offset : loc.offset + loc.stored_len]
            if len(envelope) != loc.stored_len:
                raise IntegrityError(f"pack {use.pack[:12]} is shorter than its index says")
            if options.verify_copies:
                _verify(repo, blob_id, loc, envelope, use.pack)
            group = Kind.TREE if loc.kind == Kind.TREE else Kind.DATA
            writer = writers[group]
            writer.add(loc.kind, blob_id, envelope, loc.raw_len, loc.base)
            progress.bytes_done += loc.stored_len
            if writer.size >= repo.config.pack_size:
                store(writer)
                writers[group] = PackWriter()
        progress.files_done += 1
        reporter.progress(progress)
    for writer in writers.values():
        if writer.entries:
            store(writer)
    return new_packs


def _verify(repo: Repository, blob_id: BlobId, loc: Location, envelope: bytes, pack: str) -> None:
    """A damaged blob must not be copied into a new pack as if it were good (a delta is
    applied to its base, itself resolved and checked, before it is copied)."""
    try:
        if loc.kind == Kind.DELTA:
            payload = delta.open_delta(repo.opener, blob_id, envelope)
            if loc.base is None or delta.delta_base(payload) != loc.base:
                raise IntegrityError("its base is not the one the index names")
            base = repo.load_blob(loc.base, Kind.DATA)
            plain = delta.apply_delta(payload, base, loc.raw_len)
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
