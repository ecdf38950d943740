"""``repair packs``: a damaged pack's intact blobs are kept, its damaged ones leave the index,
and the next backup stores them again, which makes every snapshot that needs them whole.

Found on a real repository: after one flipped byte in a data pack, every later backup, a
``--type full`` one included, deduplicated against the damaged copy, so the newest snapshot
was as damaged as the old ones and nothing could ever heal them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from casbackup.errors import StorageError
from casbackup.repo.ids import Kind
from casbackup.repo.pack import pack_name
from casbackup.store.local import LocalBackend
from casbackup.testing.fixtures import flip_stored_byte, make_repo, open_repo, run_cli
from casbackup.verify.repair_packs import repair_packs, resolve_packs


@pytest.fixture
def site(tmp_path: Path) -> tuple[str, Path]:
    """A repository with two snapshots of ``src`` (big.bin, small.txt, sub/other.bin)."""
    repo, src = str(tmp_path / "repo"), tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "big.bin").write_bytes(os.urandom(300_000))
    (src / "small.txt").write_text("hello\n")
    (src / "sub" / "other.bin").write_bytes(os.urandom(100_000))
    make_repo(repo).close()
    assert run_cli("backup", str(src), repo=repo).code == 0
    (src / "small.txt").write_text("hello again\n")
    assert run_cli("backup", str(src), repo=repo).code == 0
    return repo, src


def _damage(repo_path: str, src: Path, name: str, *, tree: bool = False) -> str:
    """Flip a byte of the first chunk of ``name`` (or of its folder's tree) in the newest
    snapshot; returns the damaged pack's id."""
    repo = open_repo(repo_path)
    try:
        snap = repo.load_snapshot(repo.snapshot_ids()[-1])
        node = repo.find_node(snap.root, str(src / name))
        assert node is not None
        blob = node.subtree if tree else node.content[0]
        loc = repo.locate(blob)
        assert loc.kind == (Kind.TREE if tree else Kind.DATA)
        flip_stored_byte(repo_path, loc.pack, loc.offset, loc.stored_len, 0x40)
        return str(loc.pack)
    finally:
        repo.close()


def _check(repo: str, *extra: str) -> dict:  # type: ignore[type-arg]
    out = run_cli("--json", "check", "--read-data", *extra, repo=repo)
    return json.loads(out.out.strip().splitlines()[-1])


def test_damage_spreads_to_new_backups_until_repaired_then_heals_every_snapshot(
    site: tuple[str, Path], tmp_path: Path
) -> None:
    repo, src = site
    pack = _damage(repo, src, "big.bin")
    # Without repair, even a full backup names the damaged copy again (the fault).
    assert run_cli("backup", str(src), "--type", "full", repo=repo).code == 0
    damaged = _check(repo)
    assert not damaged["ok"] and pack in damaged["damaged_packs"]
    assert len(damaged["affected"]) == 3  # both old snapshots and the new full one
    assert all(paths == [str(src / "big.bin")] for paths in damaged["affected"].values())
    out = run_cli("check", "--read-data", repo=repo)
    assert f"casbackup repair packs {pack[:12]}" in out.err  # the way out is named

    out = run_cli("repair", "packs", pack[:12], repo=repo)
    assert out.code == 0, out.err
    assert f"pack {pack[:12]}: " in out.out and "1 damaged blob dropped" in out.out
    assert not (Path(repo) / pack_name(pack)).exists()
    missing = _check(repo)  # the blob is now absent: named, in every snapshot
    assert not missing["ok"] and missing["damaged_packs"] == []
    assert len(missing["affected"]) == 3

    assert run_cli("backup", str(src), repo=repo).code == 0  # an ordinary incremental one
    healed = _check(repo)
    assert healed["ok"], healed
    first = json.loads(run_cli("--json", "snapshots", repo=repo).out)[0]["id"]
    target = tmp_path / "restored"
    out = run_cli("restore", first, "--target", str(target), repo=repo)
    assert out.code == 0, out.err
    assert (target / str(src / "big.bin").lstrip("/")).read_bytes() == (
        src / "big.bin"
    ).read_bytes()


def test_a_damaged_tree_heals_the_same_way(site: tuple[str, Path]) -> None:
    repo, src = site
    pack = _damage(repo, src, "sub", tree=True)
    damaged = _check(repo)
    # a subtree both snapshots share: each names it, not only the first one walked
    assert (
        sorted(map(sorted, damaged["affected"].values()))
        == [[f"{src}/sub (folder unreadable)"]] * 2
    )
    assert run_cli("repair", "packs", pack, repo=repo).code == 0
    assert run_cli("backup", str(src), repo=repo).code == 0
    assert _check(repo)["ok"]


def test_a_missing_pack_leaves_the_index_and_heals(site: tuple[str, Path]) -> None:
    repo, src = site
    pack = _damage(repo, src, "big.bin")
    os.unlink(Path(repo) / pack_name(pack))
    out = run_cli("repair", "packs", pack[:8], repo=repo)
    assert out.code == 0, out.err
    assert f"pack {pack[:12]}: missing," in out.out
    assert run_cli("backup", str(src), repo=repo).code == 0
    # Every file came back but the first version of small.txt, which no source holds any
    # more (the pack held every chunk of the first backup): check names it, and only it.
    left = _check(repo)
    first = json.loads(run_cli("--json", "snapshots", repo=repo).out)[0]["id"]
    assert left["affected"] == {first: [str(src / "small.txt")]}, left


def test_dry_run_changes_nothing(site: tuple[str, Path]) -> None:
    repo, src = site
    pack = _damage(repo, src, "big.bin")

    def listing() -> list[tuple[str, int]]:
        return sorted(
            (str(p.relative_to(repo)), p.stat().st_size)
            for p in Path(repo).rglob("*")
            if p.is_file()
        )

    before = listing()
    out = run_cli("repair", "packs", pack, "--dry-run", repo=repo)
    assert out.code == 0 and "1 damaged blob dropped" in out.out and "nothing changed" in out.out
    assert listing() == before


@pytest.mark.parametrize(
    "name,why",
    [("zz12", "is not a pack id"), ("12", "is not a pack id"), ("0000000000ff", "no pack")],
)
def test_bad_pack_names_are_usage_errors(site: tuple[str, Path], name: str, why: str) -> None:
    out = run_cli("repair", "packs", name, repo=site[0])
    assert out.code == 2 and why in out.err and "Traceback" not in out.err


def test_an_ambiguous_prefix_is_refused(site: tuple[str, Path]) -> None:
    repo = site[0]
    for tail in ("0" * 58, "1" * 58):  # two stray pack-named files sharing 6 digits
        path = Path(repo) / "data" / "ab" / f"abcdef{tail}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")
    out = run_cli("repair", "packs", "abcd", repo=repo)
    assert out.code == 2 and "ambiguous (2 packs)" in out.err and "Traceback" not in out.err


def test_a_pack_the_store_cannot_read_changes_nothing(
    site: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo_path, src = site
    pack = _damage(repo_path, src, "big.bin")
    real_get = LocalBackend.get

    def get(self: LocalBackend, name: str, *a: object, **kw: object) -> bytes:
        if name == pack_name(pack):
            raise StorageError(f"reading {name}: Input/output error")
        return real_get(self, name, *a, **kw)  # type: ignore[arg-type]

    before = sorted(p.name for p in Path(repo_path).rglob("*") if p.is_file())
    monkeypatch.setattr(LocalBackend, "get", get)
    repo = open_repo(repo_path)
    try:
        with pytest.raises(StorageError):
            repair_packs(repo, resolve_packs(repo, [pack]))
    finally:
        repo.close()
    assert sorted(p.name for p in Path(repo_path).rglob("*") if p.is_file()) == before


def test_interrupted_after_the_new_index_then_run_again(
    site: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed between writing the new index and deleting what it replaces: the old index
    files are superseded, the damaged pack still there; running again finishes the job."""
    repo_path, src = site
    pack = _damage(repo_path, src, "big.bin")
    real_delete = LocalBackend.delete

    def delete(self: LocalBackend, name: str) -> None:
        raise KeyboardInterrupt  # the first deletion: index files, after the new one

    monkeypatch.setattr(LocalBackend, "delete", delete)
    repo = open_repo(repo_path)
    try:
        with pytest.raises(KeyboardInterrupt):
            repair_packs(repo, resolve_packs(repo, [pack]))
    finally:
        repo.close()
    monkeypatch.setattr(LocalBackend, "delete", real_delete)
    assert (Path(repo_path) / pack_name(pack)).exists()
    # Readers already see the repaired index: the damaged blob is absent, the rest is whole.
    assert not _check(repo_path)["damaged_packs"]
    out = run_cli("repair", "packs", pack, repo=repo_path)
    assert out.code == 0, out.err
    assert not (Path(repo_path) / pack_name(pack)).exists()
    assert run_cli("backup", str(src), repo=repo_path).code == 0
    assert _check(repo_path)["ok"]


def test_check_names_a_missing_chunk_under_every_snapshot(site: tuple[str, Path]) -> None:
    """A chunk the index no longer names (its pack deleted, the index rebuilt), in a folder
    both snapshots share: check named the file under the first snapshot only, because the
    naming walk skipped subtrees it had seen when no pack was damaged."""
    repo, src = site
    pack = _damage(repo, src, "sub/other.bin")
    os.unlink(Path(repo) / pack_name(pack))
    assert run_cli("repair", "index", repo=repo).code == 0
    left = _check(repo)
    assert left["damaged_packs"] == [] and len(left["affected"]) == 2, left
    assert all(str(src / "sub" / "other.bin") in p for p in left["affected"].values())
