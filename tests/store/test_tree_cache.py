"""The local tree-blob cache (repo/treecache.py): untrusted, bounded, and what it saves on S3."""

from __future__ import annotations

import json
import os
from pathlib import Path

import blake3
import pytest

from casbackup.crypto.envelope import Opener, Sealer
from casbackup.repo.ids import Kind
from casbackup.repo.pack import pack_name
from casbackup.repo.tree import Node, NodeKind
from casbackup.repo.treecache import TreeCache, cap_bytes
from casbackup.store.memory import MemoryBackend
from casbackup.testing.fixtures import make_repo, open_repo, run_cli
from tests.store.conftest import FaultProxy, make_bucket

ROOT = b"r" * 32
ID_KEY = b"k" * 32


def hash_id(data: bytes) -> bytes:
    return blake3.blake3(data, key=ID_KEY).digest()


def cache_at(path: Path, cap: int = 1 << 20, root: bytes = ROOT) -> TreeCache:
    return TreeCache(str(path), Sealer(root), Opener(root), hash_id, cap)


def entry_path(cache: TreeCache, blob_id: bytes) -> Path:
    return Path(cache.root) / blob_id.hex()[:2] / blob_id.hex()


def test_round_trip_is_sealed_and_private(tmp_path: Path) -> None:
    cache = cache_at(tmp_path / "trees")
    tree = b"a tree naming secret-file.txt" * 20
    tid = hash_id(tree)
    assert cache.get(tid) is None and cache.misses == 1
    cache.put(tid, tree)
    stored = entry_path(cache, tid).read_bytes()
    assert b"secret-file" not in stored  # never plaintext on disk
    assert entry_path(cache, tid).stat().st_mode & 0o077 == 0
    assert cache.get(tid) == tree and cache.hits == 1
    # Another process (a new Sealer, same repository key) reads it too.
    assert cache_at(tmp_path / "trees").get(tid) == tree


@pytest.mark.parametrize("damage", ["flip", "truncate", "swap", "other-key", "planted"])
def test_bad_entries_are_misses_and_removed(tmp_path: Path, damage: str) -> None:
    cache = cache_at(tmp_path / "trees")
    tree, other = b"tree one" * 10, b"tree two" * 10
    tid, oid = hash_id(tree), hash_id(other)
    cache.put(tid, tree)
    cache.put(oid, other)
    path = entry_path(cache, tid)
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[-5] ^= 1
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:20])
    elif damage == "swap":  # a valid entry under another blob's name
        path.write_bytes(entry_path(cache, oid).read_bytes())
    elif damage == "other-key":  # sealed by another repository's key
        path.unlink()
        cache_at(tmp_path / "trees", root=b"x" * 32).put(tid, tree)
    else:  # plaintext planted by someone without the key
        path.write_bytes(tree)
    assert cache.get(tid) is None
    assert not path.exists()
    assert cache.get(oid) == other


def test_sealed_with_our_key_but_wrong_content_is_refused(tmp_path: Path) -> None:
    """Even an entry our key sealed must hash to its name (a bug elsewhere stays harmless)."""
    cache = cache_at(tmp_path / "trees")
    tid = hash_id(b"the real tree")
    cache.put(tid, b"not the real tree")
    assert cache.get(tid) is None


def test_bounded_least_recently_used_go_first(tmp_path: Path) -> None:
    cache = cache_at(tmp_path / "trees", cap=40_000)
    ids = []
    for i in range(30):
        tree = os.urandom(3000)  # incompressible: about 3 KiB per entry
        ids.append(hash_id(tree))
        cache.put(ids[-1], tree)
        os.utime(entry_path(cache, ids[-1]), (1000 + i, 1000 + i))
        if i == 2:
            assert cache.get(ids[0]) is not None  # used: its mtime is now, kept
    total = sum(f.stat().st_size for f in Path(cache.root).rglob("*") if f.is_file())
    assert total <= 40_000
    assert entry_path(cache, ids[0]).exists() and entry_path(cache, ids[-1]).exists()
    assert not entry_path(cache, ids[1]).exists()


def test_cap_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CASBACKUP_TREE_CACHE_MIB", "0")
    assert cap_bytes() == 0
    cache = cache_at(tmp_path / "trees", cap=cap_bytes())
    tid = hash_id(b"t")
    cache.put(tid, b"t")
    assert cache.get(tid) is None
    monkeypatch.setenv("CASBACKUP_TREE_CACHE_MIB", "nonsense")
    assert cap_bytes() == 256 << 20
    monkeypatch.setenv("CASBACKUP_TREE_CACHE_MIB", "3")
    assert cap_bytes() == 3 << 20


def test_unread_cache_folder_is_only_a_miss(tmp_path: Path) -> None:
    (tmp_path / "trees").write_text("a file where the folder should be")
    cache = cache_at(tmp_path / "trees")
    tid = hash_id(b"t")
    cache.put(tid, b"t")  # cannot write: ignored
    assert cache.get(tid) is None


def many_folders(root: Path, folders: int = 60) -> None:
    for i in range(folders):
        d = root / f"top{i % 6}" / f"sub{i}"
        d.mkdir(parents=True)
        (d / "f.txt").write_bytes(b"file %d\n" % i * 50)


def test_unchanged_rebackup_on_s3_reads_no_trees(
    moto_endpoint: str, s3_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trees come from the local cache: a re-backup of 67 folders makes a few dozen requests
    at most, none a tree read; a client with an empty cache reads them once, then caches."""
    bucket = make_bucket(moto_endpoint)
    proxy = FaultProxy(moto_endpoint, lambda n: None)
    try:
        repo = f"s3:{proxy.endpoint}/{bucket}/r"
        src = tmp_path / "src"
        many_folders(src)
        env = {"CASBACKUP_CACHE_DIR": str(tmp_path / "cache-a")}
        assert run_cli("init", repo=repo, env=env).code == 0
        assert run_cli("backup", str(src), repo=repo, env=env).code == 0

        def backup(cache: str) -> tuple[int, int]:
            before, got = proxy.count, len(proxy.seen)
            res = run_cli("--json", "backup", str(src), repo=repo,
                          env={"CASBACKUP_CACHE_DIR": str(tmp_path / cache)})  # fmt: skip
            assert res.code == 0, res.err
            assert json.loads(res.out.splitlines()[-1])["files_unchanged"] == 60
            gets = [p for m, p in proxy.seen[got:] if m == "GET" and "/data/" in p]
            # Lock requests are left out of the count: a lock is renewed and confirmed before
            # each index file and the snapshot (repo/lock.py), and how many index files a
            # backup writes depends on how fast the machine is, not on reading trees.
            locks = sum(1 for _, p in proxy.seen[got:] if "locks" in p)
            return proxy.count - before - locks, len(gets)

        requests, pack_reads = backup("cache-a")
        assert pack_reads == 0 and requests <= 30, (requests, proxy.seen[-requests:])
        # A new client: each tree pack is read whole once (not 67 tree reads).
        cold, cold_reads = backup("cache-b")
        assert 1 <= cold_reads <= 2 and cold <= 36, (cold, cold_reads)
        warm, warm_reads = backup("cache-b")
        assert warm_reads == 0 and warm <= 30
    finally:
        proxy.close()


class RemoteMemory(MemoryBackend):
    """A memory store that says it is remote (so the repository caches trees), and
    counts whole and ranged reads of packs."""

    remote = True

    def __init__(self) -> None:
        super().__init__()
        self.pack_reads: list[tuple[str, int, int | None]] = []

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if name.startswith("data/"):
            self.pack_reads.append((name, offset, length))
        return super().get(name, offset, length)


def folder_trees(repo, n: int) -> list[bytes]:  # type: ignore[no-untyped-def]
    ids = []
    for i in range(n):
        leaf = repo.save_tree([])
        ids.append(repo.save_tree([Node(name=b"d%d" % i, kind=NodeKind.DIR, subtree=leaf)]))
    repo.flush()
    return ids


def test_cold_cache_reads_each_small_tree_pack_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CASBACKUP_CACHE_DIR", str(tmp_path / "writer"))
    backend = RemoteMemory()
    with make_repo(backend) as repo:
        ids = folder_trees(repo, 40)
    monkeypatch.setenv("CASBACKUP_CACHE_DIR", str(tmp_path / "reader"))  # a new client
    backend.pack_reads.clear()
    repo = open_repo(backend)
    trees = [repo.load_tree(t) for t in ids]
    assert [t[0].name for t in trees] == [b"d%d" % i for i in range(40)]
    whole = [r for r in backend.pack_reads if r[2] is None]
    assert len(whole) == len(backend.pack_reads) == 1  # one pack, read whole once
    # A damaged tree pack: the prefetch fails, each tree is read alone and checked.
    monkeypatch.setenv("CASBACKUP_CACHE_DIR", str(tmp_path / "third"))
    [name] = [n for n, _ in backend.list("data/")]
    original = backend.get(name)
    backend.put(name, original[:-40] + bytes(40))  # the trailer and header tail zeroed
    backend.pack_reads.clear()
    again = open_repo(backend)
    assert again.load_tree(ids[0])[0].name == b"d0"
    assert [r[2] is None for r in backend.pack_reads] == [True, False]
    assert pack_name(repo.locate(ids[0]).pack) == name and repo.locate(ids[0]).kind == Kind.TREE


def test_data_packs_are_never_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Trees and data share no pack, but a pack with any data blob is not read whole."""
    monkeypatch.setenv("CASBACKUP_CACHE_DIR", str(tmp_path / "c"))
    backend = RemoteMemory()
    with make_repo(backend) as repo:
        cache = repo._tree_cache
        assert cache is not None
        repo.save_blob(Kind.DATA, b"some file content")
        repo.flush()
        [name] = [n for n, _ in backend.list("data/")]
        assert cache.fill_from_pack(backend, name.rsplit("/", 1)[1]) == 0
        assert cache.fill_from_pack(backend, name.rsplit("/", 1)[1]) == 0  # asked once
        assert [r[2] for r in backend.pack_reads] == [None]


def test_check_reads_the_repositorys_trees_not_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tree pack damaged in the store is found by check even when every tree is cached."""
    from casbackup.verify.check import CheckOptions, check

    monkeypatch.setenv("CASBACKUP_CACHE_DIR", str(tmp_path / "c"))
    backend = RemoteMemory()
    with make_repo(backend) as repo:
        ids = folder_trees(repo, 3)
        from casbackup.repo.snapshot import Snapshot

        repo.save_snapshot(Snapshot(time="2026-01-01T00:00:00Z", start_ns=0, host="h", user="u",
                                    paths=("/x",), tree=ids[0].hex()))  # fmt: skip
    repo = open_repo(backend)
    assert repo.load_tree(ids[0])  # cached now
    assert check(repo, CheckOptions()).ok
    [name] = [n for n, _ in backend.list("data/")]
    data = bytearray(backend.get(name))
    data[40] ^= 1  # inside the first blob's envelope
    backend.put(name, bytes(data))
    assert repo.load_tree(ids[0])  # the cache still answers the backup's reads
    assert not check(open_repo(backend), CheckOptions()).ok


def test_a_trees_folder_that_is_a_link_is_not_used(tmp_path: Path) -> None:
    """A ``trees`` folder that is a link (another user made the repository's folder first
    in a shared cache) is not used: eviction deleted the least recently used files of the
    folder it named, the user's, until the total was under 3/4 of the bound."""
    victim = tmp_path / "victim"
    (victim / "letters").mkdir(parents=True)
    for n in range(4):
        (victim / "letters" / f"{n}.txt").write_bytes(b"x" * 4096)
        os.utime(victim / "letters" / f"{n}.txt", (1_000_000, 1_000_000))
    repo_folder = Path(os.environ["CASBACKUP_CACHE_DIR"]) / "someid"
    repo_folder.mkdir(parents=True)
    os.symlink(victim, repo_folder / "trees")
    cache = cache_at(repo_folder / "trees", cap=8192)
    trees = [os.urandom(2048) for _ in range(4)]
    for tree in trees:
        cache.put(hash_id(tree), tree)
    assert sorted(os.listdir(victim / "letters")) == [f"{n}.txt" for n in range(4)]
    assert os.listdir(victim) == ["letters"]
    assert [cache.get(hash_id(tree)) for tree in trees] == [None] * 4


def test_a_close_that_fails_is_a_cache_error_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close that fails after the write (NFS tells a delayed write error there) leaves no
    entry and raises nothing: it raised out of ``put``, failing the backup that saved the
    tree."""
    cache = cache_at(tmp_path / "trees")
    tree = b"a tree" * 50
    real_close = os.close
    failed: list[int] = []

    def close(fd: int) -> None:
        if not failed and str(tmp_path / "trees") in os.readlink(f"/proc/self/fd/{fd}"):
            failed.append(fd)
            real_close(fd)
            raise OSError(5, "Input/output error")
        real_close(fd)

    monkeypatch.setattr(os, "close", close)
    cache.put(hash_id(tree), tree)
    monkeypatch.setattr(os, "close", real_close)
    assert failed and not entry_path(cache, hash_id(tree)).exists()
    cache.put(hash_id(tree), tree)
    assert cache.get(hash_id(tree)) == tree
