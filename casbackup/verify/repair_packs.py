"""``repair packs``: salvage the intact blobs of damaged packs and drop the damaged ones
from the index, so that the next backup stores them again.

Why: blobs are named by their content's hash, so once a damaged copy is indexed every
later backup deduplicates against it, a ``--type full`` backup included: the damage spreads
to every new snapshot that holds the same data, and nothing ever heals it. (restic has the
same command, ``restic repair packs``; borg's ``check --repair`` heals chunks that a later
backup brings back.) After this command the damaged blobs are simply absent: a backup whose
sources still hold the same data stores them again under the same ids, and every snapshot
that names them, old ones included, is whole again. What no source holds any more stays
missing, and ``check`` keeps naming those files.

Order (the same crash-safe order as ``prune``; the repository's exclusive lock is held):

1. read each damaged pack once; every blob its index entries name is checked (a data or
   tree blob decrypts, decompresses and hashes to its id; a delta decrypts and names the
   base the index names: a delta whose base is the damaged one stays valid, and resolves
   again once the base is stored again). Intact envelopes are copied unchanged into new
   packs, each durable before step 2;
2. one new index file holds every entry of the index files that name a damaged pack,
   less those packs' entries, plus the new packs' entries; it supersedes those files;
3. the superseded index files are deleted, then the damaged packs.

An interruption before 2 leaves unindexed packs (prune removes them); between 2 and 3 the
old files are superseded and ignored; running the command again finishes the job. A pack
the store cannot read (permission denied, I/O error) is not damage: the command stops
before changing anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from casbackup.errors import CasError, IntegrityError, NotFound, StorageError, UsageError
from casbackup.repo import codec, delta
from casbackup.repo.ids import DELTA_KINDS, BlobId, FileId, Kind, pack_group
from casbackup.repo.index import (
    Location,
    encode_index_records,
    encode_record,
    iter_records,
)
from casbackup.repo.pack import PackWriter, pack_name
from casbackup.repo.repository import Repository
from casbackup.reporter import NULL_REPORTER, Progress, Reporter
from casbackup.store.base import delete_if_present
from casbackup.store.names import ObjectRefused


@dataclass
class PackRepair:
    """What happened to one damaged pack."""

    pack: FileId
    salvaged: int = 0  # intact blobs copied into new packs
    dropped: list[tuple[str, str]] = field(default_factory=list)  # (blob id hex, why)
    missing: bool = False  # the pack was gone: every blob it held is dropped


@dataclass
class RepairPacksResult:
    packs: list[PackRepair] = field(default_factory=list)
    packs_written: list[FileId] = field(default_factory=list)
    index_files_replaced: int = 0
    packs_deleted: int = 0
    dry_run: bool = False

    @property
    def dropped(self) -> int:
        return sum(len(p.dropped) for p in self.packs)

    @property
    def salvaged(self) -> int:
        return sum(p.salvaged for p in self.packs)


def resolve_packs(repo: Repository, names: list[str]) -> list[FileId]:
    """Full pack ids of ``names`` (ids or unique prefixes of at least 4 hex digits, as
    ``check`` prints 12), among the packs the index names and those present in data/.

    UsageError for a malformed, unknown or ambiguous name."""
    known: set[FileId] = {FileId(n.rsplit("/", 1)[1]) for n, _ in repo.backend.list("data/")}
    for fid in _live_index_files(repo):
        _, sections, _ = repo.load_index_with_bases(fid)
        known.update(pack for pack, _ in sections)
    out: list[FileId] = []
    for name in names:
        text = name.strip().lower()
        if len(text) < 4 or any(c not in "0123456789abcdef" for c in text):
            raise UsageError(f"{name!r} is not a pack id (at least 4 hex digits)")
        found = sorted(p for p in known if p.startswith(text))
        if not found:
            raise UsageError(f"no pack {text} in this repository (neither indexed nor stored)")
        if len(found) > 1:
            raise UsageError(f"pack id {text} is ambiguous ({len(found)} packs): give more digits")
        if found[0] not in out:
            out.append(found[0])
    return out


def _live_index_files(repo: Repository) -> list[FileId]:
    """Index files no other one supersedes (one file in memory at a time)."""
    files = repo.index_files()
    superseded: set[FileId] = set()
    for fid in files:
        superseded.update(repo.load_index_with_bases(fid)[0])
    return [f for f in files if f not in superseded]


def repair_packs(
    repo: Repository,
    packs: list[FileId],
    *,
    dry_run: bool = False,
    reporter: Reporter = NULL_REPORTER,
) -> RepairPacksResult:
    """Salvage ``packs`` (full ids, see ``resolve_packs``) in the order of the module
    docstring; with ``dry_run`` only read and report. Must run under the exclusive lock.

    Raises StorageError when a pack or index file cannot be read for a reason that is
    not damage (nothing is changed then), IntegrityError when an index file is damaged
    (run ``repair index`` first)."""
    result = RepairPacksResult(dry_run=dry_run)
    targets = set(packs)
    affected: list[FileId] = []  # live index files naming a target pack
    kept_sections: list[tuple[FileId, bytes]] = []
    entries: dict[FileId, dict[bytes, tuple[int, int, int, int]]] = {p: {} for p in packs}
    bases: dict[bytes, bytes] = {}
    for fid in _live_index_files(repo):
        try:
            _, sections, file_bases = repo.load_index_with_bases(fid)
        except StorageError:
            raise
        except CasError as exc:
            raise IntegrityError(
                f"index file {fid[:12]} is damaged ({exc}); run 'casbackup repair index' first"
            ) from None
        if not any(pack in targets for pack, _ in sections):
            continue
        affected.append(fid)
        bases.update(file_bases)
        for pack, records in sections:
            if pack in targets:
                for kind, blob_id, offset, stored, raw in iter_records(records):
                    entries[pack][blob_id] = (kind, offset, stored, raw)
            else:
                kept_sections.append((pack, records))
    progress = Progress(phase="salvaging packs", files_total=len(packs), unit="pack")
    writers: dict[Kind, PackWriter] = {Kind.DATA: PackWriter(), Kind.TREE: PackWriter()}
    new_sections: list[tuple[FileId, bytes]] = []

    def store(group: Kind) -> None:
        pack_id, data, written = writers[group].finish(repo.sealer)
        repo.backend.put(pack_name(pack_id), data)  # durable before the index names it
        new_sections.append(
            (
                pack_id,
                b"".join(
                    encode_record(
                        e.id, Location(pack_id, e.offset, e.stored_len, e.raw_len, e.kind)
                    )
                    for e in written
                ),
            )
        )
        result.packs_written.append(pack_id)
        writers[group] = PackWriter()

    for pack in packs:
        report = PackRepair(pack)
        result.packs.append(report)
        try:
            data = repo.backend.get(pack_name(pack))
        except (NotFound, ObjectRefused):
            # Gone, or no longer a regular file of a sane size: every blob is lost.
            data = None
            report.missing = True
        for blob_id, (kind, offset, stored, raw) in sorted(
            entries[pack].items(), key=lambda kv: kv[1][1]
        ):
            envelope = data[offset : offset + stored] if data is not None else b""
            why = (
                "the pack is missing"
                if data is None
                else _damage(repo, BlobId(blob_id), kind, envelope, stored, raw, bases)
            )
            if why is not None:
                report.dropped.append((blob_id.hex(), why))
                continue
            report.salvaged += 1
            if dry_run:
                continue
            group = pack_group(kind)
            base = bases.get(blob_id) if kind in DELTA_KINDS else None
            writers[group].add(Kind(kind), BlobId(blob_id), envelope, raw, base)
            if writers[group].size >= repo.config.pack_size:
                store(group)
        progress.files_done += 1
        reporter.progress(progress)
    if dry_run:
        return result
    for group, writer in list(writers.items()):
        if writer.entries:
            store(group)
    repo.confirm_locks()  # held throughout: no prune changed what this run read
    if affected:
        repo.save_file_object(
            "index",
            Kind.INDEX,
            encode_index_records([*kept_sections, *new_sections], affected, bases),
        )
    for fid in affected:
        result.index_files_replaced += delete_if_present(repo.backend, f"index/{fid}")
    for pack in packs:
        result.packs_deleted += delete_if_present(repo.backend, pack_name(pack))
    repo.sync_index(rebuild=True)
    return result


def _damage(
    repo: Repository,
    blob_id: BlobId,
    kind: int,
    envelope: bytes,
    stored: int,
    raw: int,
    bases: dict[bytes, bytes],
) -> str | None:
    """Why the blob stored as ``envelope`` is damaged, or None when it is intact."""
    if len(envelope) != stored:
        return "cut off: the pack is shorter than the index says"
    try:
        if kind in DELTA_KINDS:
            payload = delta.open_delta(repo.opener, blob_id, envelope, Kind(kind))
            if delta.delta_base(payload) != bases.get(blob_id):
                return "its base is not the one the index names"
            return None
        plain = codec.decompress(repo.opener.open(Kind(kind), blob_id, envelope))
    except CasError as exc:
        if isinstance(exc, StorageError):
            raise
        return f"does not decrypt ({exc})"
    if len(plain) != raw or repo.blob_id(plain) != blob_id:
        return "does not match its id"
    return None
