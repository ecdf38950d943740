"""casbackup copy attacked: killed after every pack write, fed hostile delta graphs, and
run back and forth between two repositories. Whatever happens, the destination holds
nothing it cannot read back (``check --read-data``), and a rerun completes the copy."""

from __future__ import annotations

import os
from pathlib import Path

import blake3
import pytest

from casbackup.errors import CasError, IntegrityError
from casbackup.maintenance.copy import CopyOptions, copy_snapshots
from casbackup.repo import blobstore as blobstore_module
from casbackup.repo import delta
from casbackup.repo.ids import BlobId, Kind
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.tree import Node, NodeKind
from casbackup.store.local import LocalBackend
from casbackup.testing.faults import FaultScript, FaultyBackend, ProcessDeath
from casbackup.testing.fixtures import PASSWORD, make_repo, open_repo
from casbackup.verify.check import CheckOptions, check
from tests.maintenance.test_copy_deltas import copied, new_repo, six_nights
from tests.repo.test_delta import DEPTH, read_dump

SHARED = pytest.mark.parametrize("shared", [False, True], ids=["own-secret", "shared-secret"])


@pytest.fixture(autouse=True)
def _shallow_chains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delta, "MAX_DEPTH", DEPTH)


def _indexed(repo: Repository) -> set[bytes]:
    """Every blob id the repository's index files name."""
    fids = [name.rsplit("/", 1)[1] for name, _ in repo.backend.list("index/")]
    return {bytes(b) for fid in fids for b, _ in repo.load_index_file(fid).blobs()}


@pytest.mark.slow
@SHARED
def test_a_copy_killed_after_any_pack_write_loses_nothing_and_a_rerun_completes(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared: bool
) -> None:
    """The process dies (nothing after the Nth put is written) at every put of a copy of
    nights whose chunks are deltas; index files are flushed every two packs, so some
    deaths leave deltas indexed whose bases' packs were stored just before."""
    monkeypatch.setattr(blobstore_module, "INDEX_FLUSH_PACKS", 2)
    nights = six_nights(repo, tmp_path / "app")
    expected = {s.id: read_dump(repo, s) for s in nights}
    # How many puts a whole copy makes: every death point below is inside the copy.
    counter = FaultyBackend(LocalBackend(str(tmp_path / "count")), FaultScript())
    new_repo(tmp_path / "count", repo, shared=shared).close()
    copy_snapshots(repo, Repository.open(counter, PASSWORD.encode()), CopyOptions())
    total = len(counter.puts)
    assert total > 8
    for after in range(total):
        path = tmp_path / f"dst-{after}"
        new_repo(path, repo, shared=shared).close()
        faulty = FaultyBackend(LocalBackend(str(path)), FaultScript(crash_after_puts=after))
        with pytest.raises(ProcessDeath):
            copy_snapshots(repo, Repository.open(faulty, PASSWORD.encode()), CopyOptions())
        dst = open_repo(str(path))  # the dead process never closed it
        before = _indexed(dst)
        assert check(dst, CheckOptions(read_data=True, workers=1)).ok, after
        result = copy_snapshots(repo, dst, CopyOptions())
        assert len(result.copied) + len(result.skipped) == len(nights)
        assert before <= _indexed(dst), after  # nothing stored before the death is lost
        for original, copy in zip(nights, copied(dst, nights), strict=True):
            assert read_dump(dst, copy) == expected[original.id], after
        for link in _indexed(dst):  # every chain the two runs made is within the limit
            loc = dst.locate(link)
            if loc.kind == Kind.DELTA:
                assert len(delta.chain_of(dst.locate, link, loc)) <= DEPTH + 1
        assert check(dst, CheckOptions(read_data=True, workers=1)).ok, after
        dst.close()


# ----------------------------------------------------------------- hostile sources
def _seal(repo: Repository, kind: Kind, blob_id: bytes, payload: bytes, raw_len: int,
          base: bytes) -> None:  # fmt: skip
    """Store a delta blob of ``kind`` with whatever payload and base the attacker likes."""
    envelope = repo.sealer.seal(kind, BlobId(blob_id), payload)
    assert repo.store_sealed(kind, BlobId(blob_id), envelope, raw_len, BlobId(base))


def _file_snapshot(repo: Repository, chunks: list[bytes], plain: bytes, at: int = 2) -> Snapshot:
    """A snapshot of one file ``f`` whose content is ``chunks`` (claimed to be ``plain``),
    taken at ``at`` ns (copy goes oldest first)."""
    node = Node(
        name=b"f",
        kind=NodeKind.FILE,
        size=len(plain),
        content=tuple(BlobId(c) for c in chunks),
        content_hash=blake3.blake3(plain).digest(),
    )
    root = repo.save_tree([node])
    record = Snapshot(time="2026-01-01T00:00:00Z", start_ns=at, host="h", user="u",
                      paths=("/f",), tree=root.hex())  # fmt: skip
    return repo.save_snapshot(record)


def _chunk(n: int) -> bytes:
    return bytes(range(256)) * 200 + n.to_bytes(4, "big") * 1000


def _delta_chain(repo: Repository, length: int, start: int = 0) -> list[bytes]:
    """A well-formed chain: a DATA chunk and ``length`` deltas, each of the one before it
    (ids and payloads genuine), of ``_chunk(start)`` and on. Returns the ids, the full
    chunk first."""
    first, _ = repo.save_blob(Kind.DATA, _chunk(start))
    ids, previous = [bytes(first)], _chunk(start)
    for n in range(start + 1, start + length + 1):
        plain = _chunk(n)
        blob_id = repo.blob_id(plain)
        payload = delta.encode_delta(ids[-1], previous, plain, 3)
        _seal(repo, Kind.DELTA, blob_id, payload, len(plain), ids[-1])
        ids.append(bytes(blob_id))
        previous = plain
    return ids


def _hostile(kind: str, repo: Repository) -> None:
    """One snapshot whose file (or folder) needs the hostile graph ``kind`` (chunks from
    ``_chunk(100)`` on, which no sound night holds)."""
    if kind == "missing-base":
        plain, absent = _chunk(101), repo.blob_id(_chunk(100))
        blob_id = repo.blob_id(plain)
        payload = delta.encode_delta(absent, _chunk(100), plain, 3)
        _seal(repo, Kind.DELTA, blob_id, payload, len(plain), absent)
        _file_snapshot(repo, [blob_id], plain)
    elif kind == "too-deep":
        ids = _delta_chain(
            repo, DEPTH + 2, 100
        )  # written past the limit, as a hostile writer would
        _file_snapshot(repo, [ids[-1]], _chunk(100 + DEPTH + 2))
    elif kind == "cycle":
        a, b = repo.blob_id(_chunk(101)), repo.blob_id(_chunk(102))
        _seal(
            repo,
            Kind.DELTA,
            a,
            delta.encode_delta(b, _chunk(102), _chunk(101), 3),
            len(_chunk(101)),
            b,
        )
        _seal(
            repo,
            Kind.DELTA,
            b,
            delta.encode_delta(a, _chunk(101), _chunk(102), 3),
            len(_chunk(101)),
            a,
        )
        _file_snapshot(repo, [a], _chunk(101))
    elif kind == "delta-of-a-tree":
        tree_plain = b"not really a tree, but sealed as one" * 100
        tree_id, _ = repo.save_blob(Kind.TREE, tree_plain)
        plain = tree_plain + b"!"
        blob_id = repo.blob_id(plain)
        payload = delta.encode_delta(tree_id, tree_plain, plain, 3)  # decodes fine
        _seal(repo, Kind.DELTA, blob_id, payload, len(plain), tree_id)
        _file_snapshot(repo, [blob_id], plain)
    elif kind == "tree-delta-of-data":
        from casbackup.repo.tree import encode_tree

        tree_plain = encode_tree([Node(name=b"empty", kind=NodeKind.FILE,
                                       content_hash=blake3.blake3(b"").digest())])  # fmt: skip
        data_id, _ = repo.save_blob(Kind.DATA, _chunk(100))
        tree_id = repo.blob_id(tree_plain)
        payload = delta.encode_delta(data_id, _chunk(100), tree_plain, 3, wide=True)
        _seal(repo, Kind.TREE_DELTA, tree_id, payload, len(tree_plain), data_id)
        root = repo.save_tree([Node(name=b"d", kind=NodeKind.DIR, mode=0o755, subtree=tree_id)])
        repo.save_snapshot(Snapshot(time="2026-01-01T00:00:00Z", host="h",
                                    user="u", paths=("/d",), tree=root.hex(), start_ns=2))  # fmt: skip
    else:
        raise AssertionError(kind)


HOSTILE = ["missing-base", "too-deep", "cycle", "delta-of-a-tree", "tree-delta-of-data"]


@pytest.mark.parametrize("kind", HOSTILE)
@SHARED
def test_a_hostile_delta_graph_in_the_source_is_refused_and_nothing_unreadable_is_written(
    tmp_path: Path, kind: str, shared: bool
) -> None:
    src = make_repo(str(tmp_path / "src"))
    # A sound night first: the copy stores it, then meets the hostile one.
    good_ids = _delta_chain(src, 2)
    _file_snapshot(src, [good_ids[-1]], _chunk(2), at=1)
    _hostile(kind, src)
    src.flush()
    dst = new_repo(tmp_path / "dst", src, shared=shared)
    with pytest.raises(CasError) as err:
        copy_snapshots(src, dst, CopyOptions())
    assert err.value.exit_code in (IntegrityError.exit_code, 23), err.value
    assert "\n" not in str(err.value)
    assert len(dst.list_snapshots()) == 1  # the sound night only
    assert check(dst, CheckOptions(read_data=True, workers=1)).ok
    for link in _indexed(dst):
        loc = dst.locate(link)
        if loc.kind in (Kind.DELTA, Kind.TREE_DELTA):
            chain = delta.chain_of(dst.locate, link, loc)
            assert len(chain) <= DEPTH + 1
            dst.load_blob(BlobId(link))  # reads back, checked against its id
    dst.close()
    src.close()


# ----------------------------------------------------------------- back and forth
@SHARED
def test_copying_the_copies_back_adds_no_second_snapshot(
    repo: Repository, tmp_path: Path, shared: bool
) -> None:
    """A destination copied back into its source (a restore of the off-site copy after
    losing some nights, say) brings back only what the source lacks: a snapshot that was
    copied from the source is that source's own, not a new one."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(os.urandom(100_000))
    from casbackup.archiver.backup import BackupOptions, run_backup

    def backup() -> Snapshot:
        snap = run_backup(repo, BackupOptions(paths=(str(data),), workers=1)).snapshot
        assert snap is not None
        return snap

    first = backup()
    dst = new_repo(tmp_path / "dst", repo, shared=shared)
    copy_snapshots(repo, dst, CopyOptions())
    back = copy_snapshots(dst, repo, CopyOptions())  # it came from there: nothing to do
    assert back.copied == [] and len(back.skipped) == 1
    assert [s.id for s in repo.list_snapshots()] == [first.id]
    (data / "b.bin").write_bytes(os.urandom(50_000))
    second = backup()
    repo.delete_snapshot(first.id)  # lost here, kept off-site
    back = copy_snapshots(dst, repo, CopyOptions())
    assert len(back.copied) == 1 and back.skipped == []
    assert sorted(s.id for s in repo.list_snapshots()) == sorted([second.id, back.copied[0][1]])
    again = copy_snapshots(dst, repo, CopyOptions())  # and nothing the second time
    assert again.copied == []
    # The other way: dst already has the first night (it came from here), so only the
    # second goes, and the snapshot copied back into the source is not copied again.
    forth = copy_snapshots(repo, dst, CopyOptions())
    assert [src_id for src_id, _ in forth.copied] == [second.id]
    assert len(dst.list_snapshots()) == 2
    dst.close()


# ----------------------------------------------------------------- nightly copies
@SHARED
def test_a_nightly_copy_keeps_tree_deltas_against_the_night_copied_the_run_before(
    repo: Repository, tmp_path: Path, shared: bool
) -> None:
    """``copy`` run each night after the backup (one new snapshot a run): the large
    folder's tree stays a TREE_DELTA of the previous night's copy, which an earlier run
    stored, not a whole tree a night, and the unchanged files are not read again."""
    from tests.repo.test_tree_delta import folder_nights, tree_of

    src, snaps, _ = folder_nights(repo, tmp_path, DEPTH)
    dst = new_repo(tmp_path / "dst", repo, shared=shared)
    sent = []
    for snap in snaps:
        sent.append(copy_snapshots(repo, dst, CopyOptions(snapshots=(snap.id,))))
    copies = copied(dst, snaps)
    kinds = [dst.locate(tree_of(dst, c, src / "big")).kind for c in copies]
    assert kinds == [Kind.TREE] + [Kind.TREE_DELTA] * (len(snaps) - 1)
    whole = dst.locate(tree_of(dst, copies[0], src / "big")).stored_len
    assert all(r.bytes_stored < whole / 4 for r in sent[1:]), [r.bytes_stored for r in sent]
    # Nor are the unchanged files' chunks read again (trees only, and the changed file).
    assert all(r.blobs_read < sent[0].blobs_read / 2 for r in sent[1:]), [
        r.blobs_read for r in sent
    ]
    assert check(dst, CheckOptions(read_data=True, workers=1)).ok
    dst.close()


def test_a_source_missing_a_pack_says_so_before_the_one_line_error(tmp_path: Path) -> None:
    """The source's index names a pack that is gone: the copy stops on the first blob it
    needs from it (exit 23, one error line), after the source's warning that says why."""
    from casbackup.archiver.backup import BackupOptions, run_backup
    from casbackup.testing.fixtures import run_cli

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.bin").write_bytes(os.urandom(300_000))
    src_path, dst_path = str(tmp_path / "src"), str(tmp_path / "dst")
    src = make_repo(src_path)
    assert run_backup(src, BackupOptions(paths=(str(data),), workers=1)).snapshot is not None
    src.close()
    packs = sorted((Path(src_path) / "data").glob("*/*"), key=lambda p: -p.stat().st_size)
    packs[0].parent.chmod(0o755)
    packs[0].unlink()  # the data pack
    make_repo(dst_path).close()
    env = {"CASBACKUP_FROM_PASSWORD": PASSWORD, "HOME": str(tmp_path / "home"),
           "CASBACKUP_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    r = run_cli("copy", "--from-repo", src_path, repo=dst_path, env=env)
    assert r.code == 23, r.err
    lines = r.err.strip().splitlines()
    assert lines[-1].startswith("error: copying snapshot"), r.err
    assert any(line.startswith("warning: source: ") and "missing pack" in line
               for line in lines[:-1]), r.err  # fmt: skip
    assert "Traceback" not in r.err
