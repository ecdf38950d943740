"""Tree deltas (issue 16, format version 4): a large folder's tree stored as a TREE_DELTA
of the parent snapshot's tree. Chains at the depth limit through every tree reader,
prune after forgetting the base's snapshot, a damaged base named by check, SIGKILL
during a backup, format versions. The chain depth limit is lowered to 3 so that a few
nights reach it; readers in subprocesses (the CLI) use the default limit, which is higher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.archiver.compare import SubtreeComparer
from casbackup.archiver.restore import RestoreOptions, restore
from casbackup.errors import IntegrityError, UnsupportedFormat
from casbackup.maintenance.diff import diff_snapshots
from casbackup.maintenance.migrate import migrate
from casbackup.maintenance.prune import PruneOptions, prune
from casbackup.maintenance.stats import repository_stats
from casbackup.repo import config as config_module
from casbackup.repo import delta
from casbackup.repo.config import FORMAT_VERSION, RepoConfig
from casbackup.repo.ids import BlobId, Kind
from casbackup.repo.index import Location
from casbackup.repo.pack import pack_name
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.snapshotstore import TREE_DELTA_MIN
from casbackup.repo.tree import raw_nodes
from casbackup.testing.fixtures import TEST_CONFIG_KW, flip_stored_byte, open_repo, run_cli
from casbackup.verify.check import CheckOptions, check
from casbackup.vfs import Vfs, snapshot_folder

DEPTH = 3
FILES = 300  # a tree of ~50 kB, well over TREE_DELTA_MIN


@pytest.fixture(autouse=True)
def _shallow_chains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delta, "MAX_DEPTH", DEPTH)


def make_source(root: Path, folders: tuple[str, ...] = ("big",)) -> Path:
    src = root / "src"
    for name in folders:
        (src / name).mkdir(parents=True)
        for i in range(FILES):
            (src / name / f"file-{i:04d}.txt").write_bytes(b"%s line %d\n" % (name.encode(), i))
    (src / "small").mkdir()
    (src / "small" / "a.txt").write_text("a\n")
    return src


def backup(repo: Repository, src: Path) -> Snapshot:
    snap = run_backup(repo, BackupOptions(paths=(str(src),), app="site")).snapshot
    assert snap is not None
    return snap


def change(src: Path, night: int, folders: tuple[str, ...] = ("big",)) -> None:
    for name in folders:
        (src / name / "file-0042.txt").write_bytes(b"changed on night %d\n" % night)


def tree_of(repo: Repository, snap: Snapshot, path: Path) -> BlobId:
    node = repo.find_node(snap.root, os.fsencode(path))
    assert node is not None and node.subtree is not None
    return node.subtree


def contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def folder_nights(
    repo: Repository, root: Path, count: int
) -> tuple[Path, list[Snapshot], list[dict[str, bytes]]]:
    """``count`` nights, one file of big/ changed each (from the second): the source, the
    snapshots and what big/ held at each."""
    src = make_source(root)
    snaps, states = [], []
    for night in range(count):
        if night:
            change(src, night)
        snaps.append(backup(repo, src))
        states.append(contents(src / "big"))
    return src, snaps, states


@pytest.fixture
def chained(repo: Repository, tmp_path: Path):  # type: ignore[no-untyped-def]
    """DEPTH + 2 nights: big's tree goes full, 1, 2, 3 deltas deep, then (the chain full)
    1 deep again against the full tree at its bottom (``folder_nights``)."""
    return folder_nights(repo, tmp_path, DEPTH + 2)


def test_a_large_changed_folder_is_stored_as_tree_deltas_up_to_the_limit(  # type: ignore[no-untyped-def]
    repo: Repository, chained
) -> None:
    src, snaps, _ = chained
    trees = [tree_of(repo, s, src / "big") for s in snaps]
    assert len(set(trees)) == len(trees)
    assert [repo.tree_depth(t) for t in trees] == [0, 1, 2, 3, 1]
    assert [repo.locate(t).kind for t in trees] == [Kind.TREE] + [Kind.TREE_DELTA] * 4
    # past the limit the delta is made against the full tree at the chain's bottom
    assert repo.locate(trees[-1]).base == trees[0]
    full = repo.locate(trees[0]).stored_len
    assert full > 8_000
    for t in trees[1:]:
        assert repo.locate(t).raw_len > TREE_DELTA_MIN
        assert repo.locate(t).stored_len < full / 10  # one changed node, not the whole list
    # a small folder's tree is always stored whole
    assert repo.locate(tree_of(repo, snaps[-1], src / "small")).kind == Kind.TREE
    # tree deltas live in tree packs: every blob of their packs is a tree
    packs = {repo.locate(t).pack for t in trees}
    for fid in repo.index_files():
        for _, loc in repo.load_index_file(fid).blobs():
            if loc.pack in packs:
                assert loc.kind in (Kind.TREE, Kind.TREE_DELTA)


def test_every_tree_reader_round_trips_a_chain_at_the_limit(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, chained, tmp_path: Path
) -> None:
    src, snaps, states = chained
    deepest = snaps[DEPTH]
    tree = tree_of(repo, deepest, src / "big")
    assert repo.tree_depth(tree) == DEPTH
    names = sorted(n.encode() for n in states[DEPTH])
    # load_tree, from the repository and through the local tree cache
    for cached in (False, True, True):
        assert [n.name for n in repo.load_tree(tree, cached=cached)] == names
    # restore (every snapshot, one and two writers)
    for i, snap in enumerate(snaps):
        for workers in (1, 2):
            target = tmp_path / f"restored-{i}-{workers}"
            assert not restore(
                repo, snap, RestoreOptions(target=str(target), workers=workers)
            ).errors
            assert contents(Path(str(target) + str(src)) / "big") == states[i]
    # mount (the vfs core under FUSE)
    vfs = Vfs(repo)
    folder = f"/site/{snapshot_folder(deepest)}{src}/big"
    assert sorted(e.name for e in vfs.listdir(folder)) == sorted(states[DEPTH])
    assert vfs.read(folder + "/file-0042.txt", 0, 100) == states[DEPTH]["file-0042.txt"]
    # diff: one file changed between two nights whose trees are both deltas
    _, changes = diff_snapshots(repo, snaps[DEPTH - 1].root, deepest.root)
    # (the folders above src/ belong to pytest: other tests may touch them meanwhile)
    below = [c.path for c in changes if c.path.startswith(os.fsencode(f"{src}/"))]
    assert below == [os.fsencode(f"{src}/big/file-0042.txt")]
    # the CLI in real processes: ls, find, diff
    listing = run_cli("--json", "ls", f"{deepest.id[:12]}:{src}/big", repo=repo_path)
    assert listing.code == 0, listing.err
    assert len([line for line in listing.out.splitlines() if "file-" in line]) == FILES
    found = run_cli("find", "file-0042.txt", repo=repo_path)
    assert found.code == 0 and found.out.count("file-0042.txt") >= len(snaps), found.err
    res = run_cli("diff", snaps[0].id[:12], deepest.id[:12], repo=repo_path)
    assert res.code == 0 and "file-0042.txt" in res.out, res.err
    # check walks and reads every tree; --read-data resolves every tree delta in its pack
    report = check(repo, CheckOptions(read_data=True, workers=2))
    assert report.ok, report.errors
    assert report.trees >= len(snaps)
    # verify: restored into a sandbox and compared with the snapshot's trees
    from casbackup.verify.sandbox import VerifyOptions, verify_snapshot

    rec = verify_snapshot(repo, deepest, VerifyOptions(sandbox_dir=str(tmp_path))).record
    assert rec.ok
    # stats count tree deltas as trees
    stats = repository_stats(repo, [])
    assert stats.trees >= len({tree_of(repo, s, src / "big") for s in snaps})
    json.dumps(stats.__dict__, default=str)


def test_copy_stores_a_tree_delta_resolved(  # type: ignore[no-untyped-def]
    repo: Repository, chained, tmp_path: Path
) -> None:
    """A copy never depends on bases it did not copy: trees arrive whole, same ids."""
    from casbackup.crypto.keyfile import WEAK_KDF
    from casbackup.maintenance.copy import CopyOptions, copy_snapshots
    from casbackup.store.local import LocalBackend
    from casbackup.testing.fixtures import PASSWORD

    src, snaps, states = chained
    deepest = snaps[DEPTH]
    dst = Repository.init(LocalBackend(str(tmp_path / "dst")), PASSWORD.encode(), kdf=WEAK_KDF,
                          config=RepoConfig(**TEST_CONFIG_KW), key=repo.key)  # fmt: skip
    copy_snapshots(repo, dst, CopyOptions(snapshots=(deepest.id,)))
    (copied,) = dst.list_snapshots()
    tree = tree_of(dst, copied, src / "big")
    assert tree == tree_of(repo, deepest, src / "big")
    assert dst.locate(tree).kind == Kind.TREE
    target = tmp_path / "from-copy"
    assert not restore(dst, copied, RestoreOptions(target=str(target))).errors
    assert contents(Path(str(target) + str(src)) / "big") == states[DEPTH]
    assert check(dst, CheckOptions(read_data=True, workers=1)).ok
    dst.close()


def test_the_backup_compares_with_a_parent_tree_stored_as_a_delta(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, chained
) -> None:
    """The readers' comparison (archiver/compare.py) resolves the parent's tree chain:
    before, it refused anything but a TREE and the folder counted as changed."""
    src, snaps, _ = chained
    tree = tree_of(repo, snaps[DEPTH], src / "big")
    assert repo.locate(tree).kind == Kind.TREE_DELTA
    comparer = SubtreeComparer(repo_path, repo.cache, repo.opener, repo.key.chunk_id_key,
                               None, False, None)  # type: ignore[arg-type]  # fmt: skip
    try:
        assert comparer._load_tree(tree) == raw_nodes(repo.load_blob(tree, Kind.TREE))
    finally:
        comparer.close()
    again = backup(repo, src)  # unchanged: the same trees
    assert tree_of(repo, again, src) == tree_of(repo, snaps[-1], src)
    assert again.summary.files_unchanged == again.summary.files_total


def test_prune_after_forgetting_the_snapshots_that_hold_the_base_trees(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, chained, tmp_path: Path
) -> None:
    src, snaps, states = chained
    full = tree_of(repo, snaps[0], src / "big")
    for s in snaps[:2]:
        repo.delete_snapshot(s.id)
    home = repo.locate(full).pack
    plan, _ = prune(repo, PruneOptions(max_unused=0.0))  # repack every partly used pack
    assert home in {use.pack for use in plan.repack}  # the base tree was copied, not lost
    repo.close()
    with open_repo(repo_path) as fresh:
        assert fresh.locate(full).pack != home
        report = check(fresh, CheckOptions(read_data=True, workers=1))
        assert report.ok, report.errors
        for i, s in enumerate(snaps[2:], start=2):
            tree = tree_of(fresh, s, src / "big")
            assert fresh.locate(tree).kind == Kind.TREE_DELTA
            target = tmp_path / f"r-{i}"
            assert not restore(fresh, s, RestoreOptions(target=str(target))).errors
            assert contents(Path(str(target) + str(src)) / "big") == states[i]
        # repacked tree deltas stayed in tree packs
        packs = {fresh.locate(tree_of(fresh, s, src / "big")).pack for s in snaps[2:]}
        for fid in fresh.index_files():
            for _, loc in fresh.load_index_file(fid).blobs():
                if loc.pack in packs:
                    assert loc.kind in (Kind.TREE, Kind.TREE_DELTA)


def test_a_damaged_base_tree_is_named_by_check_in_every_snapshot(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, chained
) -> None:
    src, snaps, _ = chained
    full = tree_of(repo, snaps[0], src / "big")
    loc = repo.locate(full)
    flip_stored_byte(repo_path, loc.pack, loc.offset, loc.stored_len, 0x01)
    folder = f"{src}/big (folder unreadable)"
    for read_data in (False, True):
        report = check(repo, CheckOptions(read_data=read_data, workers=1))
        assert not report.ok
        for s in snaps:  # the full tree itself and every delta built on it, across snapshots
            assert folder in report.affected.get(s.id, []), (s.short_id, report.affected)
        text = "\n".join(report.errors)
        assert full.hex()[:12] in text, text  # the damaged blob is named
    with pytest.raises(IntegrityError):
        repo.load_tree(tree_of(repo, snaps[DEPTH], src / "big"), cached=False)


def test_chains_never_mix_tree_and_data_blobs(repo: Repository) -> None:
    tree_id, data_id = BlobId(b"t" * 32), BlobId(b"d" * 32)
    locs = {
        tree_id: Location("00" * 32, 0, 10, 10, Kind.TREE_DELTA, data_id),
        data_id: Location("00" * 32, 10, 10, 10, Kind.DATA),
    }
    with pytest.raises(IntegrityError, match="ends in a DATA"):
        delta.chain_of(locs.__getitem__, tree_id, locs[tree_id])
    locs[data_id] = Location("00" * 32, 10, 10, 10, Kind.DELTA, BlobId(b"x" * 32))
    with pytest.raises(IntegrityError, match="mixes kinds"):
        delta.chain_of(locs.__getitem__, tree_id, locs[tree_id])


def test_load_blob_keeps_trees_and_data_apart(repo: Repository, chained) -> None:  # type: ignore[no-untyped-def]
    src, snaps, _ = chained
    tree = tree_of(repo, snaps[1], src / "big")
    assert repo.locate(tree).kind == Kind.TREE_DELTA
    with pytest.raises(IntegrityError, match="expected DATA"):
        repo.load_blob(tree, Kind.DATA)
    assert repo.load_blob(tree, Kind.TREE) == repo.load_blob(tree)


def test_a_version_3_repository_writes_no_tree_delta_until_migrate(tmp_path: Path) -> None:
    from casbackup.crypto.keyfile import WEAK_KDF
    from casbackup.store.local import LocalBackend
    from casbackup.testing.fixtures import PASSWORD

    path = str(tmp_path / "v3")
    repo = Repository.init(LocalBackend(path), PASSWORD.encode(), kdf=WEAK_KDF,
                           config=RepoConfig(version=3, **TEST_CONFIG_KW))  # fmt: skip
    src = make_source(tmp_path)
    backup(repo, src)
    change(src, 1)
    snap = backup(repo, src)
    assert repo.deltas_allowed and not repo.tree_deltas_allowed
    assert repo.locate(tree_of(repo, snap, src / "big")).kind == Kind.TREE
    migrate(repo)
    assert repo.config.version == FORMAT_VERSION >= 4 and repo.tree_deltas_allowed
    change(src, 2)
    snap = backup(repo, src)
    assert repo.locate(tree_of(repo, snap, src / "big")).kind == Kind.TREE_DELTA
    repo.close()
    with open_repo(path) as again:
        assert again.config.version == FORMAT_VERSION
        assert check(again, CheckOptions(read_data=True, workers=1)).ok


def test_a_version_3_reader_refuses_a_version_4_repository(repo_path: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with open(os.path.join(repo_path, "config"), "rb") as f:
        raw = f.read()
    assert json.loads(raw)["version"] >= 4
    monkeypatch.setattr(config_module, "FORMAT_VERSION", 3)
    with pytest.raises(UnsupportedFormat) as exc:
        RepoConfig.decode(raw)
    assert exc.value.exit_code == 21 and "upgrade casbackup" in str(exc.value)


_KILL_BACKUP = """
import os, signal, sys
from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.repo.ids import Kind
from casbackup.repo.repository import Repository
from casbackup.testing.fixtures import open_repo
real, count = Repository.store_sealed, [0]
def store_sealed(self, kind, *a, **k):
    if kind == Kind.TREE_DELTA:
        count[0] += 1
        if count[0] == 2:
            self.flush()  # the first tree delta durable and indexed, the second never written
            os.kill(os.getpid(), signal.SIGKILL)
    return real(self, kind, *a, **k)
Repository.store_sealed = store_sealed
repo = open_repo(sys.argv[1])
run_backup(repo, BackupOptions(paths=(sys.argv[2],), app="site"))
"""


def test_sigkill_during_a_backup_writing_tree_deltas(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, tmp_path: Path
) -> None:
    folders = ("big", "big2")
    src = make_source(tmp_path, folders)
    first = backup(repo, src)
    before = {name: contents(src / name) for name in folders}
    change(src, 1, folders)
    repo.close()
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_BACKUP, repo_path, str(src)],
        env=dict(os.environ), cwd=str(Path(__file__).parents[2]), timeout=120,
    )  # fmt: skip
    assert proc.returncode == -9
    with open_repo(repo_path) as again:
        report = check(again, CheckOptions(read_data=True, workers=1))
        assert report.ok, report.errors
        assert [s.id for s in again.list_snapshots()] == [first.id]  # nothing half-committed
        snap = backup(again, src)  # the next run goes on, adopting the flushed tree delta
        kinds = {again.locate(tree_of(again, snap, src / name)).kind for name in folders}
        assert kinds == {Kind.TREE_DELTA}
        for s, expected in ((first, before), (snap, {n: contents(src / n) for n in folders})):
            target = tmp_path / f"r-{s.short_id}"
            assert not restore(again, s, RestoreOptions(target=str(target))).errors
            for name in folders:
                assert contents(Path(str(target) + str(src)) / name) == expected[name]
        assert check(again, CheckOptions(read_data=True, workers=1)).ok


def test_a_cold_tree_cache_reads_a_tree_pack_with_deltas_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Remote stores (repo/treecache.py): a tree pack holding tree deltas is still read
    whole once; its TREE blobs are cached, its TREE_DELTA blobs resolved on reading."""
    from casbackup.repo.tree import Node, NodeKind
    from casbackup.testing.fixtures import make_repo
    from tests.store.test_tree_cache import RemoteMemory

    def nodes(changed: int) -> list[Node]:
        return [
            Node(name=b"f%04d" % i, kind=NodeKind.FILE, size=i,
                 content_hash=bytes([i % 256]) * 32, mtime_ns=changed if i == 7 else 0)
            for i in range(FILES)
        ]  # fmt: skip

    monkeypatch.setenv("CASBACKUP_CACHE_DIR", str(tmp_path / "writer"))
    backend = RemoteMemory()
    with make_repo(backend) as repo:
        ids = [repo.save_tree(nodes(0))]
        for night in range(1, DEPTH + 1):
            repo.flush()  # a base is a stored tree (a parent snapshot's)
            ids.append(repo.save_tree(nodes(night), ids[-1]))
        other = repo.save_tree(nodes(-1)[:5])  # a whole tree in the same pack as a delta
        repo.flush()
        assert [repo.tree_depth(t) for t in ids] == list(range(DEPTH + 1))
        assert repo.locate(other).pack == repo.locate(ids[-1]).pack
    monkeypatch.setenv("CASBACKUP_CACHE_DIR", str(tmp_path / "reader"))  # a new client
    backend.pack_reads.clear()
    repo = open_repo(backend)
    assert repo._tree_cache is not None
    assert repo.load_tree(other) == nodes(-1)[:5]
    # the pack was read whole and its TREE cached: no ranged read of it (before, a pack
    # holding a TREE_DELTA counted as a data pack: read whole, then the tree read again)
    assert backend.pack_reads == [(pack_name(repo.locate(other).pack), 0, None)]
    backend.pack_reads.clear()
    for night, tree in reversed(list(enumerate(ids))):
        assert repo.load_tree(tree) == nodes(night)
    whole = [r[0] for r in backend.pack_reads if r[2] is None]
    packs = {pack_name(repo.locate(t).pack) for t in ids[:-1]}
    assert sorted(whole) == sorted(packs)  # each other tree pack (one per flush here), once
    for tree in ids:  # every tree, resolved, is now in the cache
        assert repo._tree_cache.get(tree) is not None
    repo.close()


_KILL_PRUNE = """
import os, signal, sys
from casbackup.maintenance.prune import PruneOptions, prune
from casbackup.testing.fixtures import open_repo
repo = open_repo(sys.argv[1])
real_put, real_delete = repo.backend.put, repo.backend.delete
where = sys.argv[2]
def put(name, data):
    real_put(name, data)
    if where == "repack" and name.startswith("data/"):
        os.kill(os.getpid(), signal.SIGKILL)  # a new pack stored, nothing indexed
    if where == "index" and name.startswith("index/"):
        os.kill(os.getpid(), signal.SIGKILL)  # the new index written, old packs all there
def delete(name):
    if where == "delete" and name.startswith("data/"):
        os.kill(os.getpid(), signal.SIGKILL)  # before the first old pack goes
    real_delete(name)
repo.backend.put, repo.backend.delete = put, delete
prune(repo, PruneOptions(max_unused=0.0))
"""


@pytest.mark.parametrize("where", ["repack", "index", "delete"])
def test_sigkill_during_a_prune_repacking_base_trees(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, chained, tmp_path: Path, where: str
) -> None:
    src, snaps, states = chained
    for s in snaps[:2]:
        repo.delete_snapshot(s.id)
    repo.close()
    proc = subprocess.run([sys.executable, "-c", _KILL_PRUNE, repo_path, where],
                          env=dict(os.environ), timeout=120)  # fmt: skip
    assert proc.returncode == -9
    with open_repo(repo_path) as again:
        report = check(again, CheckOptions(read_data=True, workers=1))
        assert report.ok, report.errors
        prune(again, PruneOptions(max_unused=0.0))
        assert check(again, CheckOptions(read_data=True, workers=1)).ok
        for i, s in enumerate(snaps[2:], start=2):
            target = tmp_path / f"r-{i}"
            assert not restore(again, s, RestoreOptions(target=str(target))).errors
            assert contents(Path(str(target) + str(src)) / "big") == states[i]


def test_repair_index_rebuilds_tree_delta_bases_from_pack_headers(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, chained
) -> None:
    from casbackup.verify.repair import repair_index

    src, snaps, states = chained
    trees = [tree_of(repo, s, src / "big") for s in snaps]
    bases = [repo.locate(t).base for t in trees]
    for name in os.listdir(os.path.join(repo_path, "index")):
        os.remove(os.path.join(repo_path, "index", name))
    repo.close()
    with open_repo(repo_path) as again:
        assert repair_index(again).packs_from_headers > 0
        assert [again.locate(t).base for t in trees] == bases
        assert [again.locate(t).kind for t in trees] == [Kind.TREE] + [Kind.TREE_DELTA] * 4
        for tree, state in zip(trees, states, strict=True):
            assert [n.name for n in again.load_tree(tree, cached=False)] == sorted(
                name.encode() for name in state
            )
        assert check(again, CheckOptions(read_data=True, workers=1)).ok
