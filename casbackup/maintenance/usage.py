"""Which blobs the repository still needs: every tree and chunk reachable from a snapshot.

Prune deletes what this does not return, so it fails loudly rather than guess: an
unreadable snapshot record or tree stops it (its blobs would look unused).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from casbackup.errors import CasError, IntegrityError, StorageError
from casbackup.maintenance.spill import IdSet
from casbackup.repo.ids import BlobId
from casbackup.repo.repository import Repository
from casbackup.reporter import NULL_REPORTER, Progress, Reporter


def find_used_blobs(
    repo: Repository,
    reporter: Reporter = NULL_REPORTER,
    extra_trees: Iterable[BlobId] = (),
) -> tuple[int, set[BlobId]]:
    """``collect_used_blobs`` as a Python set, for small repositories and tests (prune
    itself keeps the ids in an ``IdSet``: a set of 5 million ids costs about 400 MiB)."""
    used = IdSet()
    try:
        count = collect_used_blobs(repo, used, reporter, extra_trees)
        return count, {BlobId(b) for b in used}
    finally:
        used.close()


def collect_used_blobs(
    repo: Repository,
    into: IdSet,
    reporter: Reporter = NULL_REPORTER,
    extra_trees: Iterable[BlobId] = (),
    extra_ids: Iterable[bytes] = (),
    *,
    skip: Collection[str] = (),
) -> int:
    """Add to ``into`` the id of every tree and data blob a snapshot reaches; return the
    number of snapshots.

    ``extra_trees`` are more roots to keep (for records that name trees, not snapshots);
    ``extra_ids`` more blobs to keep as they are (nothing below them is walked). Shared
    subtrees are walked once, so unchanged folders across a year of dailies cost one
    visit; the trees walked are the one set held in memory (chunk ids go to ``into``,
    on disk). ``skip``: ids of snapshots to leave out, as if they were forgotten (not
    counted either). Raises IntegrityError when a snapshot or a tree is damaged, StorageError
    when the store cannot read one (permissions, I/O).
    """
    present = repo.snapshot_ids()
    repo.usable_snapshot_ids(present)  # alerts for snapshots that came back; their data is kept
    snapshots = []
    for fid in present:
        if fid in skip:
            continue
        try:
            snapshots.append(repo.load_snapshot(fid))
        except StorageError as exc:  # permissions, I/O: nothing says the snapshot is damaged
            raise StorageError(
                f"snapshot {fid[:8]} cannot be read ({exc}); prune needs every snapshot "
                "and deleted nothing"
            ) from None
        except CasError as exc:
            raise IntegrityError(
                f"snapshot {fid[:8]} is unreadable: {exc}; prune cannot tell which data it "
                "needs (run 'casbackup check', or remove the damaged snapshot with "
                f"'casbackup forget {fid[:8]}')"
            ) from None
    into.update(extra_ids)
    walked: set[bytes] = set()  # apart from ``into``: a chunk id must never stop a tree walk
    stack: list[BlobId] = [s.root for s in snapshots]
    stack.extend(extra_trees)
    progress = Progress(phase="finding used data", files_total=len(snapshots), unit="snapshot")
    while stack:
        tree_id = stack.pop()
        if tree_id in walked:
            continue
        try:
            nodes = repo.load_tree(tree_id)
        except StorageError as exc:
            raise StorageError(
                f"tree {tree_id.hex()[:16]} cannot be read ({exc}); prune needs every tree "
                "and deleted nothing"
            ) from None
        except CasError as exc:
            raise IntegrityError(
                f"tree {tree_id.hex()[:16]} cannot be read ({exc}); prune needs every tree: "
                "run 'casbackup check'"
            ) from None
        finally:
            repo.cache.release_pages()  # the look-ups' index pages (see check's _load_tree)
        walked.add(tree_id)
        ids = [tree_id]  # the tree's, added at once: a call per chunk cost seconds at millions
        for node in nodes:
            ids += node.content
            if node.subtree is not None and node.subtree not in walked:
                stack.append(node.subtree)
        into.update(ids)
        progress.files_done = len(walked)
        if len(walked) % 256 == 0:
            reporter.progress(progress)
    return len(snapshots)
