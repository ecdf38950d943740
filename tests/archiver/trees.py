"""Snapshots built by hand through the library: trees with exactly the nodes a test needs."""

from __future__ import annotations

import blake3

from casbackup.repo.ids import BlobId, Kind
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot, now_utc
from casbackup.repo.tree import Node, NodeKind, encode_tree


def file_node(repo: Repository, name: bytes, data: bytes, chunk: int = 0, **kw: object) -> Node:
    """A file node; ``chunk`` > 0 cuts the content into chunks of that many bytes."""
    step = chunk or max(len(data), 1)
    pieces = [data[i : i + step] for i in range(0, len(data), step)]
    content = tuple(repo.save_blob(Kind.DATA, piece)[0] for piece in pieces)
    return Node(name=name, kind=NodeKind.FILE, size=len(data), content=content,
                content_hash=blake3.blake3(data).digest(), **kw)  # type: ignore[arg-type]  # fmt: skip


def tree_of(repo: Repository, nodes: list[Node]) -> BlobId:
    return repo.save_blob(Kind.TREE, encode_tree(sorted(nodes, key=lambda n: n.name)))[0]


def dir_node(repo: Repository, name: bytes, children: list[Node], **kw: object) -> Node:
    kw.setdefault("mode", 0o755)
    return Node(name=name, kind=NodeKind.DIR, subtree=tree_of(repo, children), **kw)  # type: ignore[arg-type]


def symlink_node(name: bytes, target: bytes, **kw: object) -> Node:
    kw.setdefault("mode", 0o777)
    return Node(name=name, kind=NodeKind.SYMLINK, link_target=target, **kw)  # type: ignore[arg-type]


def snapshot_of(repo: Repository, nodes: list[Node], **kw: object) -> Snapshot:
    """A saved snapshot of ``nodes``; ``kw`` sets other fields (``xattrs=True``: a snapshot
    that recorded every entry's attributes)."""
    time_text, start_ns = now_utc()
    snap = Snapshot(time=time_text, start_ns=start_ns, host="h", user="u", paths=("/",),
                    tree=tree_of(repo, nodes).hex(), **kw)  # type: ignore[arg-type]  # fmt: skip
    return repo.save_snapshot(snap)
