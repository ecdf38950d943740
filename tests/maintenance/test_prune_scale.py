"""prune and check at scale: exact spilled sets, the index written in several files, and
memory that does not grow with the number of index entries."""

from __future__ import annotations

import os
import shutil
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casbackup.maintenance import pruneplan as prune_mod
from casbackup.maintenance import spill
from casbackup.maintenance.prune import PruneOptions, plan_prune, prune
from casbackup.maintenance.spill import IdSet, RecordSpill
from casbackup.maintenance.usage import find_used_blobs
from casbackup.repo.pack import pack_name, read_header_columns
from casbackup.testing import synth_index
from casbackup.testing.fixtures import make_repo, open_repo
from casbackup.verify.check import CheckOptions, _same_as_header, check
from tests.maintenance.test_prune import Crash, CrashingBackend

ids = st.binary(min_size=32, max_size=32)
# Ids crowded into a few buckets as well as spread: a bucket's file must hold them all.
skewed = st.builds(lambda first, rest: bytes([first % 3]) + rest, st.integers(0, 255),
                   st.binary(min_size=31, max_size=31))  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(added=st.lists(st.one_of(ids, skewed), max_size=400), others=st.lists(ids, max_size=50))
def test_idset_never_reports_an_added_id_as_absent(added, others) -> None:  # type: ignore[no-untyped-def]
    saved = spill._FLUSH_AT, spill._SWEEP_AT
    spill._FLUSH_AT = 96  # three ids: most adds go through a bucket's file
    spill._SWEEP_AT = 200  # and full buffers are flushed every few ids added at once
    s = IdSet()
    try:
        half = len(added) // 2
        for blob_id in added[:half]:
            s.add(blob_id)
        s.update(added[half:])
        assert all(b in s for b in added)
        assert len(s) == len(set(added))
        assert sorted(s) == sorted(set(added))
        for b in others:
            assert (b in s) == (b in set(added))  # exact: no false "present" either
    finally:
        spill._FLUSH_AT, spill._SWEEP_AT = saved
        s.close()


def test_record_spill_keeps_order_and_removes_its_files() -> None:
    saved = spill._FLUSH_AT
    spill._FLUSH_AT = 10
    r = RecordSpill(5, 4)
    try:
        for i in range(40):
            r.add(i % 4, bytes([i] * 5))
        assert list(r.records(1)) == [bytes([i] * 5) for i in range(1, 40, 4)]
        assert r.read(3) == b"".join(bytes([i] * 5) for i in range(3, 40, 4))
        assert os.listdir(r.folder)
    finally:
        spill._FLUSH_AT = saved
        r.close()
    assert not os.path.exists(r.folder)


def test_record_spill_adds_many_by_one_of_their_bytes() -> None:
    saved = spill._FLUSH_AT, spill._SWEEP_AT
    spill._FLUSH_AT, spill._SWEEP_AT = 12, 30
    r = RecordSpill(6, spill.ID_BUCKETS)
    try:
        records = [bytes([i % 7, 9, i % 3, 0, 0, i]) for i in range(200)]
        r.add_by_byte(records[:100], 2)
        r.add(1, b"x" * 6)
        r.add_by_byte(records[100:], 2)
        for bucket in (0, 1, 2):
            expected = [x for x in records if x[2] == bucket]
            if bucket == 1:
                expected.insert(sum(1 for x in records[:100] if x[2] == 1), b"x" * 6)
            assert list(r.records(bucket)) == expected
        assert r.count == 201
        with pytest.raises(ValueError):
            r.add_by_byte([b"short"], 0)
        with pytest.raises(ValueError):
            IdSet().update([bytes(31)])
    finally:
        spill._FLUSH_AT, spill._SWEEP_AT = saved
        r.close()


@pytest.fixture
def small_synth(monkeypatch, tmp_path):  # type: ignore[no-untyped-def]
    """A synthetic repository of 3,000 blobs in packs of 100: 2 % of the packs unused, 2 %
    half used; prune writes its index in files of 400 entries."""
    monkeypatch.setattr(synth_index, "PACK_BLOBS", 100)
    monkeypatch.setattr(synth_index, "PER_FILE", 1000)
    monkeypatch.setattr(synth_index, "FILE_CHUNKS", 10)
    monkeypatch.setattr(synth_index, "DIR_FILES", 20)
    monkeypatch.setattr(prune_mod, "INDEX_FILE_BLOBS", 400)
    path = str(tmp_path / "repo")
    repo = make_repo(path)
    synth_index.fill(repo, 3000, packs=True)
    repo.close()
    return path


def _indexed(repo):  # type: ignore[no-untyped-def]
    return {b for f in repo.index_files() for b, _ in repo.load_index_file(f).blobs()}


def test_prune_keeps_exactly_the_used_blobs_in_several_index_files(small_synth) -> None:  # type: ignore[no-untyped-def]
    repo = open_repo(small_synth)
    _, used = find_used_blobs(repo)
    before = _indexed(repo)
    plan = plan_prune(repo)
    assert plan.used_blobs == len(used)
    assert len(plan.delete) == 1 and len(plan.repack) == 1  # packs 0 and 1 of 30
    assert plan.delete[0].used_blobs == 0 and plan.delete[0].unused_blobs == 100
    assert (plan.repack[0].used_blobs, plan.repack[0].unused_blobs) == (50, 50)
    plan, result = prune(repo)
    after = _indexed(repo)
    assert used <= after, "a used blob lost its index entry"
    assert after - used == set(), "kept packs here are wholly used: nothing unused stays"
    assert len(before - after) == 150
    assert result.index_files_written == len(repo.index_files()) > 1
    # Each pack's records in the order of its header, as backup writes them: check then
    # compares them with the header as bytes.
    for fid in repo.index_files():
        for pack, records in repo.load_index_records(fid)[1]:
            header = read_header_columns(
                repo.backend.get, pack_name(pack), repo.backend.stat(pack_name(pack)), repo.opener
            )
            assert _same_as_header(records, header), pack
    assert check(repo, CheckOptions(read_data=True)).ok
    assert plan_prune(repo).empty
    repo.close()


@pytest.mark.parametrize("after", [0, 2])
def test_prune_interrupted_between_its_index_files(small_synth, tmp_path, after) -> None:  # type: ignore[no-untyped-def]
    """Killed after some of the new index files: the old ones are still in force."""
    path = str(tmp_path / "copy")
    shutil.copytree(small_synth, path)
    repo = open_repo(CrashingBackend(path, "put", "index/", after))
    _, used = find_used_blobs(repo)
    with pytest.raises(Crash):
        prune(repo)
    repo.backend.op = ""
    repo = open_repo(path)
    report = check(repo, CheckOptions())
    assert report.ok, report.errors
    assert used <= _indexed(repo)
    prune(repo, PruneOptions(unindexed_margin=0))
    assert check(repo, CheckOptions(read_data=True)).ok
    assert used <= _indexed(repo)
    present = {name for name, _ in repo.backend.list("data/")}
    indexed = {pack_name(p) for f in repo.index_files() for p in repo.load_index_file(f).packs}
    assert present == indexed
    repo.close()


ENTRIES = 200_000


@pytest.fixture(scope="module")
def big_index(tmp_path_factory):  # type: ignore[no-untyped-def]
    """200,000 index entries naming one pack that does not exist; no snapshot."""
    root = tmp_path_factory.mktemp("scale")
    path = str(root / "repo")
    repo = make_repo(path)
    synth_index.fill(repo, ENTRIES)
    repo.close()
    return path


def _peak(fn):  # type: ignore[no-untyped-def]
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_check_and_prune_plan_memory_does_not_grow_with_entries(big_index) -> None:  # type: ignore[no-untyped-def]
    """Python objects per index entry would cost 30 MiB and more here (the dicts before:
    about 150 bytes an entry); what stays is about one index file (4.5 MiB decrypted)."""
    repo = open_repo(big_index)
    repo.cache.count()  # opened and synced before measuring
    report, peak = _peak(lambda: check(repo, CheckOptions()))
    assert any("is missing: 200,000 blobs" in e or "is missing: 200000 blobs" in e
               for e in report.errors), report.errors  # fmt: skip
    assert peak < 20 << 20, peak
    plan, peak = _peak(lambda: plan_prune(repo))
    assert plan.missing_packs == ("f" * 64,) and plan.used_blobs == 0
    plan.close()
    assert peak < 20 << 20, peak
    repo.close()
