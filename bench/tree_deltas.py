"""What a night costs in tree bytes when one file of a large folder changes (issue 16).

A folder of --files small files is backed up, then for --nights nights one file changes
and it is backed up again, into a format 3 repository (every changed tree stored whole)
and a format 4 one (a tree over 4 KiB stored as a TREE_DELTA of the parent's,
repo/snapshotstore.py), alternated night by night. Prints per night the tree bytes each
backup added (the index's stored length of every TREE and TREE_DELTA blob, after zstd and
encryption) and its CPU time (user+sys of this process); then the CPU time to load the
last night's tree of the folder (``load_tree`` without the local tree cache: its chain
resolved from packs) in each repository. First, the alternative simulated
(``split_lists``): the same changes if lists were split into list blobs.

    .venv/bin/python bench/tree_deltas.py [--files 10000] [--nights 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
from dataclasses import replace
from pathlib import Path

import blake3

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.crypto.envelope import Sealer
from casbackup.crypto.keyfile import WEAK_KDF
from casbackup.repo import codec
from casbackup.repo.config import RepoConfig
from casbackup.repo.ids import Kind
from casbackup.repo.repository import Repository
from casbackup.repo.tree import Node, NodeKind, encode_tree
from casbackup.store.local import LocalBackend


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def tree_bytes(repo: Repository) -> int:
    """Stored bytes of every tree blob the repository's index names."""
    return sum(
        loc.stored_len
        for fid in repo.index_files()
        for _, loc in repo.load_index_file(fid).blobs()
        if loc.kind in (Kind.TREE, Kind.TREE_DELTA)
    )


def _stored(sealer: Sealer, plain: bytes) -> int:
    """What one blob of ``plain`` takes in a pack (zstd level 3, sealed)."""
    return len(sealer.seal(Kind.TREE, bytes(32), codec.compress(plain, 3)))


def _pieces(items: list[bytes], every: int) -> list[bytes]:
    """``items`` joined into pieces cut after each item whose first byte is below
    256 / ``every`` (content-defined: an unchanged run of items gives the same pieces)."""
    out, piece = [], b""
    for item in items:
        piece += item
        if item[0] < 256 // every:
            out.append(piece)
            piece = b""
    return [*out, piece] if piece else out


def split_lists(files: int) -> None:
    """The alternative measured against tree deltas: lists split into list blobs.

    Simulated, not built: a night's cost if a file's chunk list (1,600 ids, the 100 MB
    PostgreSQL dump's) or a folder's nodes (``--files`` of them) were stored as
    content-defined pieces of about 4 KiB (the size below which tree deltas are not
    used), the tree holding the pieces' ids: every piece that changed is stored again,
    and so is the list of pieces. One id (or one node) changes, as in the cases above."""
    sealer = Sealer(os.urandom(32))
    ids = [os.urandom(32) for _ in range(1600)]
    new = [os.urandom(32), *ids[1:]]
    for name, old_items, new_items, every in (
        ("PostgreSQL dump's chunk list (1,600 ids)", ids, new, 128),
        (f"{files}-file folder's nodes", *_folder_nodes(files), 23),
    ):
        before = set(_pieces(old_items, every))
        after = _pieces(new_items, every)
        changed = sum(_stored(sealer, p) for p in after if p not in before)
        listing = _stored(sealer, b"".join(os.urandom(32) for _ in after))
        print(f"split into ~4 KiB list blobs, {name}: {len(after)} pieces; a night stores "
              f"{changed:,} bytes of pieces + {listing:,} bytes for the list of pieces")  # fmt: skip


def _folder_nodes(files: int) -> tuple[list[bytes], list[bytes]]:
    """Each node of a folder's tree as encoded (the tree's bytes after its header), before
    and after one file changed."""
    import random

    rng = random.Random(0)
    nodes = [
        Node(name=b"file-%06d.txt" % i, kind=NodeKind.FILE, mtime_ns=1_700_000_000 * 10**9 + i,
             ctime_ns=1_700_000_000 * 10**9 + i, size=12, inode=1000 + i, device=2049,
             user="root", group="root", content=(rng.randbytes(32),),
             content_hash=rng.randbytes(32))
        for i in range(files)
    ]  # fmt: skip
    old = [encode_tree([n])[5:] for n in nodes]
    new = list(old)
    new[42] = encode_tree([replace(nodes[42], size=20, content_hash=rng.randbytes(32))])[5:]
    # pieces are cut on a hash of each node, not its first byte (its name's length)
    key = [blake3.blake3(n).digest()[:1] for n in old]
    return [k + n for k, n in zip(key, old, strict=True)], [
        k + n for k, n in zip(key, new, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--nights", type=int, default=20)
    args = parser.parse_args()
    split_lists(args.files)
    with tempfile.TemporaryDirectory(prefix="casb-tree-deltas-") as tmp:
        work = Path(tmp)
        os.environ["CASBACKUP_CACHE_DIR"] = str(work / "cache")
        os.environ.setdefault("CASBACKUP_STATE_DIR", str(work / "state"))
        folder = work / "src" / "big"
        folder.mkdir(parents=True)
        for i in range(args.files):
            (folder / f"file-{i:06d}.txt").write_bytes(b"line %d\n" % i)
        repos = {
            version: Repository.init(LocalBackend(str(work / f"repo{version}")), b"bench",
                                     kdf=WEAK_KDF, config=RepoConfig(version=version))
            for version in (3, 4)
        }  # fmt: skip
        options = BackupOptions(paths=(str(work / "src"),))
        before = {v: 0 for v in repos}
        snaps = {}
        print(f"{args.files} files; per night: tree bytes added (CPU s of the backup)")
        print(f"{'night':>5} " + " ".join(f"{'format ' + str(v):>22}" for v in repos))
        for night in range(args.nights + 1):
            if night:
                (folder / "file-000042.txt").write_bytes(b"changed on night %d\n" % night)
            cells = []
            for version, repo in repos.items():
                cpu = _cpu()
                snaps[version] = run_backup(repo, options).snapshot
                cpu = _cpu() - cpu
                total = tree_bytes(repo)
                cells.append(f"{total - before[version]:>12,} ({cpu:5.2f}s)")
                before[version] = total
            print(f"{night:>5} " + " ".join(f"{c:>22}" for c in cells), flush=True)
        for version, repo in repos.items():
            node = repo.find_node(snaps[version].root, os.fsencode(folder))
            assert node is not None and node.subtree is not None
            loc = repo.locate(node.subtree)
            cpu = _cpu()
            for _ in range(10):
                repo.load_tree(node.subtree, cached=False)
            cpu = (_cpu() - cpu) / 10
            print(f"format {version}: the folder's last tree is a {loc.kind.name} "
                  f"(chain depth {repo.tree_depth(node.subtree)}); load_tree {cpu * 1000:.1f} ms CPU; "
                  f"all trees {before[version]:,} bytes")  # fmt: skip
            repo.close()


if __name__ == "__main__":
    main()
