"""The one rule for a file node that contradicts its own content (issue 12, kind 9).

A tree is authenticated, but whoever holds the key (or a bug) can still write a file
node whose fields disagree: a size of 2^64-1 bytes with no chunks and no content hash
restored as an empty file and counted as a success. Every reader (restore, dump/cat,
the file-system view, verify, recover) and ``check`` apply this rule before trusting a
file node:

* a file has a 32-byte content hash (plain BLAKE3 of its bytes; backups always write one);
* a file without chunks is empty, and its hash is BLAKE3 of nothing;
* the raw sizes of its chunks (from the index) add up to its size, when they are known.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import blake3

from casbackup.errors import IntegrityError
from casbackup.repo.index import Location
from casbackup.repo.tree import Node, NodeKind

HASH_SIZE = 32
EMPTY_HASH = blake3.blake3(b"").digest()


def file_node_problem(node: Node, chunk_sizes: Sequence[int] | None = None) -> str | None:
    """Why a file node cannot be right, or None (also for nodes that are not files).

    ``chunk_sizes`` are the raw sizes of ``node.content`` in order (``Location.raw_len``);
    None when the caller has not looked them up (then only the node itself is judged)."""
    if node.kind != NodeKind.FILE:
        return None
    if len(node.content_hash) != HASH_SIZE:
        return "the snapshot records no content hash for this file (damaged or forged tree)"
    if not node.content:
        if node.size != 0:
            return f"the snapshot records {node.size} bytes but no content (damaged or forged tree)"
        if node.content_hash != EMPTY_HASH:
            return "the snapshot records an empty file whose hash is not that of no bytes"
    if chunk_sizes is not None:
        total = sum(chunk_sizes)
        if total != node.size:
            return (
                f"the snapshot records {node.size} bytes but the file's chunks hold {total} "
                "(damaged or forged tree)"
            )
    return None


def require_sound_file(
    node: Node, chunk_sizes: Sequence[int] | None = None, name: str | None = None
) -> None:
    """``file_node_problem`` as an IntegrityError (exit 22), prefixed by ``name`` if given."""
    problem = file_node_problem(node, chunk_sizes)
    if problem is not None:
        raise IntegrityError(problem if name is None else f"{name}: {problem}")


def tree_problems(
    get_many: Callable[[list[bytes]], list[Location | None]], nodes: Sequence[Node]
) -> list[tuple[Node, str]]:
    """(node, problem) for the file nodes of one tree, looking every chunk up at once with
    ``get_many`` (``IndexCache.get_many``: None for a missing blob). A file with a missing
    chunk is judged without sizes: the missing chunk is reported by its own check."""
    files = [n for n in nodes if n.kind == NodeKind.FILE]
    found = get_many([c for n in files for c in n.content]) if files else []
    out: list[tuple[Node, str]] = []
    pos = 0
    for node in files:
        locs = found[pos : pos + len(node.content)]
        pos += len(node.content)
        sizes = None if any(loc is None for loc in locs) else [loc.raw_len for loc in locs]
        problem = file_node_problem(node, sizes)
        if problem is not None:
            out.append((node, problem))
    return out
