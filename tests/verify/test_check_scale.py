"""check at scale (issue 17): chunks are resolved bucket by bucket against the index cache's
sorted ranges, never by one look-up per chunk; damage is still named file by file."""

from __future__ import annotations

import os

import pytest

from casbackup.repo.ids import Kind
from casbackup.repo.index import iter_records
from casbackup.repo.indexcache import IndexCache
from casbackup.testing import synth_index
from casbackup.testing.fixtures import open_repo
from casbackup.verify.check import CheckOptions, check


def _no_lookup_per_chunk(self, blob_ids):  # type: ignore[no-untyped-def]
    raise AssertionError(f"check looked {len(blob_ids)} chunks up one by one")


def test_check_resolves_chunks_by_bucket_and_names_a_lost_pack(  # type: ignore[no-untyped-def]
    repo_path, monkeypatch
) -> None:
    with open_repo(repo_path) as repo:
        synth_index.fill(repo, 25_000, packs=True)  # 3 data packs, one snapshot
    monkeypatch.setattr(IndexCache, "get_many", _no_lookup_per_chunk)
    with open_repo(repo_path) as repo:
        report = check(repo, CheckOptions())
        assert report.ok, report.errors
        assert report.snapshots == 1 and report.trees > 1
        # Lose a data pack the snapshot uses (synth_index.pack_use leaves one of the three
        # wholly unused: picking by name alone chose it one run in three, and nothing was
        # affected).
        used, trees = set(), [repo.list_snapshots()[0].root]
        while trees:
            for node in repo.load_tree(trees.pop()):
                used.update(node.content)
                if node.subtree is not None:
                    trees.append(node.subtree)
        data_packs = []
        for fid in repo.index_files():
            for pack, records in repo.load_index_records(fid)[1]:
                entries = list(iter_records(records))
                if entries[0][0] == Kind.DATA and any(e[1] in used for e in entries):
                    data_packs.append(pack)
    victim = sorted(data_packs)[0]
    os.remove(os.path.join(repo_path, "data", victim[:2], victim))
    with open_repo(repo_path) as repo:
        report = check(repo, CheckOptions())
    assert any(victim[:12] in e and "is missing" in e for e in report.errors), report.errors
    (paths,) = report.affected.values()
    assert paths and all(p.startswith("/d") for p in paths)


@pytest.mark.parametrize("lost", ["chunk", "size"])
def test_check_names_a_missing_chunk_or_a_wrong_size_without_lookups(  # type: ignore[no-untyped-def]
    repo_path, monkeypatch, lost
) -> None:
    """A chunk gone from the index, or a file whose chunks do not add up to its size: found
    by the bucket pass, named by the second walk (the messages of before)."""
    from casbackup.repo.index import Location

    with open_repo(repo_path) as repo:
        synth_index.fill(repo, 25_000, packs=True)
        snap = repo.list_snapshots()[0]
        top = repo.load_tree(snap.root)
        files = repo.load_tree(top[0].subtree)
        chunk = files[3].content[5]
        with repo.cache.env.begin(write=True) as txn:
            if lost == "chunk":
                txn.delete(chunk, db=repo.cache.blobs)
            else:  # a chunk 1 byte longer than the tree's size allows
                loc = repo.cache.get(chunk)
                assert loc is not None
                bigger = Location(loc.pack, loc.offset, loc.stored_len, loc.raw_len + 1, loc.kind)
                txn.put(chunk, bigger.encode(), db=repo.cache.blobs)
        monkeypatch.setattr(IndexCache, "get_many", _no_lookup_per_chunk)
        # The cache still names every index file: check reads it as it is.
        report = check(repo, CheckOptions())
    name = files[3].name.decode()
    if lost == "chunk":
        assert any(name in e and "not in the index" in e for e in report.errors), report.errors
    else:
        assert any(name in e and "chunks hold" in e for e in report.errors), report.errors
    (paths,) = report.affected.values()
    assert [p for p in paths if p.endswith(name)]


@pytest.mark.parametrize("field", ["offset", "stored", "kind", "id"])
def test_check_names_each_index_record_its_pack_header_contradicts(  # type: ignore[no-untyped-def]
    repo_path, field
) -> None:
    """An index record that its pack's header contradicts (in offset, stored length or
    kind, or naming a blob the pack does not hold) is an error, its blob is damaged and
    its file named, and no other blob (headers are compared as sets, not entry by entry)."""
    from casbackup.repo.index import RECORD_SIZE, encode_index_records

    with open_repo(repo_path) as repo:
        synth_index.fill(repo, 25_000, packs=True)
        snap = repo.list_snapshots()[0]
        files = repo.load_tree(repo.load_tree(snap.root)[0].subtree)
        chunk = files[7].content[3]
        (old,) = [
            f
            for f in repo.index_files()
            if any(chunk in records for _, records in repo.load_index_records(f)[1])
        ]
        sections = repo.load_index_records(old)[1]
        forged = []
        for pack, records in sections:
            at = records.find(chunk) - 1
            if at >= 0 and at % RECORD_SIZE == 0:
                rec = bytearray(records[at : at + RECORD_SIZE])
                if field == "offset":
                    rec[33:37] = (int.from_bytes(rec[33:37], "big") + 1).to_bytes(4, "big")
                elif field == "stored":
                    rec[37:41] = (int.from_bytes(rec[37:41], "big") - 1).to_bytes(4, "big")
                elif field == "kind":
                    rec[0] = Kind.TREE
                else:  # an id the pack does not hold, beside the real record
                    rec[1:33] = bytes(32)
                    records = records + bytes(rec)
                    rec = bytearray(records[at : at + RECORD_SIZE])
                records = records[:at] + bytes(rec) + records[at + RECORD_SIZE :]
            forged.append((pack, records))
        repo.save_file_object("index", Kind.INDEX, encode_index_records(forged, [old]))
    with open_repo(repo_path) as repo:
        report = check(repo, CheckOptions())
    # Damage, with an error of its own: check used to name the files and still say "no
    # errors were found" (and exit 0).
    assert report.damaged
    (pack,) = report.damaged_packs
    assert report.errors == [
        f"pack {pack[:12]}: the index and the pack's header disagree on 1 blob "
        "(run 'casbackup repair index --read-all-packs')"
    ]
    if field == "id":
        # A blob the pack does not hold is not one any snapshot needs: only its pack is named.
        assert list(report.damaged_packs) and not report.affected, report.errors
        return
    (paths,) = report.affected.values()
    assert paths == [f"/d000000/{files[7].name.decode()}"], paths
