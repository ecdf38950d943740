"""``rewrite``: take files out of existing snapshots (restic's ``rewrite --exclude``).

A backup that took in something it must not keep (a private key, a customer export, a
folder of someone's personal data) can only be removed whole with ``forget``, losing every
other file of those nights. ``rewrite`` writes, for each snapshot that holds a path the
exclude patterns match, a new snapshot whose trees leave those paths out; every other field
of the record stays (time, application, paths, parent, tags), the tag ``rewritten`` is
added, the summary's file and byte totals lose what was left out, and a database dump left
out takes its record with it. With ``forget_old`` the original snapshot is then deleted;
``prune`` afterwards deletes the data nothing else names.

The new record is a new snapshot (its content differs): it has no ``original``, so the old
snapshot's verification records do not apply to it.

Patterns are the backup's exclude patterns (archiver/excludes.py), matched against the
absolute paths in the snapshot (``/srv/app/secrets/key.pem``); a folder that matches is
left out with everything below it.

Crash safety: a new snapshot is durable (its trees indexed first, ``save_snapshot``) before
the old one is deleted. Run again after an interruption, the same rewrite gives the same
root tree, and the snapshot written last time is recognised (tag, start time, application
and root tree) instead of written twice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from casbackup.archiver.excludes import Excluder
from casbackup.repo.ids import BlobId
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.tree import Node, NodeKind, encode_tree
from casbackup.reporter import NULL_REPORTER, Progress, Reporter

REWRITTEN_TAG = "rewritten"


@dataclass
class SnapshotRewrite:
    """One snapshot that held excluded paths."""

    old: str  # its id
    new: str | None  # the rewritten snapshot's id (None in a dry run)
    app: str | None
    time: str
    removed: list[str] = field(default_factory=list)  # paths left out (folders: once)
    files: int = 0  # files left out, those inside left-out folders included
    bytes: int = 0  # their sizes
    forgotten: bool = False  # the old snapshot was deleted


@dataclass
class RewriteResult:
    checked: int = 0
    rewritten: list[SnapshotRewrite] = field(default_factory=list)
    dry_run: bool = False
    emptied: list[str] = field(default_factory=list)  # ids the patterns would leave empty


@dataclass(frozen=True)
class _Rebuilt:
    tree: BlobId
    removed: tuple[bytes, ...] = ()
    files: int = 0
    bytes: int = 0


def rewrite_snapshots(
    repo: Repository,
    snapshots: Sequence[Snapshot],
    excluder: Excluder,
    *,
    forget_old: bool = False,
    dry_run: bool = False,
    reporter: Reporter = NULL_REPORTER,
) -> RewriteResult:
    """Rewrite each of ``snapshots`` that holds a path ``excluder`` matches, as the module
    docstring says; with ``dry_run`` only report. Must run under the exclusive lock.

    Raises UsageError when ``excluder`` has no pattern; IntegrityError/FormatError when a
    tree cannot be read (nothing is written for that snapshot; ``repair snapshots`` first),
    StorageError when the store refuses a read or a write."""
    from casbackup.errors import UsageError

    for pattern in excluder.patterns:
        if pattern.strip().lstrip("!").rstrip("/") == "":  # '/' reduces to no rule at all
            raise UsageError(
                f"pattern {pattern!r} names the whole snapshot: to remove snapshots, forget them"
            )
    if not excluder:
        raise UsageError("give the paths to take out with --exclude (or --exclude-file)")
    result = RewriteResult(dry_run=dry_run)
    walker = _TreeRewrite(repo, excluder, dry_run)
    progress = Progress(phase="rewriting snapshots", files_total=len(snapshots), unit="snapshot")
    every = repo.list_snapshots(warnings=[])
    existing = {(s.start_ns, s.app, s.tree): s.id for s in every if REWRITTEN_TAG in s.tags}
    renamed: dict[str, str] = {}  # old id -> rewritten id: later records' parents follow
    for snap in sorted(snapshots, key=lambda s: (s.start_ns, s.id)):
        result.checked += 1
        rebuilt = walker.rewrite(snap.root)
        progress.files_done += 1
        reporter.progress(progress)
        if rebuilt.tree == snap.root:
            continue
        gone = [os.fsdecode(p) for p in rebuilt.removed]
        keep_db = tuple(
            db for db in snap.databases
            if not any(db.path == p or db.path.startswith(p + "/") for p in gone)
        )  # fmt: skip
        tags = snap.tags if REWRITTEN_TAG in snap.tags else (*snap.tags, REWRITTEN_TAG)
        s = snap.summary
        new = replace(
            snap,
            tree=rebuilt.tree.hex(),
            tags=tags,
            databases=keep_db,
            summary=replace(
                s,
                files_total=max(0, s.files_total - rebuilt.files),
                bytes_total=max(0, s.bytes_total - rebuilt.bytes),
            ),
            parent=renamed.get(snap.parent, snap.parent) if snap.parent else None,
            base_full=renamed.get(snap.base_full, snap.base_full) if snap.base_full else None,
            original=None,
            revision=0,
            id="",
        )
        if new.summary.files_total == 0 and not keep_db:
            # Nothing would be left: an empty snapshot of the same time could become
            # 'latest' (a restore of nothing) or the next backup's parent. restic drops such
            # a snapshot; here it stays as it is, said, for the user to forget if meant.
            result.emptied.append(snap.id)
            continue
        entry = SnapshotRewrite(snap.id, None, snap.app, snap.time, gone, rebuilt.files,
                                rebuilt.bytes)  # fmt: skip
        result.rewritten.append(entry)
        if dry_run:
            continue
        entry.new = repo.replace_snapshot(snap, new, stored=existing, delete_old=forget_old)
        renamed[snap.id] = entry.new
        entry.forgotten = forget_old
    return result


class _TreeRewrite:
    """Rewrites trees bottom-up. A tree's rewrite depends on where it sits (patterns match
    absolute paths), so results are kept per (tree id, path): snapshots of one application
    share most of theirs at the same paths."""

    def __init__(self, repo: Repository, excluder: Excluder, dry_run: bool) -> None:
        self.repo = repo
        self.excluder = excluder
        self.dry_run = dry_run
        self.done: dict[tuple[bytes, bytes], _Rebuilt] = {}

    def excluded(self, path: bytes) -> bool:
        return self.excluder.excluded(os.fsdecode(path))

    def rewrite(self, root: BlobId) -> _Rebuilt:
        """The rewritten root; an explicit stack, as ``Repository.walk`` (any depth)."""
        work: list[tuple[str, BlobId, bytes, Any]] = [("enter", root, b"", None)]
        while work:
            op, tree_id, path, nodes = work.pop()
            if op == "exit":
                self.done[(tree_id, path)] = self._rebuild(tree_id, path, nodes)
                continue
            if (tree_id, path) in self.done:
                continue
            loaded = self.repo.load_tree(tree_id)
            work.append(("exit", tree_id, path, loaded))
            for node in loaded:
                below = path + b"/" + node.name
                if node.subtree is not None and not self.excluded(below):
                    if (node.subtree, below) not in self.done:
                        work.append(("enter", node.subtree, below, None))
        return self.done[(root, b"")]

    def _rebuild(self, tree_id: BlobId, path: bytes, nodes: list[Node]) -> _Rebuilt:
        out: list[Node] = []
        removed: list[bytes] = []
        files = size = 0
        for node in nodes:
            here = path + b"/" + node.name
            if self.excluded(here):
                removed.append(here)
                f, n = self._count(node, here)
                files, size = files + f, size + n
                continue
            if node.subtree is not None:
                below = self.done[(node.subtree, here)]
                if below.tree != node.subtree:
                    removed.extend(below.removed)
                    files, size = files + below.files, size + below.bytes
                    node = replace(node, subtree=below.tree)
            out.append(node)
        if not removed:
            return _Rebuilt(tree_id)
        new_id = self.repo.blob_id(encode_tree(out)) if self.dry_run else self.repo.save_tree(out)
        return _Rebuilt(new_id, tuple(removed), files, size)

    def _count(self, node: Node, path: bytes) -> tuple[int, int]:
        """(files, bytes) a left-out entry takes off the snapshot's totals."""
        if node.kind == NodeKind.FILE:
            return 1, max(node.size, 0)
        if node.subtree is None:
            return 0, 0
        files = size = 0
        for _p, inner in self.repo.walk(node.subtree, path):
            if inner.kind == NodeKind.FILE:
                files, size = files + 1, size + max(inner.size, 0)
        return files, size


__all__ = ["REWRITTEN_TAG", "RewriteResult", "SnapshotRewrite", "rewrite_snapshots"]
