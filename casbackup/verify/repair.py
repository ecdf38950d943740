"""``repair index``: rebuild the repository's index from index files and pack headers.

Plan, then execute: the new index file (naming every readable pack, superseding
every old index file) is written first; the old index files are deleted only after
it is durable, so an interruption leaves either the old or both (readers honour
``supersedes``), never neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from casbackup.errors import CasError, StorageError
from casbackup.repo.ids import BlobId, FileId, Kind
from casbackup.repo.index import Location, encode_index
from casbackup.repo.pack import pack_name, read_header
from casbackup.repo.repository import Repository
from casbackup.reporter import NULL_REPORTER, Progress, Reporter
from casbackup.store.base import delete_if_present
from casbackup.store.names import ObjectRefused


@dataclass
class RepairResult:
    packs_from_index: int = 0
    packs_from_headers: int = 0
    packs_unreadable: list[str] = field(default_factory=list)
    index_files_removed: int = 0
    damaged_index_files: list[str] = field(default_factory=list)  # decrypted or decoded wrong
    # The store would not give them (permission denied, I/O error): not damage. Their packs
    # are read from the pack headers like any other pack no index names.
    unreadable_index_files: list[str] = field(default_factory=list)
    blobs: int = 0
    new_index: str | None = None


def repair_index(
    repo: Repository, *, read_all_packs: bool = False, reporter: Reporter = NULL_REPORTER
) -> RepairResult:
    result = RepairResult()
    present = {FileId(name.rsplit("/", 1)[1]): size for name, size in repo.backend.list("data/")}
    old_files = repo.index_files()
    packs: dict[FileId, list[tuple[BlobId, Location]]] = {}
    if not read_all_packs:
        for fid in old_files:
            try:
                idx = repo.load_index_file(fid)
            except StorageError as exc:
                # Not a regular file, or over its size cap, is damage; the rest is the store.
                damaged = isinstance(exc, ObjectRefused)
                (result.damaged_index_files if damaged else result.unreadable_index_files).append(
                    fid
                )
                continue
            except CasError:
                result.damaged_index_files.append(fid)
                continue
            for pack, entries in idx.packs.items():
                if pack in present:
                    packs[pack] = entries
    result.packs_from_index = len(packs)
    missing = sorted(set(present) - set(packs))
    progress = Progress(phase="reading pack headers", files_total=len(missing), unit="pack")
    for pack in missing:
        try:
            header = read_header(repo.backend.get, pack_name(pack), present[pack], repo.opener)
        except CasError as exc:
            result.packs_unreadable.append(f"{pack[:12]}: {exc}")
            continue
        packs[pack] = [
            (e.id, Location(pack, e.offset, e.stored_len, e.raw_len, Kind(e.kind), e.base))
            for e in header
        ]
        result.packs_from_headers += 1
        progress.files_done += 1
        reporter.progress(progress)
    result.blobs = sum(len(v) for v in packs.values())
    repo.confirm_locks()  # held throughout: no prune deleted packs this index would name
    new = repo.save_file_object("index", Kind.INDEX, encode_index(packs, supersedes=old_files))
    result.new_index = new
    for fid in old_files:
        result.index_files_removed += delete_if_present(repo.backend, f"index/{fid}")
    repo.sync_index(rebuild=True)
    return result
