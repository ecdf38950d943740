"""The local tree-blob cache (repo/treecache.py): untrusted, bounded, and what it saves on S3."""

from __future__ import annotations

import json
import os
from pathlib import Path

import blake3
import pytest

from casbackup.crypto.envelope import Opener, Sealer
from casbackup.repo.treecache import TreeCache, cap_bytes
from casbackup.testing.fixtures import run_cli
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
            return proxy.count - before, len(gets)

        requests, pack_reads = backup("cache-a")
        assert pack_reads == 0 and requests <= 30, (requests, proxy.seen[-requests:])
        cold, cold_reads = backup("cache-b")  # a new client: reads the trees once
        assert cold_reads >= 6, cold_reads
        warm, warm_reads = backup("cache-b")
        assert warm_reads == 0 and warm <= 30
    finally:
        proxy.close()
