"""``repair snapshots``: snapshots naming data that is gone for good are rewritten without
it, so that check passes and prune runs again; everything still readable is kept.

Found on a real repository: after ``repair packs`` dropped a damaged chunk and a damaged
tree whose sources had changed since, no backup could bring them back, check failed on
every run and prune refused for good ("prune needs every tree"): the repository could
only grow.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from casbackup.repo.ids import Kind
from casbackup.repo.snapshot import Summary
from casbackup.testing.fixtures import flip_stored_byte, make_repo, open_repo, run_cli
from casbackup.verify.repair_snapshots import REPAIRED_TAG, repair_snapshots
from tests.verify import apps


def _flip(repo_path: str, blob: bytes) -> str:
    repo = open_repo(repo_path)
    try:
        loc = repo.locate(blob)
    finally:
        repo.close()
    flip_stored_byte(repo_path, loc.pack, loc.offset, loc.stored_len, 0x40)
    return str(loc.pack)


def _node(repo_path: str, path: Path):  # type: ignore[no-untyped-def]
    repo = open_repo(repo_path)
    try:
        snap = repo.load_snapshot(repo.snapshot_ids()[0])
        node = repo.find_node(snap.root, str(path))
        assert node is not None
        return node
    finally:
        repo.close()


def _summary(repo_path: str, snapshot_id: str) -> Summary:
    repo = open_repo(repo_path)
    try:
        return repo.load_snapshot(snapshot_id).summary
    finally:
        repo.close()


def _snapshots(repo: str) -> list[dict]:  # type: ignore[type-arg]
    return json.loads(run_cli("--json", "snapshots", repo=repo).out)  # type: ignore[no-any-return]


@pytest.fixture
def lost(tmp_path: Path) -> tuple[str, Path]:
    """One snapshot of ``src`` whose file gone.bin and folder old/ are damaged, then
    dropped by ``repair packs``, while the sources no longer hold them."""
    repo, src = str(tmp_path / "repo"), tmp_path / "src"
    (src / "old" / "deep").mkdir(parents=True)
    (src / "keep").mkdir()
    (src / "keep" / "a.bin").write_bytes(os.urandom(200_000))
    (src / "gone.bin").write_bytes(os.urandom(50_000))
    (src / "old" / "deep" / "x.txt").write_text("x\n")
    make_repo(repo).close()
    assert run_cli("backup", str(src), repo=repo).code == 0
    packs = {_flip(repo, _node(repo, src / "gone.bin").content[0])}
    packs.add(_flip(repo, _node(repo, src / "old").subtree))
    out = run_cli("repair", "packs", *sorted(packs), repo=repo)
    assert out.code == 0, out.err
    (src / "gone.bin").unlink()
    shutil.rmtree(src / "old")
    return repo, src


def test_lost_data_blocks_check_and_prune_until_the_snapshots_are_repaired(
    lost: tuple[str, Path], tmp_path: Path
) -> None:
    repo, src = lost
    assert run_cli("backup", str(src), repo=repo).code == 0  # heals nothing: sources changed
    check = run_cli("check", repo=repo)
    assert check.code == 29
    assert "casbackup repair snapshots" in check.err  # the way out is named
    prune = run_cli("prune", repo=repo)
    assert prune.code != 0 and "prune needs every tree" in prune.err
    old_id = _snapshots(repo)[0]["id"]
    old_summary = _summary(repo, old_id)

    out = run_cli("repair", "snapshots", repo=repo)
    assert out.code == 0, out.err
    assert f"snapshot {old_id[:8]} (" in out.out and "2 entries left out -> new snapshot" in out.out
    assert f"{src}/gone.bin" in out.out and f"{src}/old (folder unreadable: kept empty)" in out.out
    assert "1 of 2 snapshots repaired" in out.out
    snaps = _snapshots(repo)
    assert old_id not in [s["id"] for s in snaps] and len(snaps) == 2
    fixed = snaps[0]
    assert REPAIRED_TAG in fixed["tags"]
    # Its totals say what it holds now: gone.bin is taken off; old/'s unreadable content
    # was never known, so it takes nothing off; the run's own counts stay.
    summary = _summary(repo, fixed["id"])
    assert summary.files_total == old_summary.files_total - 1
    assert summary.bytes_total == old_summary.bytes_total - 50_000
    assert summary.files_new == old_summary.files_new and summary.dirs == old_summary.dirs
    assert run_cli("check", "--read-data", repo=repo).code == 0
    assert run_cli("prune", repo=repo).code == 0
    target = tmp_path / "restored"
    assert run_cli("restore", fixed["id"], "--target", str(target), repo=repo).code == 0
    root = target / str(src).lstrip("/")
    assert (root / "keep" / "a.bin").read_bytes() == (src / "keep" / "a.bin").read_bytes()
    assert (root / "old").is_dir() and not any((root / "old").iterdir())
    assert not (root / "gone.bin").exists()


def test_dry_run_changes_nothing(lost: tuple[str, Path]) -> None:
    repo, _ = lost
    before = sorted(str(p) for p in Path(repo).rglob("*") if p.is_file())
    out = run_cli("repair", "snapshots", "--dry-run", repo=repo)
    assert out.code == 0 and "1 of 1 snapshot would be repaired (dry run" in out.out
    assert sorted(str(p) for p in Path(repo).rglob("*") if p.is_file()) == before


def test_nothing_to_repair_writes_nothing(tmp_path: Path) -> None:
    repo, src = str(tmp_path / "repo"), tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a\n")
    make_repo(repo).close()
    assert run_cli("backup", str(src), repo=repo).code == 0
    before = sorted(str(p) for p in Path(repo).rglob("*") if p.is_file())
    out = run_cli("repair", "snapshots", repo=repo)
    assert out.code == 0 and "0 of 1 snapshot repaired" in out.out
    assert sorted(str(p) for p in Path(repo).rglob("*") if p.is_file()) == before


def test_refused_while_an_index_names_a_pack_that_is_gone(tmp_path: Path) -> None:
    """A pack missing from the store (or from an incomplete listing) would make its blobs
    look lost: the command refuses until 'repair packs' has been told they are."""
    repo, src = str(tmp_path / "repo"), tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(50_000))
    make_repo(repo).close()
    assert run_cli("backup", str(src), repo=repo).code == 0
    pack = next(p for p in (Path(repo) / "data").rglob("*") if p.is_file())
    pack.unlink()
    before = sorted(str(p) for p in Path(repo).rglob("*") if p.is_file())
    out = run_cli("repair", "snapshots", repo=repo)
    assert out.code != 0 and "changed nothing" in out.err and "Traceback" not in out.err
    assert sorted(str(p) for p in Path(repo).rglob("*") if p.is_file()) == before


def test_interrupted_before_the_old_snapshot_is_deleted(
    lost: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_path, _ = lost
    from casbackup.repo.snapshotstore import SnapshotStore

    def interrupted(self: SnapshotStore, fid: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(SnapshotStore, "delete_snapshot", interrupted)
    repo = open_repo(repo_path)
    try:
        with pytest.raises(KeyboardInterrupt):
            repair_snapshots(repo)
    finally:
        repo.close()
    monkeypatch.undo()
    assert len(_snapshots(repo_path)) == 2  # the old one and its repaired copy
    out = run_cli("repair", "snapshots", repo=repo_path)
    assert out.code == 0, out.err
    snaps = _snapshots(repo_path)
    assert len(snaps) == 1 and REPAIRED_TAG in snaps[0]["tags"]  # not written twice
    assert run_cli("check", repo=repo_path).code == 0


def test_a_lost_dump_takes_its_database_record_with_it(tmp_path: Path) -> None:
    repo_path = str(tmp_path / "repo")
    app, spec = apps.make_app(tmp_path)
    repo = make_repo(repo_path)
    try:
        snap = apps.backup(repo, app, [spec])
        record = snap.databases[0]
        node = repo.find_node(snap.root, record.path)
        assert node is not None
        loc = repo.locate(node.content[0])
        assert loc.kind == Kind.DATA
    finally:
        repo.close()
    flip_stored_byte(repo_path, loc.pack, loc.offset, loc.stored_len, 0x40)
    assert run_cli("repair", "packs", loc.pack, repo=repo_path).code == 0
    out = run_cli("repair", "snapshots", repo=repo_path)
    assert out.code == 0, out.err
    assert record.path in out.out
    (fixed,) = _snapshots(repo_path)
    repo = open_repo(repo_path)
    try:
        repaired = repo.load_snapshot(fixed["id"])
        assert repaired.databases == ()
        # the dump is counted by its record, not in the file walk's totals
        assert repaired.summary == snap.summary
    finally:
        repo.close()
    assert run_cli("check", repo=repo_path).code == 0


def test_a_repaired_tagged_snapshot_is_not_vouched_for_by_its_old_verification(
    tmp_path: Path,
) -> None:
    """Found on a real repository: a verified snapshot pinned with `tag --add keep` lost a
    file's chunk; `repair snapshots` wrote it again without the file, and `snapshots` still
    said 'Verified ok' (the repaired record kept the tag change's `original`, which names
    the verification records), so recover would restore it as the latest verified
    snapshot. An untagged repaired snapshot has no verification; a tagged one now neither."""
    repo, src = str(tmp_path / "repo"), tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(50_000))
    (src / "b.txt").write_text("b\n")
    make_repo(repo).close()
    assert run_cli("backup", str(src), repo=repo).code == 0
    first = _snapshots(repo)[0]["id"]
    assert run_cli("verify", first, repo=repo).code == 0
    assert run_cli("tag", "--add", "keep", first, repo=repo).code == 0
    assert _snapshots(repo)[0]["verification"]["ok"] is True  # the tag change keeps it
    pack = _flip(repo, _node(repo, src / "a.bin").content[0])
    assert run_cli("repair", "packs", pack, repo=repo).code == 0
    res = run_cli("repair", "snapshots", repo=repo)
    assert res.code == 0, res.err
    (snap,) = _snapshots(repo)
    assert snap["tags"] == ["keep", REPAIRED_TAG] and snap["summary"]["files_total"] == 1
    assert snap["verification"] is None and snap.get("original") is None
