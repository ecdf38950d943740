"""What a night costs in tree bytes when one file of a large folder changes (issue 16).

A folder of --files small files is backed up, then for --nights nights one file changes
and it is backed up again, into a format 3 repository (every changed tree stored whole)
and a format 4 one (a tree over 4 KiB stored as a TREE_DELTA of the parent's,
repo/snapshotstore.py), alternated night by night. Prints per night the tree bytes each
backup added (the index's stored length of every TREE and TREE_DELTA blob, after zstd and
encryption) and its CPU time (user+sys of this process); then the CPU time to load the
last night's tree of the folder (``load_tree`` without the local tree cache: its chain
resolved from packs) in each repository.

    .venv/bin/python bench/tree_deltas.py [--files 10000] [--nights 20]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
from pathlib import Path

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.crypto.keyfile import WEAK_KDF
from casbackup.repo.config import RepoConfig
from casbackup.repo.ids import Kind
from casbackup.repo.repository import Repository
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--nights", type=int, default=20)
    args = parser.parse_args()
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
