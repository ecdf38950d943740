"""The Bloom filter in front of a large index cache (repo/bloom.py)."""

from __future__ import annotations

import os

import pytest

from casbackup.repo import indexcache as index_module
from casbackup.repo.bloom import BlobFilter
from casbackup.repo.ids import BlobId, FileId, Kind
from casbackup.repo.index import Location
from casbackup.repo.indexcache import FILTER_FILE, IndexCache


def _entries(n: int, pack: str = "ab" * 32) -> list[tuple[BlobId, Location]]:
    return [(BlobId(os.urandom(32)), Location(pack, i, 10, 20, Kind.DATA)) for i in range(n)]


def test_filter_never_forgets_an_id_and_rarely_says_maybe(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bloom = BlobFilter.create(str(tmp_path / "f"), 20_000)
    ids = [os.urandom(32) for _ in range(20_000)]
    bloom.add(ids)
    assert all(bloom.might_contain(i) for i in ids)
    false = sum(bloom.might_contain(os.urandom(32)) for _ in range(20_000))
    assert false < 20_000 * 0.02  # about 1% at 10 bits per id
    bloom.close()


def test_filter_file_is_refused_when_damaged(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "f"
    BlobFilter.create(str(path), 10).close()
    data = bytearray(path.read_bytes())
    data[0:4] = b"XXXX"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        BlobFilter(str(path), writable=False)
    path.write_bytes(b"CBBF")  # truncated
    with pytest.raises(ValueError):
        BlobFilter(str(path), writable=False)


@pytest.fixture
def small_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(index_module, "FILTER_FROM", 100)


def test_cache_answers_through_the_filter_once_large(tmp_path, small_threshold) -> None:  # type: ignore[no-untyped-def]
    cache = IndexCache(str(tmp_path / "c"))
    first = _entries(50)
    cache.add_file(FileId("11" * 32), first)
    assert cache._filter is None  # below the threshold: LMDB alone
    more = _entries(200)
    cache.add_file(FileId("22" * 32), more)
    assert cache._filter is not None and cache._filter.covered == 250
    for blob_id, loc in first + more:
        assert cache.contains(blob_id) and cache.get(blob_id) == loc
    assert cache.contains_all([b for b, _ in first + more])
    absent = BlobId(os.urandom(32))
    assert not cache.contains(absent) and cache.get(absent) is None
    assert cache.get_many([first[0][0], absent]) == [first[0][1], None]
    cache.close()
    reader = IndexCache(str(tmp_path / "c"), readonly=True)  # a reader process's view
    assert reader._filter is not None and all(reader.contains(b) for b, _ in first)
    reader.close()


def test_a_reader_sees_ids_added_after_it_opened_the_filter(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Readers map the same file (MAP_SHARED): what the backup adds, they see at once."""
    path = str(tmp_path / "f")
    writer = BlobFilter.create(path, 1000)
    reader = BlobFilter(path, writable=False)
    ids = [os.urandom(32) for _ in range(50)]
    writer.add(ids)
    assert all(reader.might_contain(i) for i in ids)
    writer.set_covered(50)
    assert reader.covered == 50
    reader.close()
    writer.close()


def test_stale_or_missing_filter_is_rebuilt_and_a_reader_goes_without(  # type: ignore[no-untyped-def]
    tmp_path, small_threshold
) -> None:
    path = str(tmp_path / "c")
    cache = IndexCache(path)
    entries = _entries(300)
    cache.add_file(FileId("11" * 32), entries)
    cache.close()
    # Entries added behind the filter's back (an older program, a crash): counts differ.
    import lmdb

    env = lmdb.open(path, max_dbs=4, subdir=True)
    extra = _entries(3)
    with env.begin(write=True, db=env.open_db(b"blobs")) as txn:
        for blob_id, loc in extra:
            txn.put(blob_id, loc.encode())
    env.close()
    reader = IndexCache(path, readonly=True)
    assert reader._filter is None  # not covering every entry: not used
    assert all(reader.contains(b) for b, _ in extra)
    reader.close()
    writer = IndexCache(path)
    assert writer._filter is not None and writer._filter.covered == 303
    assert all(writer.contains(b) for b, _ in entries + extra)
    writer.close()
    os.remove(os.path.join(path, FILTER_FILE))
    writer = IndexCache(path)
    assert writer._filter is not None and all(writer.contains(b) for b, _ in extra)
    writer.clear()
    assert writer._filter is None and not writer.contains(extra[0][0])
    writer.close()


def test_filter_grows_with_the_index(tmp_path, small_threshold, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from casbackup.repo import bloom

    monkeypatch.setattr(bloom, "MIN_LOG2", 10)  # 1 Kibit: room for about 100 ids
    cache = IndexCache(str(tmp_path / "c"))
    everything = []
    for i in range(6):
        batch = _entries(150)
        everything += batch
        cache.add_file(FileId(f"{i:02d}" * 32), batch)
        assert cache._filter is not None and cache._filter.capacity >= cache.count()
    assert all(cache.contains(b) for b, _ in everything)
    cache.close()


# Another process's view of the same index cache (py-lmdb opens one environment once per
# process): small thresholds so that a few hundred entries have a filter and outgrow it.
_OTHER = """
import os, sys
from casbackup.repo import bloom, indexcache
from casbackup.repo.ids import BlobId, FileId, Kind
from casbackup.repo.index import Location
from casbackup.repo.indexcache import IndexCache
indexcache.FILTER_FROM = int(sys.argv[2])
bloom.MIN_LOG2 = 10
cache = IndexCache(sys.argv[1])
ids = [os.urandom(32) for _ in range(int(sys.argv[3]))]
entries = [(BlobId(b), Location("cd" * 32, i, 10, 20, Kind.DATA)) for i, b in enumerate(ids)]
# Two index files: past the filter's capacity the first rebuilds it (a new file), so the
# second's bits exist only in the new file.
cache.add_file(FileId("33" * 32), entries[:-50])
cache.add_file(FileId("44" * 32), entries[-50:])
cache.sync()
cache.close()
sys.stdout.write("\\n".join(b.hex() for b in ids))
"""


def _other_process_adds(path: str, entries: int, filter_from: int = 100) -> list[bytes]:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _OTHER, path, str(filter_from), str(entries)],
        check=True, capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    return [bytes.fromhex(line) for line in out.split()]


@pytest.fixture
def tiny_filters(monkeypatch: pytest.MonkeyPatch) -> None:
    from casbackup.repo import bloom

    monkeypatch.setattr(index_module, "FILTER_FROM", 100)
    monkeypatch.setattr(bloom, "MIN_LOG2", 10)


@pytest.mark.parametrize("readonly", [True, False])
def test_long_lived_reader_sees_blobs_after_another_process_rebuilt_the_filter(
    tmp_path, tiny_filters, readonly: bool
) -> None:  # type: ignore[no-untyped-def]
    """The issue's case: the service keeps its cache open; a backup in another process grows
    the index past the filter's capacity and rebuilds the filter file. The reader's old map
    must not answer "missing" for the blobs added since."""
    path = str(tmp_path / "c")
    writer = IndexCache(path)
    first = _entries(150)
    writer.add_file(FileId("11" * 32), first)
    assert writer._filter is not None
    old_capacity = writer._filter.capacity
    writer.close()
    reader = IndexCache(path, readonly=readonly)
    assert reader._filter is not None
    added = _other_process_adds(path, old_capacity + 100)  # past the filter's coverage
    assert reader.contains(BlobId(added[-1]))  # added after the rebuild
    assert all(reader.get(b) is not None for b in added)
    assert reader.get_many([added[-1], first[0][0]]) == [
        Location("cd" * 32, len(added) - 1, 10, 20, Kind.DATA),
        first[0][1],
    ]
    assert reader.contains_all([b for b, _ in first] + added)
    assert reader._filter is not None and reader._filter.covered == reader.count()  # reloaded
    assert not reader.contains(BlobId(os.urandom(32)))
    reader.close()


def test_reader_asks_lmdb_when_another_writer_adds_without_the_filter(
    tmp_path, tiny_filters
) -> None:  # type: ignore[no-untyped-def]
    """Same file, but entries it does not cover (a writer that keeps no filter): the covered
    count no longer matches LMDB's, so a "no" from the filter is not trusted."""
    path = str(tmp_path / "c")
    writer = IndexCache(path)
    writer.add_file(FileId("11" * 32), _entries(150))
    writer.close()
    reader = IndexCache(path, readonly=True)
    assert reader._filter is not None
    added = _other_process_adds(path, 60, filter_from=10**9)  # this writer keeps no filter
    assert all(reader.contains(BlobId(b)) for b in added)
    assert all(reader.get(b) is not None for b in added)
    assert reader._filter is not None  # the same file, still used for what it covers
    assert reader._filter.is_current(os.path.join(path, FILTER_FILE))
    reader.close()


def _records(entries: list[tuple[BlobId, Location]]) -> bytes:
    from casbackup.repo.index import encode_record

    return b"".join(encode_record(b, loc) for b, loc in entries)


def test_rebuild_keeps_a_covering_filter_and_adds_only_new_ids(tmp_path, tiny_filters) -> None:  # type: ignore[no-untyped-def]
    """After prune the rebuilt index holds a subset of the ids the filter has: the filter
    file stays (no 7 bits per id set again), an id it lacked is added, and another
    process's map of it (a reader's) sees every id of the new index."""
    path = str(tmp_path / "c")
    cache = IndexCache(path)
    old = _entries(400)
    cache.add_file(FileId("11" * 32), old)
    assert cache._filter is not None
    identity = cache._filter.identity
    reader = BlobFilter(os.path.join(path, FILTER_FILE), writable=False)
    fresh = _entries(30, pack="cd" * 32)
    kept = old[:250]
    cache.rebuild(
        iter([(FileId("22" * 32), [("ab" * 32, _records(kept)), ("cd" * 32, _records(fresh))], {})])
    )
    assert cache._filter is not None and cache._filter.identity == identity  # the same file
    assert cache._filter.covered == cache.count() == 280
    assert all(cache.contains(b) for b, _ in kept + fresh)
    assert cache.get_many([b for b, _ in fresh]) == [loc for _, loc in fresh]
    assert not any(cache.contains(b) for b, _ in old[250:])
    assert all(reader.might_contain(b) for b, _ in kept + fresh) and reader.covered == 280
    reader.close()
    cache.close()
    again = IndexCache(path)  # the next open uses it as it is
    assert again._filter is not None and again._filter.identity == identity
    assert all(again.contains(b) for b, _ in fresh)
    again.close()


def test_rebuild_makes_a_new_filter_when_the_old_is_too_full_or_stale(  # type: ignore[no-untyped-def]
    tmp_path, tiny_filters, monkeypatch
) -> None:
    from casbackup.repo import bloom

    path = str(tmp_path / "c")
    cache = IndexCache(path)
    entries = _entries(300)
    cache.add_file(FileId("11" * 32), entries)
    first = cache._filter
    assert first is not None
    files = [(FileId("22" * 32), [("ab" * 32, _records(entries[:200]))], {})]
    monkeypatch.setattr(index_module, "FULL_FILL", 0.0)  # as if every bit were set
    cache.rebuild(iter(files))
    assert cache._filter is not None and cache._filter.identity != first.identity
    assert cache._filter.covered == cache.count() == 200
    monkeypatch.setattr(index_module, "FULL_FILL", bloom.FULL_FILL)
    # A filter that does not cover every entry (another writer went without it): new.
    second = cache._filter.identity
    cache._filter.set_covered(199)
    cache.rebuild(iter(files))
    assert cache._filter is not None and cache._filter.identity != second
    assert all(cache.contains(b) for b, _ in entries[:200])
    cache.close()
