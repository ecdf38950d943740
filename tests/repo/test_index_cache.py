"""The LMDB index is only a cache of the repository's index files, and repairable."""

from __future__ import annotations

import os
import shutil

import pytest

from casbackup.repo.ids import BlobId, Kind
from casbackup.repo.indexcache import cache_bound, cache_root
from casbackup.repo.repository import Repository
from casbackup.testing.fixtures import open_repo, run_cli
from casbackup.verify.check import CheckOptions, check
from casbackup.verify.repair import repair_index


def fill(repo: Repository, batches: int = 3, per_batch: int = 40) -> dict[BlobId, bytes]:
    """Several flushes: several index files, each naming its own packs."""
    blobs = {}
    for b in range(batches):
        for i in range(per_batch):
            data = os.urandom(20_000) + bytes([b, i])
            blobs[repo.save_blob(Kind.DATA, data)[0]] = data
        repo.flush()
    return blobs


def all_load(repo: Repository, blobs: dict[BlobId, bytes]) -> None:
    for blob_id, data in blobs.items():
        assert repo.has_blob(blob_id)
        assert repo.load_blob(blob_id, Kind.DATA) == data


def cache_dir(repo: Repository) -> str:
    return os.path.join(cache_root(), repo.config.id, "index")


def test_deleted_cache_dir_is_rebuilt_on_open(repo_path: str) -> None:
    with open_repo(repo_path) as repo:
        blobs = fill(repo)
        path = cache_dir(repo)
    shutil.rmtree(path)
    with open_repo(repo_path) as repo:
        all_load(repo, blobs)
        assert repo.cache.count() == len(blobs)
    assert os.path.isdir(path)


def test_garbage_cache_dir_is_rebuilt(repo_path: str) -> None:
    with open_repo(repo_path) as repo:
        blobs = fill(repo, batches=1)
        path = cache_dir(repo)
    shutil.rmtree(path)
    os.makedirs(path)
    with open(os.path.join(path, "data.mdb"), "wb") as f:
        f.write(b"not an lmdb file" * 100)
    with open_repo(repo_path) as repo:
        all_load(repo, blobs)


def test_deleted_index_file_triggers_rebuild_and_repair_recovers(repo_path: str) -> None:
    with open_repo(repo_path) as repo:
        blobs = fill(repo)
        files = repo.index_files()
        lost = {bid for bid, _ in repo.load_index_file(files[0]).blobs()}
    os.remove(os.path.join(repo_path, "index", files[0]))
    with open_repo(repo_path) as repo:
        # The cache held the vanished file's entries; it must not keep trusting them.
        assert repo.cache.known_files() == set(files[1:])
        assert not any(repo.has_blob(b) for b in lost)
        assert repo.cache.count() == len(blobs) - len(lost)
        result = repair_index(repo)
        assert result.packs_from_headers >= 1 and not result.packs_unreadable
        all_load(repo, blobs)
        assert check(repo, CheckOptions(read_data=True)).warnings == []


def test_damaged_index_file_is_reported_and_repaired(repo_path: str) -> None:
    with open_repo(repo_path) as repo:
        blobs = fill(repo)
        victim = repo.index_files()[1]
    name = os.path.join(repo_path, "index", victim)
    data = bytearray(open(name, "rb").read())
    data[40] ^= 0x10
    with open(name, "wb") as f:
        f.write(data)
    shutil.rmtree(os.path.join(cache_root()))  # force a read of every index file
    with open_repo(repo_path) as repo:
        warnings = repo.sync_index(rebuild=True)
        assert len(warnings) == 1 and victim[:12] in warnings[0] and "repair index" in warnings[0]
        report = check(repo, CheckOptions())
        assert any(victim[:12] in e for e in report.errors)
        result = repair_index(repo)
        assert result.damaged_index_files == [victim]
        assert result.packs_from_headers >= 1
        assert repo.index_files() == [result.new_index]
        all_load(repo, blobs)
        report = check(repo, CheckOptions(read_data=True))
        assert report.errors == [] and report.warnings == []


@pytest.mark.parametrize("read_all", [False, True])
def test_repair_index_cli(repo_path: str, read_all: bool) -> None:
    with open_repo(repo_path) as repo:
        blobs = fill(repo, batches=2)
        victim = repo.index_files()[0]
    with open(os.path.join(repo_path, "index", victim), "r+b") as f:
        f.truncate(30)
    args = ["repair", "index"] + (["--read-all-packs"] if read_all else [])
    res = run_cli(*args, repo=repo_path)
    assert res.code == 0, res.err
    assert "index rebuilt" in res.out and "Traceback" not in res.err
    if not read_all:
        assert f"index file {victim[:12]} was damaged" in res.err
    with open_repo(repo_path) as repo:
        all_load(repo, blobs)
    assert run_cli("check", "--read-data", repo=repo_path).code == 0


def test_add_file_in_batches_names_the_file_only_once_all_entries_are_in(  # type: ignore[no-untyped-def]
    tmp_path, monkeypatch
) -> None:
    from casbackup.repo import indexcache as index_module
    from casbackup.repo.ids import FileId
    from casbackup.repo.index import Location
    from casbackup.repo.indexcache import IndexCache

    monkeypatch.setattr(index_module, "ADD_BATCH", 10)
    cache = IndexCache(str(tmp_path / "cache"))
    entries = [
        (BlobId(os.urandom(32)), Location("ab" * 32, i, 10, 20, Kind.DATA)) for i in range(35)
    ]
    cache.add_file(FileId("11" * 32), entries)
    assert cache.known_files() == {"11" * 32}
    assert cache.get_many([b for b, _ in entries]) == [loc for _, loc in entries]
    # A crash between batches leaves entries but not the name: the next sync adds them again.
    calls = []
    real = cache._put

    def dying(batch, name=None):  # type: ignore[no-untyped-def]
        calls.append(len(batch))
        if len(calls) == 2:
            raise OSError("killed")
        real(batch, name)

    monkeypatch.setattr(cache, "_put", dying)
    more = [(BlobId(os.urandom(32)), Location("cd" * 32, i, 10, 20, Kind.DATA)) for i in range(25)]
    with pytest.raises(OSError):
        cache.add_file(FileId("22" * 32), more)
    assert cache.known_files() == {"11" * 32}
    assert cache.contains_all(sorted(b for b, _ in more)[:10])  # batches go in key order
    cache.close()


def _records(entries) -> bytes:  # type: ignore[no-untyped-def]
    from casbackup.repo.index import encode_record

    return b"".join(encode_record(b, loc) for b, loc in entries)


def test_rebuild_matches_adding_file_after_file(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The sorted, appended rebuild (``IndexCache.rebuild``) holds what ``add_file`` file
    after file would: every entry, a blob named twice at the later file's location, a delta
    with its base, the file names; and a crash before the last bucket names no file."""
    from casbackup.repo.ids import FileId
    from casbackup.repo.index import Location
    from casbackup.repo.indexcache import IndexCache

    pack_a, pack_b = FileId("aa" * 32), FileId("bb" * 32)
    first = [
        (BlobId(os.urandom(32)), Location(pack_a, i * 50, 50, 60, Kind.DATA)) for i in range(600)
    ]
    twice = first[7][0]
    base = first[3][0]
    delta_id = BlobId(bytes([first[3][0][0]]) + os.urandom(31))  # same bucket as its base
    second = [
        (twice, Location(pack_b, 0, 50, 60, Kind.DATA)),
        (delta_id, Location(pack_b, 50, 30, 60, Kind.DELTA, base)),
        *[(BlobId(os.urandom(32)), Location(pack_b, 80 + i, 1, 2, Kind.TREE)) for i in range(300)],
    ]
    files = [
        (FileId("01" * 32), [(pack_a, _records(first))], {}),
        (FileId("02" * 32), [(pack_b, _records(second))], {delta_id: base}),
    ]
    slow = IndexCache(str(tmp_path / "slow"))
    fast = IndexCache(str(tmp_path / "fast"))
    slow.add_file(files[0][0], first)
    slow.add_file(files[1][0], second)
    fast.add_file(FileId("99" * 32), second[:5])  # stale entries and name: replaced
    fast.rebuild(iter(files))
    ids = sorted({b for b, _ in first + second})
    assert fast.count() == slow.count() == len(ids)
    assert fast.get_many(ids) == slow.get_many(ids)
    assert fast.get(twice) == second[0][1] and fast.get(delta_id).base == base  # type: ignore[union-attr]
    assert fast.known_files() == slow.known_files() == {"01" * 32, "02" * 32}

    # Killed before the last bucket's transaction: entries, but no file named.
    from casbackup.maintenance import spill

    real = spill.RecordSpill.read

    def dying(self, bucket):  # type: ignore[no-untyped-def]
        if bucket == spill.ID_BUCKETS - 1 and self.record_size != 64:
            raise OSError("killed")
        return real(self, bucket)

    monkeypatch.setattr(spill.RecordSpill, "read", dying)
    with pytest.raises(OSError):
        fast.rebuild(iter(files))
    assert fast.known_files() == set()
    slow.close()
    fast.close()


def test_raw_values_dense_and_sparse(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``raw_values`` scans a dense range and looks sparse ids up: both give exactly the
    present ids' stored values."""
    from casbackup.repo.ids import FileId
    from casbackup.repo.index import Location
    from casbackup.repo.indexcache import IndexCache

    cache = IndexCache(str(tmp_path / "c"))
    entries = [
        (BlobId(os.urandom(32)), Location(FileId("ab" * 32), i, 10, 20 + i, Kind.DATA))
        for i in range(2000)
    ]
    cache.add_file(FileId("11" * 32), entries)
    absent = [os.urandom(32) for _ in range(5)]
    present = {bytes(b): loc for b, loc in entries}
    for ids in (sorted(present), sorted(list(present)[:3] + absent), sorted(absent)):
        got = cache.raw_values(ids)
        assert set(got) == {i for i in ids if i in present}
        assert all(Location.decode(v) == present[k] for k, v in got.items())
    cache.close()


def _mapped_kib(file_path: str) -> int:
    """This process's resident KiB of its mappings of ``file_path`` (/proc/self/smaps)."""
    real, total, inside = os.path.realpath(file_path), 0, False
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(None, 1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                inside = line.rstrip("\n").endswith(real)
            elif inside and first == "Rss:":
                total += int(line.split()[1])
    return total


@pytest.mark.skipif(
    not os.path.exists("/proc/self/smaps"),
    reason="counts resident pages in /proc/self/smaps, which only Linux has",
)
@pytest.mark.parametrize("whole", [True, False])
def test_small_cache_stays_mapped_large_one_is_released(tmp_path, monkeypatch, whole) -> None:  # type: ignore[no-untyped-def]
    """Pages are released only from a cache larger than WHOLE_FILE_BYTES: releasing a small
    one bounds nothing (a window of look-ups maps most of it) and costs the re-faults."""
    from casbackup.repo import indexcache as index_module
    from casbackup.repo.ids import FileId
    from casbackup.repo.index import Location
    from casbackup.repo.indexcache import IndexCache

    if not whole:
        monkeypatch.setattr(index_module, "WHOLE_FILE_BYTES", 0)  # as if it were large
    cache = IndexCache(str(tmp_path / "c"))
    entries = [
        (BlobId(os.urandom(32)), Location(FileId("ab" * 32), i, 10, 20, Kind.DATA))
        for i in range(5000)
    ]
    cache.add_file(FileId("11" * 32), entries)
    data = str(tmp_path / "c" / "data.mdb")
    assert cache.get_many([b for b, _ in entries[:500]])[0] is not None
    before = _mapped_kib(data)
    cache.release_pages()
    after = _mapped_kib(data)
    cache.close()
    assert before > 0
    if whole:
        assert after == before
    else:
        assert after == 0


def test_read_ahead_is_only_a_hint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from casbackup.repo.indexcache import _read_ahead_small

    _read_ahead_small(str(tmp_path / "missing"))  # nothing to read: no error
    (tmp_path / "f").write_bytes(b"x" * 10_000)
    _read_ahead_small(str(tmp_path / "f"))


@pytest.mark.parametrize(
    ("raw", "mib"),
    [("", 7), ("  ", 7), ("0", 0), ("12", 12), (" 3 ", 3), ("-1", 7), ("1.5", 7), ("lots", 7)],
)
def test_a_cache_bound_that_is_not_a_non_negative_integer_is_the_default(
    monkeypatch: pytest.MonkeyPatch, raw: str, mib: int
) -> None:
    """A typo (a negative or fractional number, a word) keeps the cache at its default size:
    it neither stops a backup nor silently turns the cache off (-1 used to mean 0: off)."""
    monkeypatch.setenv("CASBACKUP_TEST_CACHE_MIB", raw)
    assert cache_bound("CASBACKUP_TEST_CACHE_MIB", 7) == mib << 20
