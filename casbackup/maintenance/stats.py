"""``stats``: how big the backups are, how much deduplication and compression save.

- logical size: the files' and database dumps' sizes as the snapshots record them, counted in every snapshot;
- unique size: the raw bytes of the distinct chunks those files need;
- stored size: what those chunks take in packs (compressed, encrypted, with envelopes), plus
  the delta bases they need (repo/delta.py): a chunk stored as a delta is readable only with
  its chain of bases, so a snapshot's stored size counts the bases it would keep alive. The
  compression ratio therefore includes what delta compression saves.
dedup ratio = logical / unique, compression ratio = unique / stored.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from casbackup.errors import CasError
from casbackup.repo.ids import BlobId, FileId, Kind
from casbackup.repo.index import Location
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.tree import Node, NodeKind
from casbackup.reporter import NULL_REPORTER, Progress, Reporter


@dataclass(frozen=True)
class Stats:
    snapshots: int
    files: int
    logical_bytes: int
    chunks: int  # distinct data chunks
    unique_bytes: int  # their plaintext size
    stored_bytes: int  # their size in packs
    trees: int
    tree_stored_bytes: int
    packs: int  # packs holding any of those blobs
    repository_bytes: int | None = None  # every stored object (whole-repository stats only)
    delta_chunks: int = 0  # of ``chunks``, those stored as a delta
    bases: int = 0  # delta bases needed that no file of these snapshots uses (in stored_bytes)

    @property
    def dedup_ratio(self) -> float:
        return self.logical_bytes / self.unique_bytes if self.unique_bytes else 1.0

    @property
    def compression_ratio(self) -> float:
        return self.unique_bytes / self.stored_bytes if self.stored_bytes else 1.0


@dataclass
class _Frame:
    """One folder being summed: its remaining entries and what they added up to so far."""

    tree: BlobId
    nodes: Iterator[Node]
    logical: int = 0
    files: int = 0


def snapshot_stats(
    repo: Repository, snapshots: Sequence[Snapshot], reporter: Reporter = NULL_REPORTER
) -> Stats:
    """Walk the snapshots; a subtree seen before adds its (memoized) logical size only."""
    sizes: dict[BlobId, tuple[int, int]] = {}  # tree -> (logical bytes, files) below it
    chunks: set[BlobId] = set()
    bases: set[BlobId] = set()  # stored only as bases: counted in "stored", not in "unique"
    packs: set[FileId] = set()
    totals = {"unique": 0, "stored": 0, "tree_stored": 0, "deltas": 0}
    progress = Progress(phase="walking snapshots", files_total=len(snapshots), unit="snapshot")

    def open_tree(tree_id: BlobId) -> _Frame:
        loc = repo.locate(tree_id)
        totals["tree_stored"] += loc.stored_len
        packs.add(loc.pack)
        return _Frame(tree_id, iter(repo.load_tree(tree_id)))

    def add_file(frame: _Frame, node: Node) -> None:
        frame.logical += node.size
        frame.files += 1
        for chunk in node.content:
            if chunk not in chunks:
                chunks.add(chunk)
                cloc = repo.locate(chunk)
                totals["unique"] += cloc.raw_len
                if chunk in bases:  # counted as another chunk's base before: stored already
                    bases.discard(chunk)
                else:
                    totals["stored"] += cloc.stored_len
                packs.add(cloc.pack)
                if cloc.base is not None:
                    totals["deltas"] += 1
                    add_bases(cloc.base)

    def add_bases(base: BlobId | None) -> None:
        """Count a delta's chain of bases once each (a chain is at most MAX_DEPTH long; a
        loop in a damaged repository ends at the first blob seen again)."""
        while base is not None and base not in chunks and base not in bases:
            bases.add(base)
            bloc = repo.locate(base)
            totals["stored"] += bloc.stored_len
            packs.add(bloc.pack)
            base = bloc.base

    def visit(root: BlobId) -> tuple[int, int]:
        """(logical bytes, files) below a tree: post-order on an explicit stack (no recursion:
        a snapshot may be any depth), each distinct tree summed once."""
        known = sizes.get(root)
        if known is not None:
            return known
        stack = [open_tree(root)]
        while stack:
            frame = stack[-1]
            descended = False
            for node in frame.nodes:
                if node.kind == NodeKind.FILE:
                    add_file(frame, node)
                if node.subtree is not None:
                    below = sizes.get(node.subtree)
                    if below is None:
                        stack.append(open_tree(node.subtree))
                        descended = True
                        break  # this frame's iterator resumes after the child is summed
                    frame.logical += below[0]
                    frame.files += below[1]
            if descended:
                continue
            stack.pop()
            sizes[frame.tree] = (frame.logical, frame.files)
            if stack:
                stack[-1].logical += frame.logical
                stack[-1].files += frame.files
        return sizes[root]

    logical_total = files_total = 0
    for snap in snapshots:
        logical, files = visit(snap.root)
        logical_total += logical
        files_total += files
        progress.files_done += 1
        reporter.progress(progress)
    return Stats(
        snapshots=len(snapshots), files=files_total, logical_bytes=logical_total,
        chunks=len(chunks), unique_bytes=totals["unique"], stored_bytes=totals["stored"],
        trees=len(sizes), tree_stored_bytes=totals["tree_stored"], packs=len(packs),
        delta_chunks=totals["deltas"], bases=len(bases),
    )  # fmt: skip


def repository_stats(repo: Repository, warnings: list[str]) -> Stats:
    """Everything in the repository, from the snapshot summaries and the index files (fast:
    no tree is read). Blobs no snapshot uses any more (until prune) are counted too."""
    snapshots = repo.list_snapshots(warnings=warnings)
    loaded = {}
    for fid in repo.index_files():
        try:
            loaded[fid] = repo.load_index_file(fid)
        except CasError as exc:
            warnings.append(f"index file {fid[:12]} is unreadable: {exc}")
    superseded = {s for idx in loaded.values() for s in idx.supersedes}
    blobs: dict[BlobId, Location] = {}
    for fid, idx in loaded.items():
        if fid not in superseded:
            for blob_id, loc in idx.blobs():
                blobs.setdefault(blob_id, loc)
    data = [loc for loc in blobs.values() if loc.kind in (Kind.DATA, Kind.DELTA)]
    deltas = sum(1 for loc in data if loc.kind == Kind.DELTA)
    trees = [loc for loc in blobs.values() if loc.kind in (Kind.TREE, Kind.TREE_DELTA)]
    return Stats(
        snapshots=len(snapshots),
        files=sum(s.summary.files_total for s in snapshots),
        logical_bytes=sum(s.protected_bytes for s in snapshots),
        chunks=len(data), unique_bytes=sum(loc.raw_len for loc in data),
        stored_bytes=sum(loc.stored_len for loc in data), trees=len(trees),
        tree_stored_bytes=sum(loc.stored_len for loc in trees),
        delta_chunks=deltas,
        packs=sum(1 for _ in repo.backend.list("data/")),
        repository_bytes=sum(size for _, size in repo.backend.list("")),
    )  # fmt: skip
