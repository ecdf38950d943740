"""Which blobs the repository still needs: every tree and chunk reachable from a snapshot.

Prune deletes what this does not return, so it fails loudly rather than guess: an
unreadable snapshot record or tree stops it (its blobs would look unused).
"""

from __future__ import annotations

from collections.abc import Iterable

from casbackup.errors import CasError, IntegrityError
from casbackup.repo.ids import BlobId
from casbackup.repo.repository import Repository
from casbackup.reporter import NULL_REPORTER, Progress, Reporter


def find_used_blobs(
    repo: Repository,
    reporter: Reporter = NULL_REPORTER,
    extra_trees: Iterable[BlobId] = (),
) -> tuple[int, set[BlobId]]:
    """(number of snapshots, ids of every tree and data blob they reach).

    ``extra_trees`` are more roots to keep (for records that name trees, not snapshots).
    Shared subtrees are walked once, so unchanged folders across a year of dailies cost
    one visit.
    """
    warnings: list[str] = []
    snapshots = repo.list_snapshots(warnings=warnings, include_forgotten=True)  # keep their data
    if warnings:
        raise IntegrityError(
            f"{warnings[0]}; prune cannot tell which data it needs "
            "(run 'casbackup check', or forget the damaged snapshot)"
        )
    used: set[BlobId] = set()
    walked: set[BlobId] = set()  # apart from ``used``: a chunk id must never stop a tree walk
    stack: list[BlobId] = [s.root for s in snapshots]
    stack.extend(extra_trees)
    progress = Progress(phase="finding used data", files_total=len(snapshots))
    while stack:
        tree_id = stack.pop()
        if tree_id in walked:
            continue
        try:
            nodes = repo.load_tree(tree_id)
        except CasError as exc:
            raise IntegrityError(
                f"tree {tree_id.hex()[:16]} cannot be read ({exc}); prune needs every tree: "
                "run 'casbackup check'"
            ) from None
        walked.add(tree_id)
        used.add(tree_id)
        for node in nodes:
            used.update(node.content)
            if node.subtree is not None and node.subtree not in walked:
                stack.append(node.subtree)
        progress.files_done = len(used)
        if len(used) % 256 == 0:
            reporter.progress(progress)
    return len(snapshots), used
