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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import compress, groupby
from operator import add, and_, itemgetter, or_

from casbackup.errors import CasError, IntegrityError, NotFound, StorageError
from casbackup.maintenance import pruneplan

# Re-exported: the CLI, the server and tests import the planning names from here.
from casbackup.maintenance.pruneplan import (  # noqa: F401
    _ENTRY,
    _PACK_NO,
    UNINDEXED_MARGIN_S,
    PackUse,
    PruneOptions,
    PrunePlan,
    _Work,
    plan_prune,
)
from casbackup.maintenance.spill import ID_BUCKETS, RecordSpill
from casbackup.repo import codec, delta
from casbackup.repo.ids import DELTA_KINDS, FULL_KIND, BlobId, FileId, Kind, pack_group
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
from casbackup.store.base import delete_if_present


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


# The entries the new index keeps, spilled by the low byte of their pack number.
PACK_GROUPS = ID_BUCKETS
_PACK_AND_ID = struct.Struct(">Ix32s12x")  # an entry's pack number and blob id
_WHOLE = struct.Struct(f"{_ENTRY.size}s")
_PACK_AND_OFFSET = struct.Struct("4s33x4s8x")  # an entry's pack number and offset
_WHOLE = struct.Struct(f"{_ENTRY.size}s")
# A kept entry as pass 3 spills it: pack number and offset (a sort key), then the entry.
_KEYED = struct.Struct(f"{8 + _ENTRY.size}s")
_PACK_OF = itemgetter(slice(0, 4))
_INDEX_RECORD = itemgetter(slice(12, None))  # key[8] | pack number[4] | index record
_FIRST = itemgetter(0)


def _sort_keyed(entries: bytes) -> Iterator[bytes]:
    """Each of ``entries`` (``_ENTRY``) behind its pack number and offset: sorted, such
    records put each pack's entries together in the order of its header. By ``map``:
    no Python step per entry."""
    keys = map(b"".join, _PACK_AND_OFFSET.iter_unpack(entries))
    return map(add, keys, map(_FIRST, _WHOLE.iter_unpack(entries)))


# ---------------------------------------------------------------------------- execute
def execute_prune(
    repo: Repository,
    plan: PrunePlan,
    options: PruneOptions = PruneOptions(),
    reporter: Reporter = NULL_REPORTER,
) -> PruneResult:
    """Carry ``plan`` out in the crash-safe order (module docstring); closes the plan.

    Raises ValueError for a plan made with ``ignore_snapshots``: it would delete data that
    snapshots still in the repository need."""
    if plan.hypothetical:
        plan.close()
        raise ValueError("a prune plan that ignores snapshots cannot be executed")
    result = PruneResult()
    try:
        # Locked without a break since the plan was made: a prune paused past the stale
        # limit may have been passed over by another one, and a backup since may use what
        # this plan would delete.
        repo.confirm_locks()
        if plan.rewrite_index:
            if plan.work is None:
                raise ValueError("this plan's temporary files are gone (closed)")
            _rewrite_index(repo, plan, plan.work, options, result, reporter)
            for fid, _size in plan.old_index_files:
                delete_if_present(repo.backend, f"index/{fid}")
                result.index_files_deleted += 1
    finally:
        plan.close()
    doomed = [(u.pack, u.size) for u in (*plan.delete, *plan.repack)] if plan.rewrite_index else []
    doomed += list(plan.unindexed)
    if doomed:
        repo.confirm_locks()
    progress = Progress(phase="deleting packs", files_total=len(doomed), unit="pack")
    for pack, size in doomed:
        if delete_if_present(repo.backend, pack_name(pack)):
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


class _IndexWriter:
    """Writes the new index as files of at most INDEX_FILE_BLOBS (pruneplan.py) entries.

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
        if self.sections and self.blobs + n > pruneplan.INDEX_FILE_BLOBS:
            self._write(())
        self.sections.append((pack, records))
        self.blobs += n

    def _write(self, supersedes: Iterable[FileId]) -> FileId:
        deltas = [
            blob_id
            for _, records in self.sections
            if any(k in records[::RECORD_SIZE] for k in DELTA_KINDS)  # each record's kind
            for kind, blob_id, *_ in iter_records(records)
            if kind in DELTA_KINDS
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
    keep = frozenset(work.numbers[u.pack] for u in plan.keep)
    repack = frozenset(work.numbers[u.pack] for u in plan.repack)
    several = frozenset(work.several_copies)
    # Pass 3 over the id buckets: the entries the new index keeps (every entry of a kept
    # pack) and the blobs to copy (the chosen copy in a repacked pack), by pack group (the
    # low byte of the pack number, byte 3 of an entry).
    kept = RecordSpill(_KEYED.size, PACK_GROUPS)
    try:
        for bucket in range(ID_BUCKETS):
            used = work.used.bucket(bucket)
            if bucket not in several:
                # Each blob in one pack: its copy is the chosen one when it is used. By
                # columns, no Python step per entry.
                data = work.entries.read(bucket)
                if not data:
                    continue
                numbers, ids = zip(*_PACK_AND_ID.iter_unpack(data), strict=True)
                wanted = map(
                    or_,
                    map(keep.__contains__, numbers),
                    map(and_, map(repack.__contains__, numbers), map(used.__contains__, ids)),
                )
                kept.add_by_byte(list(compress(_sort_keyed(data), wanted)), 3)
                continue
            for blob_id, where in work.copies(bucket).items():
                chosen = None
                if blob_id in used:
                    if len(where) == 1:
                        (chosen,) = where  # present: the plan refused a used blob's lost pack
                    else:
                        chosen = work.chosen(n for n in where if work.present[n])
                chosen_entries = b"".join(
                    e for n, e in where.items() if n in keep or (n in repack and n == chosen)
                )
                kept.add_by_byte(list(_sort_keyed(chosen_entries)), 3)
        writer = _IndexWriter(repo, [f for f, _ in plan.old_index_files], result, work)
        copier = _Copier(repo, options, result, writer, plan, reporter, work)
        for group in range(PACK_GROUPS):
            # (pack number, offset, record) sorted: each pack's records together and in
            # the order of its header (check compares them with it as bytes), by sort,
            # groupby and join: no Python step per entry.
            rows = sorted(map(_FIRST, _KEYED.iter_unpack(kept.read(group))))
            by_pack = {
                _PACK_NO.unpack(n)[0]: b"".join(map(_INDEX_RECORD, run))
                for n, run in groupby(rows, key=_PACK_OF)
            }
            del rows
            for n in sorted(by_pack, key=lambda n: work.packs[n]):
                records = by_pack.pop(n)
                if n in keep:
                    writer.add(work.packs[n], records)
                else:
                    copier.copy(work.packs[n], records)
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
            phase="repacking",
            files_total=len(plan.repack),
            bytes_total=plan.bytes_rewritten,
            unit="pack",
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

    def copy(self, pack: FileId, records: bytes) -> None:
        """Copy the blobs of ``records`` (index records of ``pack``) into new packs."""
        data = self.repo.backend.get(pack_name(pack))
        rows = list(iter_records(records))
        bases = self.work.bases_of(r[1] for r in rows if r[0] in DELTA_KINDS)
        for kind, blob_id, offset, stored_len, raw_len in rows:
            base = bases.get(blob_id) if kind in DELTA_KINDS else None
            if kind in DELTA_KINDS and base is None:
                raise IntegrityError(f"delta blob {blob_id.hex()[:16]} has no base in the index")
            loc = Location(
                pack, offset, stored_len, raw_len, Kind(kind), BlobId(base) if base else None
            )
            envelope = data[offset : offset + stored_len]
            if len(envelope) != stored_len:
                raise IntegrityError(f"pack {pack[:12]} is shorter than its index says")
            if self.options.verify_copies:
                _verify(self.repo, BlobId(blob_id), loc, envelope, pack)
            group = pack_group(loc.kind)  # a tree delta stays in a tree pack
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
        if loc.kind in FULL_KIND:
            payload = delta.open_delta(repo.opener, blob_id, envelope, loc.kind)
            if loc.base is None or delta.delta_base(payload) != loc.base:
                raise IntegrityError("its base is not the one the index names")
            base = repo.load_blob(loc.base, FULL_KIND[loc.kind])
            plain = delta.apply_delta(payload, base, loc.raw_len, loc.kind)
        else:
            plain = codec.decompress(repo.opener.open(loc.kind, blob_id, envelope))
    except StorageError as exc:  # a base the store cannot read (permissions, I/O): not damage
        raise StorageError(
            f"blob {blob_id.hex()[:16]} in pack {pack[:12]} could not be checked ({exc}); "
            "prune stopped before deleting anything"
        ) from None
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
