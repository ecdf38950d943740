"""Find which snapshots hold paths matching a pattern, reading only trees (never file data).

Consecutive snapshots share most of their subtrees (same tree id = same contents), so the
matches found below a subtree are remembered and reused instead of walking it again. A
pattern with a ``/`` depends on where the subtree sits, so there the memo key includes
the subtree's path; a basename pattern's matches depend on the tree alone.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from casbackup.archiver.excludes import Excluder
from casbackup.errors import CasError, NotFound, UsageError
from casbackup.repo.ids import BlobId
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.snapshotstore import no_snapshot_of
from casbackup.repo.tree import Node, NodeKind
from casbackup.units import plural

# Remembered subtrees; beyond this the oldest are forgotten (walked again if met again).
MEMO_ENTRIES = 200_000


@dataclass(frozen=True)
class FindOptions:
    pattern: str
    app: str | None = None
    path: str = "/"  # search only below this absolute path of each snapshot
    newest: int | None = None  # only the N most recent snapshots (after the app filter)


@dataclass(frozen=True)
class Match:
    snapshot: Snapshot
    path: bytes
    node: Node


@dataclass
class FindStats:
    snapshots: int = 0
    trees_walked: int = 0
    trees_reused: int = 0
    warnings: list[str] = field(default_factory=list)


# One tree's relevant entries, in name order: (node, matched, what matched below it). Results
# nest (not keys into the memo), so forgetting a memo entry never breaks a result in use.
_Result = tuple[tuple[Node, bool, "_Result | None"], ...]


class Finder:
    def __init__(self, repo: Repository, options: FindOptions) -> None:
        pattern = options.pattern.strip()
        if not pattern or pattern.startswith("!"):
            raise UsageError("give a pattern to look for (a name like '*.conf' or a path)")
        parts = [p for p in options.path.split("/") if p and p != "."]
        if ".." in parts:
            raise UsageError(f"--path {options.path}: give it without '..'")
        self.repo = repo
        self.options = options
        # One spelling: '//srv' or '/srv/./x' would be shown as given and miss '/' patterns.
        self.path = "/" + "/".join(parts)
        self._excluder = Excluder([pattern], kind="search")
        self._path_dependent = "/" in pattern.rstrip("/")
        self._memo: OrderedDict[object, _Result] = OrderedDict()
        self.stats = FindStats()

    def snapshots(self) -> list[Snapshot]:
        every = self.repo.list_snapshots(warnings=self.stats.warnings)
        snaps = every
        if self.options.app is not None:
            snaps = [s for s in every if s.app == self.options.app]
            if not snaps:  # a mistyped --app must not read as "never backed up"
                self.stats.warnings.append(no_snapshot_of(self.options.app, every))
        if self.options.newest is not None:
            snaps = snaps[-self.options.newest :] if self.options.newest > 0 else []
        return snaps

    def run(self) -> Iterator[Match]:
        """Matches, snapshot by snapshot (oldest first), in path order within each."""
        base = os.fsencode(self.path.rstrip("/"))
        held = 0  # snapshots that hold the path
        for snap in self.snapshots():
            self.stats.snapshots += 1
            try:
                node = self.repo.find_node(snap.root, self.path)
            except NotFound:
                continue  # this snapshot does not have the folder asked about
            except CasError as exc:
                held += 1  # unreadable: said as such, not as a path it lacks
                self.stats.warnings.append(f"snapshot {snap.short_id}: {exc}")
                continue
            held += 1
            if node is not None:
                if self._excluder.excluded(os.fsdecode(base)):
                    yield Match(snap, base, node)
                if node.kind != NodeKind.DIR or node.subtree is None:
                    continue
                tree = node.subtree
            else:
                tree = snap.root
            result = self._search(tree, base, snap)
            if result is not None:
                for path, found in _expand(result, base):
                    yield Match(snap, path, found)
        if self.stats.snapshots and not held:
            searched = plural(self.stats.snapshots, "snapshot")
            self.stats.warnings.append(f"{self.path} is in none of the {searched} searched")

    def _key(self, tree: BlobId, prefix: bytes) -> object:
        return (tree, prefix) if self._path_dependent else tree

    def _open(self, tree: BlobId, prefix: bytes, snap: Snapshot) -> _Frame | _Result | None:
        """A remembered result, None for an unreadable tree, or a frame to search it in."""
        key = self._key(tree, prefix)
        known = self._memo.get(key)
        if known is not None:
            self._memo.move_to_end(key)
            self.stats.trees_reused += 1
            return known or None
        try:
            nodes = self.repo.load_tree(tree)
        except CasError as exc:
            shown = os.fsdecode(prefix) or "/"
            self.stats.warnings.append(f"snapshot {snap.short_id}: {shown}: {exc}")
            return None  # not memoised: the message names the snapshot it was met in
        self.stats.trees_walked += 1
        return _Frame(key, prefix, iter(nodes))

    def _search(self, tree: BlobId, prefix: bytes, snap: Snapshot) -> _Result | None:
        """What matches in one tree and below; None when nothing does.

        Post-order on an explicit stack of frames, not recursion: a snapshot may be any
        number of levels deep.
        """
        opened = self._open(tree, prefix, snap)
        if not isinstance(opened, _Frame):
            return opened
        stack = [opened]
        result: _Result | None = None
        while stack:
            frame = stack[-1]
            if frame.waiting is not None:  # the folder it went into is done: `result`
                node, matched = frame.waiting
                frame.waiting = None
                if matched or result is not None:
                    frame.items.append((node, matched, result))
            descended = False
            for node in frame.nodes:
                path = frame.prefix + b"/" + node.name
                matched = self._excluder.excluded(os.fsdecode(path))
                child = None
                if node.kind == NodeKind.DIR and node.subtree is not None:
                    opened = self._open(node.subtree, path, snap)
                    if isinstance(opened, _Frame):
                        frame.waiting = (node, matched)
                        stack.append(opened)
                        descended = True
                        break
                    child = opened
                if matched or child is not None:
                    frame.items.append((node, matched, child))
            if descended:
                continue
            stack.pop()
            done: _Result = tuple(frame.items)
            self._memo[frame.key] = done
            if len(self._memo) > MEMO_ENTRIES:
                self._memo.popitem(last=False)
            result = done or None
        return result


@dataclass
class _Frame:
    """One tree being searched: its remaining entries, what matched so far, and the entry
    whose folder is being searched below it (with whether the entry itself matched)."""

    key: object
    prefix: bytes
    nodes: Iterator[Node]
    items: list[tuple[Node, bool, _Result | None]] = field(default_factory=list)
    waiting: tuple[Node, bool] | None = None


def _expand(result: _Result, prefix: bytes) -> Iterator[tuple[bytes, Node]]:
    """(path, node) of every match in a result, in path order (explicit stack, any depth)."""
    stack: list[tuple[Iterator[tuple[Node, bool, _Result | None]], bytes]] = [
        (iter(result), prefix)
    ]
    while stack:
        entries, where = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        node, matched, child = entry
        path = where + b"/" + node.name
        if matched:
            yield path, node
        if child is not None:
            stack.append((iter(child), path))
