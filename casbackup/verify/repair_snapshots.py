"""``repair snapshots``: rewrite the snapshots that name data the repository no longer has,
leaving out what cannot be read, so that ``check`` passes and ``prune`` can run again.

After ``repair packs`` (or a pack lost for good), a snapshot may name chunks or trees that
no index holds. A backup stores them again when a source still has the same data; what no
source holds any more stays missing for good, and then ``check`` fails on every run and
``prune`` refuses to start ("prune needs every tree"), so the repository only grows. (restic
has the same command, ``restic repair snapshots --forget``.)

For each snapshot that needs it, a new snapshot is written with the same record (time,
application, paths, parent, ...), tagged ``repaired``, whose trees leave out every file
that names a missing chunk and keep every folder whose tree cannot be read as an empty
folder (its own metadata kept). A database dump left out takes its record with it, and the
summary's file and byte totals lose the files left out (``snapshots`` and the dashboard
show what the snapshot holds, not what the backup once wrote). Then
the old snapshot is deleted. Everything still readable is in the new snapshot; what is
left out was already lost. The new snapshot has no ``original`` (even when ``tag`` rewrote
the old record): verification records of the old snapshot do not describe it.

What counts as missing: a chunk (or, for a delta, any blob of its chain) that the index
does not name, and a tree that is not indexed or does not decrypt. Chunks that are indexed
but damaged are ``repair packs``' job, which must run first (``check --read-data`` names
them). The command refuses to start while an index file cannot be read or the index names
packs that are gone: their blobs would look missing without being so.

Crash safety: a new snapshot is durable (its trees indexed first, ``save_snapshot``) before
the old one is deleted. Run again after an interruption, the same repair gives the same
root tree, and the snapshot written last time is recognised (tag, time, application and
root tree) instead of written twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from casbackup.errors import CasError, IntegrityError, StorageError
from casbackup.repo.ids import DELTA_KINDS, BlobId
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot, Summary
from casbackup.repo.tree import Node, NodeKind, encode_tree
from casbackup.reporter import NULL_REPORTER, Progress, Reporter

REPAIRED_TAG = "repaired"
_MAX_CHAIN = 64  # links followed to a delta's full base before the chain counts as broken
# A folder whose tree cannot be read, as the walk keeps it relative to the tree above.
_EMPTIED = b" (folder unreadable: kept empty)"
_Removed = tuple[tuple[bytes, int], ...]


@dataclass
class SnapshotRepair:
    """One snapshot that named missing data."""

    old: str  # its id
    new: str | None  # the repaired snapshot's id (None in a dry run)
    app: str | None
    time: str
    removed: list[str] = field(default_factory=list)  # paths left out (or emptied)


@dataclass
class RepairSnapshotsResult:
    checked: int = 0
    repaired: list[SnapshotRepair] = field(default_factory=list)
    dry_run: bool = False


def repair_snapshots(
    repo: Repository,
    snapshot_ids: list[str] | None = None,
    *,
    dry_run: bool = False,
    reporter: Reporter = NULL_REPORTER,
) -> RepairSnapshotsResult:
    """Repair every snapshot (or ``snapshot_ids``, full ids) as the module docstring says;
    with ``dry_run`` only report. Must run under the exclusive lock.

    Raises IntegrityError before changing anything when an index file cannot be read or
    the index names packs that are gone; StorageError when the store refuses a read."""
    warnings = repo.sync_index(rebuild=True)
    gone = [a for a in repo.alerts if "missing pack" in a]
    if warnings or gone:
        raise IntegrityError(
            f"{(warnings or gone)[0]}; repair snapshots changed nothing (run 'casbackup "
            "repair index', or 'casbackup repair packs' for packs that are gone, first)"
        )
    result = RepairSnapshotsResult(dry_run=dry_run)
    ids = snapshot_ids if snapshot_ids is not None else repo.usable_snapshot_ids()
    snaps = [repo.load_snapshot(fid) for fid in ids]
    walker = _TreeRepair(repo, dry_run)
    progress = Progress(phase="repairing snapshots", files_total=len(snaps), unit="snapshot")
    existing = {(s.start_ns, s.app, s.tree): s.id for s in snaps if REPAIRED_TAG in s.tags}
    for snap in sorted(snaps, key=lambda s: (s.start_ns, s.id)):
        result.checked += 1
        new_root, removed = walker.repair(snap.root)
        progress.files_done += 1
        reporter.progress(progress)
        if new_root == snap.root:
            continue
        paths = sorted({_display(p) for p, _ in removed})
        gone = [p.removesuffix(os.fsdecode(_EMPTIED)) for p in paths]
        keep_db = [
            db
            for db in snap.databases
            if not any(db.path == p or db.path.startswith(p.rstrip("/") + "/") for p in gone)
        ]
        tags = snap.tags if REPAIRED_TAG in snap.tags else (*snap.tags, REPAIRED_TAG)
        fixed = replace(
            snap,
            tree=new_root.hex(),
            tags=tags,
            databases=tuple(keep_db),
            summary=_summary_without(snap, removed),
            # A new snapshot (files are missing from it), not a new record of the old one:
            # a record `tag` rewrote names its first id in `original`, and kept, the old
            # snapshot's passing verification would vouch for the repaired one (recover
            # would restore it as the latest verified), where an untagged one has none.
            original=None,
            revision=0,
            id="",
        )
        entry = SnapshotRepair(snap.id, None, snap.app, snap.time, paths)
        result.repaired.append(entry)
        if dry_run:
            continue
        entry.new = repo.replace_snapshot(snap.id, fixed, stored=existing)
    return result


def _summary_without(snap: Snapshot, removed: tuple[tuple[bytes, int], ...]) -> Summary:
    """The snapshot's summary with the files left out taken off its totals.

    ``files_total``/``bytes_total`` count the file walk only (database dumps are counted
    by their records, which leave with them); the new/changed/unchanged counts describe the
    backup run that wrote the snapshot and stay as they were. What an unreadable folder
    held is unknown, so an emptied folder takes nothing off."""
    dumps = {os.fsencode(db.path) for db in snap.databases}
    files = size = 0
    for path, file_size in removed:
        if file_size < 0 or b"/" + path.lstrip(b"/") in dumps:
            continue
        files += 1
        size += file_size
    s = snap.summary
    return replace(
        s, files_total=max(0, s.files_total - files), bytes_total=max(0, s.bytes_total - size)
    )


def _display(path: bytes) -> str:
    """A path relative to the snapshot's root as the command prints it."""
    return os.fsdecode(b"/" + path if path.startswith(_EMPTIED) else path)


class _TreeRepair:
    """Rewrites trees bottom-up, each tree once (snapshots share most of theirs)."""

    def __init__(self, repo: Repository, dry_run: bool) -> None:
        self.repo = repo
        self.dry_run = dry_run
        # tree id -> (its repaired id, (path, file size) below it left out; size -1 for a
        # folder emptied because its tree is unreadable); None: unreadable
        self.done: dict[bytes, tuple[BlobId, _Removed] | None] = {}
        self.present: dict[bytes, bool] = {}
        self._empty: BlobId | None = None

    def empty_tree(self) -> BlobId:
        if self._empty is None:
            self._empty = self._save([])
        return self._empty

    def _save(self, nodes: list[Node]) -> BlobId:
        if self.dry_run:
            return self.repo.blob_id(encode_tree(nodes))
        return self.repo.save_tree(nodes)

    def chunk_present(self, blob_id: bytes) -> bool:
        """Whether the index names the chunk and, for a delta, every blob of its chain."""
        known = self.present.get(blob_id)
        if known is not None:
            return known
        chain, ok = [blob_id], True
        loc = self.repo.cache.get(blob_id)
        while True:
            if loc is None:
                ok = False
                break
            if loc.kind not in DELTA_KINDS or loc.base is None:
                break
            if len(chain) > _MAX_CHAIN or loc.base in chain:
                ok = False
                break
            chain.append(loc.base)
            loc = self.repo.cache.get(loc.base)
        self.present[blob_id] = ok
        return ok

    def repair(self, root: BlobId) -> tuple[BlobId, _Removed]:
        """(repaired root id, (path, file size or -1) left out); an unreadable root becomes
        an empty tree."""
        work: list[tuple[str, BlobId, Any]] = [("enter", root, None)]
        while work:
            op, tree_id, nodes = work.pop()
            if op == "exit":
                self.done[tree_id] = self._rebuild(tree_id, nodes)
                continue
            if tree_id in self.done:
                continue
            try:
                loaded = self.repo.load_tree(tree_id)
            except StorageError:
                raise  # the store refused: not damage, and nothing is changed for it
            except CasError:
                self.done[tree_id] = None
                continue
            work.append(("exit", tree_id, loaded))
            for node in loaded:
                if node.subtree is not None and node.subtree not in self.done:
                    work.append(("enter", node.subtree, None))
        top = self.done[root]
        if top is None:
            return self.empty_tree(), ((_EMPTIED, -1),)
        return top

    def _rebuild(self, tree_id: BlobId, nodes: list[Node]) -> tuple[BlobId, _Removed]:
        out: list[Node] = []
        removed: list[tuple[bytes, int]] = []
        for node in nodes:
            if node.kind == NodeKind.FILE and not all(map(self.chunk_present, node.content)):
                removed.append((b"/" + node.name, node.size))
                continue
            if node.subtree is not None:
                below = self.done.get(node.subtree)
                if below is None:
                    removed.append((b"/" + node.name + _EMPTIED, -1))
                    node = replace(node, subtree=self.empty_tree())
                elif below[0] != node.subtree:
                    removed.extend((b"/" + node.name + p, n) for p, n in below[1])
                    node = replace(node, subtree=below[0])
            out.append(node)
        if not removed:
            return tree_id, ()
        return self._save(out), tuple(removed)
