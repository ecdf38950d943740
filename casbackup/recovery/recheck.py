"""Re-check a snapshot's data before a recovery touches anything.

A verification record says the snapshot was restorable when it was verified; packs can rot
since. So every blob the recovery needs is loaded again (decrypted and authenticated) and each
file's bytes are re-hashed against the BLAKE3 recorded at backup time, read per pack in
batches as the restore reads them (`archiver.readcheck`). Only if everything checks out is
the target touched.

The manifest (path, size, hash) of the first MANIFEST_LIMIT files goes into the report; the
counts always cover everything.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from casbackup.archiver.readcheck import read_and_verify
from casbackup.engines.base import canonical_engine_name
from casbackup.engines.pg_globals import recorded_globals
from casbackup.errors import CasError, NotFound
from casbackup.recovery.plan import RecoveryPlan
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import DatabaseRecord
from casbackup.repo.tree import Node, NodeKind
from casbackup.reporter import NULL_REPORTER, Progress, Reporter

MANIFEST_LIMIT = 10_000


@dataclass
class Recheck:
    files: int = 0
    bytes: int = 0
    duration_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    manifest: list[dict[str, object]] = field(default_factory=list)
    manifest_truncated: bool = False


def recheck(
    repo: Repository,
    plan: RecoveryPlan,
    reporter: Reporter = NULL_REPORTER,
    *,
    globals: bool = True,
) -> Recheck:
    """Read every file and dump ``plan`` restores, and (``globals``: the roles are restored
    too) each PostgreSQL dump's globals file beside it; what fails is in ``problems``.

    Files are read in batches through the restore's read plan (archiver/readcheck.py:
    merged ranged reads per pack, on reader threads), not chunk by chunk."""
    clock = time.monotonic()
    out = Recheck()
    progress = Progress(phase="re-check", bytes_total=plan.bytes_total)
    for done in read_and_verify(repo, _files(repo, plan, out, globals)):
        path, restored_to, content_hash = done.tag
        if done.problem is not None:
            out.problems.append(f"{path}: {done.problem}")
            continue
        out.files += 1
        out.bytes += done.size
        progress.files_done += 1
        progress.bytes_done += done.size
        if len(out.manifest) < MANIFEST_LIMIT:
            out.manifest.append({"path": path, "restored_to": restored_to, "size": done.size,
                                 "blake3": content_hash.hex()})  # fmt: skip
        else:
            out.manifest_truncated = True
        if progress.files_done % 64 == 0:
            reporter.progress(progress)
    reporter.progress(progress)
    out.duration_s = round(time.monotonic() - clock, 3)
    return out


def _files(
    repo: Repository, plan: RecoveryPlan, out: Recheck, globals: bool
) -> Iterator[tuple[Node, tuple[str, str, bytes]]]:
    """The file nodes ``recheck`` reads, each with (path, where it is restored to, its
    recorded hash), in the order of the plan; what cannot be found is a problem in ``out``."""

    def one(node: Node, path: str, restored_to: str) -> tuple[Node, tuple[str, str, bytes]]:
        return node, (path, restored_to, node.content_hash)

    for item in plan.files:
        try:
            node = repo.find_node(plan.snapshot.root, item.source)
        except CasError as exc:
            out.problems.append(f"{item.source}: {exc}")
            continue
        if node is None:
            continue
        if node.kind == NodeKind.FILE:
            yield one(node, item.source, item.target)
            continue
        base = item.source.rstrip("/")
        prefix = os.fsencode(item.source.rstrip("/"))
        stack = [(node.subtree, prefix)] if node.subtree is not None else []
        while stack:
            tree_id, where = stack.pop()
            try:
                children = repo.load_tree(tree_id)
            except CasError as exc:
                out.problems.append(f"{os.fsdecode(where)}: folder listing is unreadable: {exc}")
                continue
            for child in children:
                path = where + b"/" + child.name
                if child.kind == NodeKind.FILE:
                    shown = os.fsdecode(path)
                    yield one(child, shown, item.target + shown[len(base) :])
                elif child.kind == NodeKind.DIR and child.subtree is not None:
                    stack.append((child.subtree, path))
    for db in plan.databases:
        try:
            node = repo.find_node(plan.snapshot.root, db.record.path)
        except CasError as exc:
            out.problems.append(f"{db.record.path}: {exc}")
            continue
        if node is None or node.kind != NodeKind.FILE:
            out.problems.append(f"{db.record.path}: the dump is not a file in the snapshot")
            continue
        yield one(node, db.record.path, db.where)
        if globals:
            # The roles are read before the dump loads, after the files were restored: a
            # damaged globals file found only then left the target half-recovered.
            companion = _globals_node(repo, plan, db.record, out)
            if companion is not None:
                yield one(companion[1], companion[0], f"{db.where} (roles)")


def _globals_node(
    repo: Repository, plan: RecoveryPlan, record: DatabaseRecord, out: Recheck
) -> tuple[str, Node] | None:
    """(path, node) of the globals file a PostgreSQL dump's record names, when the snapshot
    holds it; a missing one is restore_companions' warning, a record naming no file name a
    problem (the recovery would fail on it half-way)."""
    if canonical_engine_name(record.engine) not in ("postgresql", "mysql"):
        return None
    try:
        name = recorded_globals(record.properties)
        if name is None:
            return None
        path = posixpath.join(posixpath.dirname(record.path), name)
        node = repo.find_node(plan.snapshot.root, path)
    except NotFound:
        return None
    except CasError as exc:
        out.problems.append(f"{record.path}: {exc}")
        return None
    return (path, node) if node is not None and node.kind == NodeKind.FILE else None
