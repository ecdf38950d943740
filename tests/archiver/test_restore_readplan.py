"""Restore reads per pack (archiver/readplan.py): merged ranged gets, each blob decrypted
once per window, errors kept to the files that need the damaged blob, bounded windows,
and blobs not stored whole (index kind other than DATA) kept off the ranged path."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from casbackup.archiver import readplan
from casbackup.archiver.readplan import BlobReader, ChunkFeed, ReadRange, plan_ranges
from casbackup.archiver.restore import RestoreOptions, restore
from casbackup.archiver.writers import FileJob
from casbackup.crypto.envelope import Opener
from casbackup.repo.ids import Kind
from casbackup.repo.index import Location
from casbackup.repo.repository import Repository
from casbackup.store.memory import MemoryBackend
from casbackup.testing.fixtures import make_repo

from .trees import file_node, snapshot_of


class CountingBackend(MemoryBackend):
    """A memory backend that records every ranged get of a pack: (name, offset, length)."""

    def __init__(self) -> None:
        super().__init__()
        self.gets: list[tuple[str, int, int]] = []
        self._count_lock = threading.Lock()

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if name.startswith("data/") and length is not None:
            with self._count_lock:
                self.gets.append((name, offset, length))
        return super().get(name, offset, length)


@pytest.fixture
def counted() -> tuple[Repository, CountingBackend]:
    backend = CountingBackend()
    return make_repo(backend), backend


def chunk(pack: str, offset: int, length: int, blob: bytes = b"") -> readplan.Chunk:
    return (blob or b"%s-%d" % (pack.encode(), offset), pack, offset, length, length)


# ------------------------------------------------------------------ planning
def test_ranges_merge_small_gaps_per_pack_and_keep_each_blob_once() -> None:
    chunks = [chunk("b", 0, 10), chunk("a", 100, 10), chunk("a", 0, 10), chunk("a", 15, 10),
              chunk("a", 0, 10), chunk("a", 60, 10)]  # fmt: skip
    ranges = plan_ranges(chunks, gap=5)
    assert [(r.pack, r.start, r.end, len(r.blobs)) for r in ranges] == [
        ("b", 0, 10, 1),
        ("a", 0, 25, 2),  # the 5-byte hole is read through; the duplicate blob once
        ("a", 60, 70, 1),  # a 35-byte hole is not
        ("a", 100, 110, 1),
    ]
    assert [r.start for r in plan_ranges(chunks, gap=50) if r.pack == "a"] == [0]


def test_a_range_never_grows_past_its_cap_but_a_big_blob_gets_its_own() -> None:
    chunks = [chunk("a", i * 10, 10) for i in range(10)] + [chunk("a", 100, 500)]
    ranges = plan_ranges(chunks, gap=0, max_range=30)
    assert [(r.start, r.end) for r in ranges] == [(0, 30), (30, 60), (60, 90), (90, 100),
                                                  (100, 600)]  # fmt: skip
    assert all(r.end - r.start <= 30 for r in ranges[:-1])


def test_overlapping_blobs_from_a_hostile_index_stay_in_one_range() -> None:
    (rng,) = plan_ranges([chunk("a", 0, 50), chunk("a", 10, 20)], gap=0)
    assert rng == ReadRange("a", 0, 50, rng.blobs) and len(rng.blobs) == 2


# ------------------------------------------------------------------ restore, end to end
def test_restore_reads_a_pack_in_merged_ranges(counted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, backend = counted
    files = {b"f%03d" % i: os.urandom(3000) + b"%d" % i for i in range(60)}
    nodes = [file_node(repo, name, data, chunk=1000) for name, data in files.items()]
    snap = snapshot_of(repo, nodes)
    chunks = sum(len(n.content) for n in nodes)
    backend.gets.clear()
    result = restore(repo, snap, RestoreOptions(target=str(tmp_path / "out")))
    assert not result.errors and result.files == 60
    for name, data in files.items():
        assert (tmp_path / "out" / name.decode()).read_bytes() == data
    packs = {name for name, _, _ in backend.gets}
    assert len(backend.gets) <= 2 * len(packs) < chunks / 10  # not one get per chunk


def test_a_chunk_used_many_times_is_read_and_decrypted_once(counted, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    repo, backend = counted
    piece = os.urandom(4096)
    nodes = [
        file_node(repo, b"a", piece * 20, chunk=4096),
        file_node(repo, b"b", piece * 3, chunk=4096),
    ]
    snap = snapshot_of(repo, nodes)
    opened: list[bytes] = []
    real_open = Opener.open

    def counting_open(self, kind, object_id, envelope):  # type: ignore[no-untyped-def]
        if kind == Kind.DATA:
            opened.append(object_id)
        return real_open(self, kind, object_id, envelope)

    monkeypatch.setattr(Opener, "open", counting_open)
    backend.gets.clear()
    result = restore(repo, snap, RestoreOptions(target=str(tmp_path / "out"), workers=1))
    assert not result.errors
    assert (tmp_path / "out" / "a").read_bytes() == piece * 20
    assert (tmp_path / "out" / "b").read_bytes() == piece * 3
    pack = repo.locate(nodes[0].content[0]).pack
    assert len(opened) == 1 and len([g for g in backend.gets if pack in g[0]]) == 1


def test_a_damaged_blob_fails_only_the_files_that_need_it(counted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo, backend = counted
    good = file_node(repo, b"good", b"g" * 5000 + os.urandom(100))
    bad = file_node(repo, b"bad", b"b" * 5000 + os.urandom(100))
    also = file_node(repo, b"also", os.urandom(300))
    snap = snapshot_of(repo, [good, bad, also])
    loc = repo.locate(bad.content[0])
    name = f"data/{loc.pack[:2]}/{loc.pack}"
    raw = bytearray(backend.objects[name])
    raw[loc.offset + loc.stored_len // 2] ^= 0xFF
    backend.objects[name] = bytes(raw)
    result = restore(repo, snap, RestoreOptions(target=str(tmp_path / "out")))
    (error,) = result.errors
    assert error.startswith("bad: blob ") and "damaged" in error
    assert sorted(os.listdir(tmp_path / "out")) == ["also", "good"]


def test_a_truncated_pack_fails_only_the_blobs_past_its_end(counted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The merged range fails as a whole; each of its blobs is then read alone."""
    repo, backend = counted
    first = file_node(repo, b"first", os.urandom(3000))
    last = file_node(repo, b"last", os.urandom(3000))
    snap = snapshot_of(repo, [first, last])
    loc = repo.locate(last.content[0])
    assert repo.locate(first.content[0]).pack == loc.pack
    name = f"data/{loc.pack[:2]}/{loc.pack}"
    backend.objects[name] = backend.objects[name][: loc.offset + 10]
    result = restore(repo, snap, RestoreOptions(target=str(tmp_path / "out")))
    (error,) = result.errors
    assert error.startswith("last: ") and "truncated" in error
    assert os.listdir(tmp_path / "out") == ["first"]


def test_an_unsupported_blob_kind_fails_its_file_cleanly(counted, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    """A chunk whose index kind is not DATA (a delta blob) takes the chain path; without a
    resolver (casbackup.repo.delta) its file fails with one line, the others restore."""
    repo, _backend = counted
    odd = file_node(repo, b"odd", os.urandom(200))
    fine = file_node(repo, b"fine", os.urandom(200))
    snap = snapshot_of(repo, [odd, fine])
    real = repo.locate_many

    def relabel(ids):  # type: ignore[no-untyped-def]
        locs = real(ids)
        return [Location(loc.pack, loc.offset, loc.stored_len, loc.raw_len, Kind.TREE).encode()
                if blob == odd.content[0] else loc.encode() for blob, loc in zip(list(ids), locs, strict=True)]  # fmt: skip

    monkeypatch.setattr(repo, "locate_values", relabel)  # the restore's look-up of chunks
    monkeypatch.setattr(readplan, "_chain_resolver", lambda: None)
    result = restore(repo, snap, RestoreOptions(target=str(tmp_path / "out")))
    (error,) = result.errors
    assert error.startswith("odd: blob ") and error.endswith("has an unsupported blob kind")
    assert os.listdir(tmp_path / "out") == ["fine"]


def test_a_chain_resolver_rebuilds_blobs_not_stored_whole(counted, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]  # fmt: skip
    """The hook wt-delta fills in: resolve_chain(fetch_envelope, opener, chain) -> bytes."""
    repo, _backend = counted
    data = os.urandom(500)
    node = file_node(repo, b"d", data)
    snap = snapshot_of(repo, [node])
    real = repo.locate_many
    monkeypatch.setattr(repo, "locate_values", lambda ids: [
        Location(x.pack, x.offset, x.stored_len, x.raw_len, Kind.TREE).encode() for x in real(ids)])  # fmt: skip
    seen: list[tuple[readplan.Chunk, ...]] = []

    def resolve(fetch, opener, chain):  # type: ignore[no-untyped-def]
        seen.append(chain)
        blob_id, pack, offset, stored, _raw = chain[0]
        return readplan.open_blob(
            opener, Kind.DATA, blob_id, pack, fetch(pack, offset, stored), _raw
        )

    monkeypatch.setattr(readplan, "_chain_resolver", lambda: resolve)
    result = restore(repo, snap, RestoreOptions(target=str(tmp_path / "out")))
    assert not result.errors and (tmp_path / "out" / "d").read_bytes() == data
    assert len(seen) == 1 and seen[0][0][0] == node.content[0]


# ------------------------------------------------------------------ the feed itself
def test_the_feed_holds_at_most_two_windows_and_skips_abandoned_files(counted) -> None:  # type: ignore[no-untyped-def]
    repo, backend = counted
    pieces = [os.urandom(1000) for _ in range(40)]
    node_a = file_node(repo, b"a", b"".join(pieces[:20]), chunk=1000)
    node_b = file_node(repo, b"b", b"".join(pieces[20:]), chunk=1000)
    snapshot_of(repo, [node_a, node_b])

    def job(node):  # type: ignore[no-untyped-def]
        locs = repo.locate_many(node.content)
        chunks = tuple((c, x.pack, x.offset, x.stored_len, x.raw_len)
                       for c, x in zip(node.content, locs, strict=True))  # fmt: skip
        return FileJob(chunks, node.size, b"", 0, 0, 0o644, 0, False)

    with ThreadPoolExecutor(2) as pool:
        reader = BlobReader(backend, repo.key.encryption_root, gap=0, pool=pool,
                            window_bytes=3000, max_range=2000)  # fmt: skip
        feed = ChunkFeed(reader, [job(node_a), job(node_b)])
        first = feed.file(0)
        assert [next(first) for _ in range(3)] == pieces[:3]
        assert len(feed._windows) <= 2
        del first  # file a abandoned after three chunks (an error, say)
        backend.gets.clear()
        assert list(feed.file(1)) == pieces[20:]
        assert len(feed._windows) <= 2
        feed.close()
    # nothing of file a was read for file b, and no get was over the range cap
    assert all(length <= 2000 for _, _, length in backend.gets)
    assert len(backend.gets) <= 20 + 2


def test_a_window_is_capped_in_plaintext_too(counted) -> None:  # type: ignore[no-untyped-def]
    """Blobs that compress a thousandfold, each needed twice: the window closes on their
    plaintext size, not only on the stored bytes, so the kept plaintexts stay bounded."""
    repo, backend = counted
    blobs = [bytes([i]) * 50_000 for i in range(40)]
    node = file_node(repo, b"z", b"".join(b + b for b in blobs), chunk=50_000)
    snapshot_of(repo, [node])
    locs = repo.locate_many(node.content)
    chunks = tuple((c, x.pack, x.offset, x.stored_len, x.raw_len)
                   for c, x in zip(node.content, locs, strict=True))  # fmt: skip
    assert sum(x.stored_len for x in locs) < 20_000  # the stored cap alone would take all
    reader = BlobReader(backend, repo.key.encryption_root, window_bytes=100_000)
    feed = ChunkFeed(reader, [FileJob(chunks, node.size, b"", 0, 0, 0o644, 0, False)])
    out = []
    for data in feed.file(0):
        out.append(data)
        window = feed._windows[0]
        assert window.end - window.start <= 8  # 4 distinct blobs (200,000 bytes), twice each
    assert b"".join(out) == b"".join(b + b for b in blobs)


def test_chains_are_resolved_ahead_on_the_pool_within_the_window_cap(  # type: ignore[no-untyped-def]
    counted, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blobs stored as deltas: each chain is resolved on the read-ahead pool, several at once
    and before the writer asks, its plaintext counted against the window's cap; a chain that
    fails to resolve fails its own chunk when the writer gets there."""
    repo, backend = counted
    pieces = [os.urandom(1000) for _ in range(30)]
    node = file_node(repo, b"c", b"".join(pieces), chunk=1000)
    snapshot_of(repo, [node])
    locs = repo.locate_many(node.content)
    chunks = tuple((c, x.pack, x.offset, x.stored_len, x.raw_len)
                   for c, x in zip(node.content, locs, strict=True))  # fmt: skip
    threads: list[str] = []
    broken = chunks[17][0]

    def resolve(fetch, opener, chain):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        blob_id, pack, offset, stored, raw = chain[0]
        if blob_id == broken:
            raise readplan.IntegrityError("a base of this delta is damaged")
        return readplan.open_blob(
            opener, Kind.DATA, blob_id, pack, fetch(pack, offset, stored), raw
        )

    monkeypatch.setattr(readplan, "_chain_resolver", lambda: resolve)
    chains = tuple((i, (c,)) for i, c in enumerate(chunks))
    job = FileJob(chunks, node.size, b"", 0, 0, 0o644, 0, False, chains=chains)
    with ThreadPoolExecutor(2, thread_name_prefix="ahead") as pool:
        reader = BlobReader(backend, repo.key.encryption_root, gap=0, pool=pool, window_bytes=3000)
        feed = ChunkFeed(reader, [job])
        got = []
        with pytest.raises(readplan.IntegrityError, match="damaged"):
            for data in feed.file(0):
                got.append(data)
                assert all(w.end - w.start <= 6 for w in feed._windows)  # 2 x 3000 bytes
        feed.close()
    assert got == pieces[:17]
    # The pool resolves ahead; a chain it has not started yet the writer resolves itself.
    assert any(name.startswith("ahead") for name in threads)
    assert len(threads) >= 18  # every chain up to the broken one, and perhaps some after it
