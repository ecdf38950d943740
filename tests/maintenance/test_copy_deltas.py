"""casbackup copy of delta chunks (issue 16): a copied night of a database dump stays a
delta of its base's copy, with the destination's own chain bound, and reads back exactly.
The chain depth limit is lowered to 3 (as in tests/repo/test_delta.py) so a few nights
reach it."""

from __future__ import annotations

from pathlib import Path

import pytest

from casbackup.crypto.keyfile import WEAK_KDF
from casbackup.errors import IntegrityError
from casbackup.maintenance.copy import CopyOptions, copy_snapshots
from casbackup.maintenance.prune import PruneOptions, prune
from casbackup.repo import delta
from casbackup.repo.config import RepoConfig
from casbackup.repo.ids import Kind
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.store.local import LocalBackend
from casbackup.testing.fixtures import PASSWORD, TEST_CONFIG_KW, flip_stored_byte
from casbackup.verify.check import CheckOptions, check
from tests.repo.test_delta import DEPTH, ROWS, dump_node, nights, payload_versions, read_dump
from tests.verify.apps import make_app

SHARED = pytest.mark.parametrize("shared", [False, True], ids=["own-secret", "shared-secret"])


@pytest.fixture(autouse=True)
def _shallow_chains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delta, "MAX_DEPTH", DEPTH)


def six_nights(repo: Repository, root: Path) -> list[Snapshot]:
    """Six nights of 1% scattered row changes to an app's SQLite database: its dump's
    chains reach the limit (DEPTH) and restart."""
    app, db = make_app(root, rows=ROWS)
    return nights(repo, app, db, DEPTH + 3)


@pytest.fixture
def chained(repo: Repository, tmp_path: Path) -> list[Snapshot]:
    return six_nights(repo, tmp_path)


def new_repo(
    path: Path, src: Repository, *, shared: bool, version: int | None = None
) -> Repository:
    kw = dict(TEST_CONFIG_KW)
    if version is not None:
        kw["version"] = version
    return Repository.init(LocalBackend(str(path)), PASSWORD.encode(), kdf=WEAK_KDF,
                           config=RepoConfig(**kw), key=src.key if shared else None)  # fmt: skip


def chunk_kinds(repo: Repository, snap: Snapshot) -> set[Kind]:
    return {repo.locate(c).kind for c in dump_node(repo, snap).content}


def data_bytes(repo: Repository, snaps: list[Snapshot]) -> int:
    """Stored bytes of the dump chunks the snapshots name, with every base they need."""
    seen: set[bytes] = set()
    for snap in snaps:
        for c in dump_node(repo, snap).content:
            seen.update(link for link, _ in delta.chain_of(repo.locate, c, repo.locate(c)))
    return sum(repo.locate(b).stored_len for b in seen)


def copied(dst: Repository, src_snaps: list[Snapshot]) -> list[Snapshot]:
    by_source = {s.copied_from: s for s in dst.list_snapshots()}
    return [by_source[s.id] for s in src_snaps if s.id in by_source]


@SHARED
def test_copy_keeps_deltas_against_copied_bases(
    repo: Repository, chained: list[Snapshot], tmp_path: Path, shared: bool
) -> None:
    dst = new_repo(tmp_path / "dst", repo, shared=shared)
    result = copy_snapshots(repo, dst, CopyOptions())
    assert result.deltas_sent > 0
    copies = copied(dst, chained)
    assert len(copies) == len(chained)
    for original, copy in zip(chained, copies, strict=True):
        assert read_dump(dst, copy) == read_dump(repo, original)
    assert Kind.DELTA in chunk_kinds(dst, copies[-1])
    for copy in copies:  # every chain the copy made is within the limit, and ends in DATA
        for c in dump_node(dst, copy).content:
            assert 0 <= (dst.delta_depth(c) or 0) <= DEPTH
    # As small as the source, not a full copy per night (the encoder may differ by bytes).
    assert data_bytes(dst, copies) < 1.2 * data_bytes(repo, chained)
    assert check(dst, CheckOptions(read_data=True, workers=1)).ok
    dst.close()


@SHARED
def test_copying_only_the_newest_night_brings_its_bases_and_prune_keeps_them(
    repo: Repository, chained: list[Snapshot], tmp_path: Path, shared: bool
) -> None:
    newest = chained[DEPTH]  # its chains are full
    assert max(repo.delta_depth(c) or 0 for c in dump_node(repo, newest).content) == DEPTH
    expected = read_dump(repo, newest)
    dst = new_repo(tmp_path / "dst", repo, shared=shared)
    copy_snapshots(repo, dst, CopyOptions(snapshots=(newest.id,)))
    (copy,) = dst.list_snapshots()
    assert Kind.DELTA in chunk_kinds(dst, copy)
    # The bases are in no copied snapshot's tree: prune must keep them all the same.
    prune(dst, PruneOptions())
    assert read_dump(dst, copy) == expected
    assert check(dst, CheckOptions(read_data=True, workers=1)).ok
    dst.close()


@pytest.mark.parametrize("version", [6, 5])
def test_aligned_deltas_are_kept_or_encoded_again_for_an_older_destination(
    repo: Repository, chained: list[Snapshot], tmp_path: Path, version: int
) -> None:
    """A format 5 destination cannot hold aligned deltas (its readers would call them
    malformed): copy encodes them again as patch-from there, and keeps them in format 6."""
    assert 2 in payload_versions(repo, chained)
    dst = new_repo(tmp_path / "dst", repo, shared=False, version=version)
    result = copy_snapshots(repo, dst, CopyOptions())
    assert result.deltas_sent > 0
    copies = copied(dst, chained)
    found = payload_versions(dst, copies)
    assert (2 in found) if version == 6 else found == {1}
    for original, copy in zip(chained, copies, strict=True):
        assert read_dump(dst, copy) == read_dump(repo, original)
    assert check(dst, CheckOptions(read_data=True, workers=1)).ok
    dst.close()


def test_copy_into_a_repository_without_deltas_stores_chunks_whole(
    repo: Repository, chained: list[Snapshot], tmp_path: Path
) -> None:
    dst = new_repo(tmp_path / "dst", repo, shared=False, version=2)
    result = copy_snapshots(repo, dst, CopyOptions())
    assert result.deltas_sent == 0
    for original, copy in zip(chained, copied(dst, chained), strict=True):
        assert chunk_kinds(dst, copy) == {Kind.DATA}
        assert read_dump(dst, copy) == read_dump(repo, original)
    assert check(dst, CheckOptions(read_data=True, workers=1)).ok
    dst.close()


def test_a_base_the_destination_holds_at_the_limit_gets_the_chunk_whole(
    repo: Repository, chained: list[Snapshot], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a shared secret the destination may already hold a base (same id) at the end
    of a chain of its own: its index decides, and at the limit the chunk goes whole."""
    dst = new_repo(tmp_path / "dst", repo, shared=True)
    copy_snapshots(repo, dst, CopyOptions(snapshots=(chained[0].id,)))  # the bases, indexed
    monkeypatch.setattr(dst, "delta_depth", lambda blob_id: DEPTH)
    result = copy_snapshots(repo, dst, CopyOptions(snapshots=(chained[1].id,)))
    assert result.deltas_sent == 0
    (night1,) = copied(dst, [chained[1]])
    assert chunk_kinds(dst, night1) == {Kind.DATA}
    assert read_dump(dst, night1) == read_dump(repo, chained[1])
    dst.close()


def test_a_damaged_base_in_the_source_stops_the_copy_naming_the_snapshot(
    repo: Repository, repo_path: str, chained: list[Snapshot], tmp_path: Path
) -> None:
    deep = chained[DEPTH]
    top = next(c for c in dump_node(repo, deep).content if repo.locate(c).kind == Kind.DELTA)
    bottom = delta.chain_of(repo.locate, top, repo.locate(top))[-1][1]
    flip_stored_byte(repo_path, bottom.pack, bottom.offset, bottom.stored_len)
    dst = new_repo(tmp_path / "dst", repo, shared=False)
    with pytest.raises(IntegrityError, match=f"snapshot {chained[0].short_id}"):
        copy_snapshots(repo, dst, CopyOptions())
    assert dst.list_snapshots() == []
    assert check(dst, CheckOptions(read_data=True, workers=1)).ok  # what it stored is sound
    dst.close()


def test_forgetting_the_night_that_holds_the_bases_then_pruning_keeps_every_copy_readable(
    repo: Repository, chained: list[Snapshot], tmp_path: Path
) -> None:
    expected = {s.id: read_dump(repo, s) for s in chained}
    dst = new_repo(tmp_path / "dst", repo, shared=False)
    copy_snapshots(repo, dst, CopyOptions())
    copies = copied(dst, chained)
    for copy in copies[:2]:
        dst.delete_snapshot(copy.id)
    prune(dst, PruneOptions())
    for original, copy in zip(chained[2:], copies[2:], strict=True):
        assert read_dump(dst, copy) == expected[original.id]
    assert check(dst, CheckOptions(read_data=True, workers=1)).ok
    dst.close()


@SHARED
def test_copy_keeps_tree_deltas_of_copied_base_trees(
    repo: Repository, tmp_path: Path, shared: bool
) -> None:
    """A large folder changed a little each night: its trees are TREE_DELTA blobs in the
    source and stay deltas of the previous night's copied tree in the destination."""
    from casbackup.archiver.restore import RestoreOptions, restore
    from tests.repo.test_tree_delta import contents, folder_nights, tree_of

    src, snaps, states = folder_nights(repo, tmp_path, DEPTH + 2)
    assert repo.locate(tree_of(repo, snaps[1], src / "big")).kind == Kind.TREE_DELTA
    dst = new_repo(tmp_path / "dst", repo, shared=shared)
    result = copy_snapshots(repo, dst, CopyOptions())
    copies = copied(dst, snaps)
    kinds = [dst.locate(tree_of(dst, c, src / "big")).kind for c in copies]
    assert kinds[0] == Kind.TREE and Kind.TREE_DELTA in kinds[1:]
    whole = dst.locate(tree_of(dst, copies[0], src / "big")).stored_len
    assert result.bytes_stored < whole * len(snaps)  # not a whole tree a night
    for i, copy in enumerate(copies):
        target = tmp_path / f"night-{i}"
        assert not restore(dst, copy, RestoreOptions(target=str(target))).errors
        assert contents(Path(str(target) + str(src)) / "big") == states[i]
    assert check(dst, CheckOptions(read_data=True, workers=1)).ok
    dst.close()
