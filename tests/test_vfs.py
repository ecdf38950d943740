"""The snapshot file system core, without FUSE: layout, metadata, ranged reads, damage."""

from __future__ import annotations

import os
import random
import stat
import threading
import time
from pathlib import Path

import pytest

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.errors import IntegrityError, NotFound
from casbackup.repo.ids import Kind
from casbackup.repo.pack import pack_name
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.tree import NodeKind
from casbackup.vfs import Vfs, snapshot_folder

MTIME_NS = 1_600_000_000_123_456_789


def make_source(root: Path, seed: int = 1) -> dict[str, bytes]:
    """A small tree with the awkward cases; returns relative path -> content of each file."""
    rng = random.Random(seed)
    files = {
        "big.bin": rng.randbytes(700_000),  # many 4-64 KiB chunks
        "etc/app.conf": b"listen = 8080\n",
        "etc/empty": b"",
        "deep/a/b/c/leaf.txt": b"leaf\n" * 1000,
        "secret.key": b"k" * 33,
        "caf\u00e9 \u2603.txt": b"unicode name\n",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.chmod(root / "secret.key", 0o600)
    os.link(root / "etc/app.conf", root / "etc/app.conf.hard")
    files["etc/app.conf.hard"] = files["etc/app.conf"]
    os.symlink("app.conf", root / "etc/link")
    os.symlink("/nowhere/at/all", root / "dangling")
    os.mkfifo(root / "pipe")
    for rel in files:
        os.utime(root / rel, ns=(MTIME_NS, MTIME_NS))
    return files


def backup(repo: Repository, src: Path, app: str | None) -> Snapshot:
    result = run_backup(repo, BackupOptions(paths=(str(src),), app=app, type="full"))
    assert result.snapshot is not None
    return result.snapshot


@pytest.fixture
def populated(repo: Repository, tmp_path: Path) -> tuple[Repository, Path, dict[str, bytes]]:
    src = tmp_path / "src"
    src.mkdir()
    files = make_source(src)
    backup(repo, src, "web")
    (src / "etc/new").write_bytes(b"listen = 9090\n")
    os.replace(src / "etc/new", src / "etc/app.conf")  # a new inode: the hard link is broken
    backup(repo, src, "web")
    backup(repo, src, None)
    return repo, src, files


def count_data_loads(repo: Repository) -> list[bytes]:
    """The ids of the data blobs ``repo`` loads from now on, in order (load_blob wrapped)."""
    loads: list[bytes] = []
    real = repo.load_blob

    def counting(blob_id, kind=None):  # type: ignore[no-untyped-def]
        if kind == Kind.DATA:
            loads.append(blob_id)
        return real(blob_id, kind)

    repo.load_blob = counting  # type: ignore[method-assign]
    return loads


def in_snapshot(src: Path, rel: str = "") -> str:
    return str(src).rstrip("/") + ("/" + rel if rel else "")


def test_layout_groups_snapshots_by_application(populated) -> None:  # type: ignore[no-untyped-def]
    repo, src, _ = populated
    vfs = Vfs(repo)
    snaps = repo.list_snapshots()
    host = snaps[-1].host
    assert [e.name for e in vfs.listdir("/")] == sorted(["web", host])
    web = vfs.listdir("/web")
    names = [e.name for e in web]
    assert names == ["latest", snapshot_folder(snaps[0]), snapshot_folder(snaps[1])]
    assert vfs.readlink("/web/latest") == snapshot_folder(snaps[1])
    assert vfs.lookup("/web/latest").kind == NodeKind.SYMLINK
    # "latest" also resolves as a path component
    assert vfs.read(f"/web/latest{in_snapshot(src, 'etc/app.conf')}", 0, 100) == b"listen = 9090\n"
    assert vfs.getattr("/").ino == 1
    assert stat.S_ISDIR(vfs.getattr(f"/{host}/{snapshot_folder(snaps[2])}").mode)


def test_metadata_matches_the_source(populated) -> None:  # type: ignore[no-untyped-def]
    repo, src, files = populated
    vfs = Vfs(repo)
    base = "/web/latest"  # the source has not changed since
    for rel in [*files, "etc/link", "dangling", "pipe", "etc", "deep/a"]:
        st = vfs.getattr(base + in_snapshot(src, rel))
        real = os.lstat(src / rel)
        assert st.mode == real.st_mode, rel
        assert (st.uid, st.gid) == (real.st_uid, real.st_gid)
        assert st.mtime_ns == real.st_mtime_ns, rel
        if not stat.S_ISDIR(real.st_mode):
            assert (st.size, st.nlink) == (real.st_size, real.st_nlink), rel
    assert vfs.readlink(base + in_snapshot(src, "dangling")) == "/nowhere/at/all"
    assert sorted(e.name for e in vfs.listdir(base + in_snapshot(src, "etc"))) == sorted(
        ["app.conf", "app.conf.hard", "empty", "link"]
    )


def test_hard_links_share_an_inode_and_count(populated) -> None:  # type: ignore[no-untyped-def]
    repo, src, _ = populated
    vfs = Vfs(repo)
    first, second = (f"/web/{snapshot_folder(s)}" for s in repo.list_snapshots()[:2])
    a = vfs.getattr(first + in_snapshot(src, "etc/app.conf"))
    b = vfs.getattr(first + in_snapshot(src, "etc/app.conf.hard"))
    assert a.ino == b.ino and a.nlink == b.nlink == 2
    c = vfs.getattr(second + in_snapshot(src, "etc/app.conf"))
    d = vfs.getattr(second + in_snapshot(src, "etc/app.conf.hard"))
    assert c.ino != a.ino and c.ino != d.ino and c.nlink == d.nlink == 1
    # Stable: a fresh Vfs gives the same numbers; different nodes get different ones.
    again = Vfs(repo)
    assert again.getattr(first + in_snapshot(src, "etc/app.conf")).ino == a.ino
    inos = [e.ino for e in vfs.listdir(first + in_snapshot(src))]
    assert len(set(inos)) == len(inos)


def test_random_reads_return_the_right_bytes(populated) -> None:  # type: ignore[no-untyped-def]
    repo, src, files = populated
    vfs = Vfs(repo, chunk_cache_bytes=256 * 1024)  # smaller than the file: evictions happen
    base = f"/web/{snapshot_folder(repo.list_snapshots()[0])}"
    data = files["big.bin"]
    handle = vfs.open(base + in_snapshot(src, "big.bin"))
    rng = random.Random(7)
    for _ in range(300):
        offset = rng.randrange(0, len(data) + 10)
        length = rng.choice([1, 100, 4096, 65536, 131072, 300_000])
        assert handle.read(offset, length) == data[offset : offset + length]
    assert handle.read(len(data), 10) == b""
    assert vfs.read(base + in_snapshot(src, "etc/empty"), 0, 10) == b""
    assert vfs._chunks.weight <= 256 * 1024
    for rel, content in files.items():
        assert vfs.read(base + in_snapshot(src, rel), 0, len(content) + 1) == content or (
            rel.startswith("etc/app.conf")
        )


def test_reads_decrypt_only_the_chunks_they_cover(populated) -> None:  # type: ignore[no-untyped-def]
    repo, src, files = populated
    vfs = Vfs(repo)
    path = f"/web/{snapshot_folder(repo.list_snapshots()[0])}" + in_snapshot(src, "big.bin")
    loads = count_data_loads(repo)
    node = vfs.lookup(path).node
    assert len(node.content) > 5
    assert vfs.read(path, 350_000, 10) == files["big.bin"][350_000:350_010]
    assert len(loads) == 1  # one chunk; the offsets came from the index alone
    vfs.read(path, 350_000, 10)
    assert len(loads) == 1  # and it is cached


def test_concurrent_reads(populated) -> None:  # type: ignore[no-untyped-def]
    repo, src, files = populated
    vfs = Vfs(repo, chunk_cache_bytes=128 * 1024)
    path = f"/web/{snapshot_folder(repo.list_snapshots()[0])}" + in_snapshot(src, "big.bin")
    data = files["big.bin"]
    errors: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            off = rng.randrange(len(data))
            if vfs.read(path, off, 50_000) != data[off : off + 50_000]:
                errors.append(f"mismatch at {off}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_missing_paths_raise_not_found(populated) -> None:  # type: ignore[no-untyped-def]
    repo, src, _ = populated
    vfs = Vfs(repo)
    base = f"/web/{snapshot_folder(repo.list_snapshots()[0])}"
    for path in ["/nope", "/web/nope", base + "/nope", base + in_snapshot(src, "big.bin/x")]:
        with pytest.raises(NotFound):
            vfs.lookup(path)


def test_app_filter_and_refresh(populated, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, src, _ = populated
    vfs = Vfs(repo, app="web", refresh_seconds=0)
    assert [e.name for e in vfs.listdir("/")] == ["web"]
    assert len(vfs.listdir("/web")) == 3
    newest = backup(repo, src, "web")
    assert vfs.readlink("/web/latest") == snapshot_folder(newest)
    repo.delete_snapshot(newest.id)
    assert len(vfs.listdir("/web")) == 3


def test_damaged_chunk_fails_that_read_only(populated) -> None:  # type: ignore[no-untyped-def]
    repo, src, files = populated
    vfs = Vfs(repo)
    base = f"/web/{snapshot_folder(repo.list_snapshots()[0])}"
    path = base + in_snapshot(src, "big.bin")
    node = vfs.lookup(path).node
    loc = repo.locate(node.content[3])
    offsets = vfs._chunk_offsets(vfs.lookup(path))
    flip_byte(Path(repo.backend.location), pack_name(loc.pack), loc.offset + loc.stored_len // 2)
    with pytest.raises(IntegrityError, match="big.bin"):
        vfs.read(path, offsets[3] + 5, 10)
    assert vfs.read(path, 0, 100) == files["big.bin"][:100]  # chunk 0 is still fine
    assert vfs.read(base + in_snapshot(src, "deep/a/b/c/leaf.txt"), 0, 5) == b"leaf\n"


def flip_byte(repo_root: Path, name: str, offset: int) -> None:
    path = repo_root / name
    os.chmod(path, 0o644)  # packs are stored read-only
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def test_a_sparse_file_counts_only_its_data_as_allocated(repo: Repository, tmp_path: Path) -> None:
    # st_blocks said every byte was allocated, so 'cp -a' (and du) out of the mount took a
    # sparse VM image as dense and wrote all its zeros: a 4 KiB file came out as 101 MB.
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "vm.img", "wb") as f:
        f.write(b"head" * 1000)
        f.truncate(4 << 20)  # a hole of almost 4 MiB
        f.seek(4 << 20)
        f.write(b"tail" * 1000)
    (src / "dense").write_bytes(random.Random(5).randbytes(300_000))
    backup(repo, src, "vm")
    vfs = Vfs(repo)
    sparse = vfs.getattr(f"/vm/latest{in_snapshot(src, 'vm.img')}")
    assert sparse.size == (4 << 20) + 4000
    assert sparse.blocks * 512 < 512 * 1024  # the chunks of zeros take no room
    dense = vfs.getattr(f"/vm/latest{in_snapshot(src, 'dense')}")
    assert dense.blocks == (300_000 + 511) // 512
    assert (
        vfs.read(f"/vm/latest{in_snapshot(src, 'vm.img')}", 0, 5 << 20)
        == (src / "vm.img").read_bytes()
    )


def test_one_inode_recorded_with_two_contents_is_two_inodes(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hard-linked file rewritten while the backup walked from one of its names to the
    other holds two contents in the snapshot: one inode number for both would have the
    kernel serve one name's bytes (its page cache) for the other."""
    from casbackup.archiver import backup as backup_module
    from casbackup.archiver.walk import Walker
    from tests.archiver.conftest import Clock

    monkeypatch.setattr(backup_module, "now_utc", Clock().now_utc)  # files written now not racy
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "z").mkdir()
    (src / "a" / "first").write_bytes(b"version 1\n")
    os.link(src / "a" / "first", src / "z" / "second")
    backup(repo, src, "web")
    monkeypatch.setattr(Walker, "_start_compares", lambda self, *a: None)
    kept = Walker._kept_file

    def rewritten_after(self, path, name, st, old):  # type: ignore[no-untyped-def]
        node = kept(self, path, name, st, old)
        if name == b"first":
            with open(path, "r+b") as f:
                f.write(b"version 2\n")
        return node

    monkeypatch.setattr(Walker, "_kept_file", rewritten_after)
    snap = run_backup(repo, BackupOptions(paths=(str(src),), app="web")).snapshot
    assert snap is not None
    vfs = Vfs(repo)
    where = f"/web/{snapshot_folder(snap)}"
    first = vfs.getattr(where + in_snapshot(src, "a/first"))
    second = vfs.getattr(where + in_snapshot(src, "z/second"))
    assert first.ino != second.ino
    assert vfs.read(where + in_snapshot(src, "z/second"), 0, 100) == b"version 2\n"


def test_an_object_store_read_loads_the_next_chunks_ahead(populated) -> None:  # type: ignore[no-untyped-def]
    """On an object store each chunk is a round trip: a sequential read (cat, cp, a
    download) waited for each in turn. The chunks after a read are now loaded ahead."""
    repo, src, files = populated
    repo.backend.remote = True  # as an object store's backend says
    try:
        vfs = Vfs(repo)
    finally:
        del repo.backend.remote
    path = f"/web/{snapshot_folder(repo.list_snapshots()[0])}" + in_snapshot(src, "big.bin")
    node = vfs.lookup(path).node
    loads = count_data_loads(repo)
    assert vfs.read(path, 0, 100) == files["big.bin"][:100]
    assert vfs._read_ahead(node.content, 0) == []  # asked once each, not again
    deadline = time.monotonic() + 60
    while vfs._queued and time.monotonic() < deadline:  # the loads ahead finish
        time.sleep(0.01)
    vfs.close()
    assert set(loads) == set(node.content[:5])  # the chunk read and the 4 after it
    before = len(loads)
    size = sum(len(repo.load_blob(c, Kind.DATA)) for c in node.content[:5])
    del loads[before:]  # (those loads were this test's own)
    assert vfs.read(path, 100, size - 100) == files["big.bin"][100:size]
    assert len(loads) == before  # served from the cache; closed: nothing more ahead


def test_closing_never_waits_for_a_load_ahead_the_store_left_hanging(populated) -> None:  # type: ignore[no-untyped-def]
    """An unmount (or the service's handle closing) waited for every get in flight: a store
    that stopped answering held it for its timeout times the retries (helper-69's finding
    for the other readers; the VFS's threads are readpool.ReaderPool's now)."""
    repo, src, files = populated
    repo.backend.remote = True
    try:
        vfs = Vfs(repo)
    finally:
        del repo.backend.remote
    path = f"/web/{snapshot_folder(repo.list_snapshots()[0])}" + in_snapshot(src, "big.bin")
    node = vfs.lookup(path).node
    release = threading.Event()
    real = repo.load_blob

    def hanging(blob_id, kind=None):  # type: ignore[no-untyped-def]
        if blob_id != node.content[0]:
            release.wait(120)  # the store stopped answering
        return real(blob_id, kind)

    repo.load_blob = hanging  # type: ignore[method-assign]
    try:
        assert vfs.read(path, 0, 100) == files["big.bin"][:100]  # and 4 loads ahead hang
        closer = threading.Thread(target=vfs.close)
        closer.start()
        closer.join(60)
        assert not closer.is_alive()  # returned with the loads still hanging
    finally:
        release.set()
