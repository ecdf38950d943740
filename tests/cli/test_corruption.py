"""Damage the repository on disk; ``check`` must find it and name it, restores must say so.

Every scenario: a flipped byte, a truncated pack, a deleted pack, a damaged index file,
a deleted LMDB cache. Where the data still exists (in the source), the documented
repair path (``repair index``, then a new backup) must leave a repository that checks clean.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from casbackup.repo.ids import Kind
from casbackup.repo.pack import pack_name
from casbackup.testing.fixtures import open_repo, run_cli
from tests.cli.conftest import init_repo, no_traceback

FILES = {"alpha.bin": 4 << 20, "beta.bin": 4 << 20, "gamma.bin": 4 << 20}


@pytest.fixture
def setup(tmp_path: Path) -> tuple[str, Path, str]:
    """(repository, source folder, snapshot id) with three multi-pack files backed up."""
    src = tmp_path / "src"
    src.mkdir()
    for name, size in FILES.items():
        (src / name).write_bytes(os.urandom(size))
    (src / "small.txt").write_text("small\n")
    repo = init_repo(str(tmp_path / "repo"))
    # One reader thread: files are stored one after another, so most packs hold one file.
    res = run_cli("-q", "backup", str(src), "--workers", "1", repo=repo)
    assert res.code == 0, res.err
    return repo, src, res.out.strip()


def data_pack_of(repo: str, src: Path, name: str) -> tuple[str, int]:
    """A pack holding only data chunks of ``src/name``, and the offset of one of them."""
    with open_repo(repo) as r:
        snap = r.resolve_snapshot("latest")
        node = r.find_node(snap.root, str(src / name))
        chunks = set(node.content)
        owners: dict[str, set[bytes]] = {}
        for fid in r.index_files():
            for pack, entries in r.load_index_file(fid).packs.items():
                owners.setdefault(pack, set()).update(bytes(b) for b, _ in entries)
        pack = next(p for p, blobs in sorted(owners.items()) if blobs <= chunks)
        first = next(iter(sorted(owners[pack])))
        loc = r.locate(first)
        assert loc.kind == Kind.DATA
        return pack, loc.offset + loc.stored_len // 2


def pack_path(repo: str, pack: str) -> str:
    return os.path.join(repo, pack_name(pack))


def chunks_in(repo: str, src: Path, name: str) -> set[str]:
    with open_repo(repo) as r:
        node = r.find_node(r.resolve_snapshot("latest").root, str(src / name))
        return {r.locate(c).pack for c in node.content}


def restore(repo: str, ref: str, target: Path):  # type: ignore[no-untyped-def]
    res = run_cli("restore", ref, "--target", str(target), repo=repo)
    no_traceback(res)
    return res


def test_flipped_byte_is_found_by_read_data_and_named(setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, src, snap = setup
    pack, offset = data_pack_of(repo, src, "alpha.bin")
    assert pack not in chunks_in(repo, src, "beta.bin")
    with open(pack_path(repo, pack), "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))

    res = run_cli("check", "--read-data", repo=repo)
    no_traceback(res)
    assert res.code == 29, res.err
    assert f"pack {pack[:12]}" in res.err
    assert f"snapshot {snap[:8]}: 1 damaged file or folder" in res.err
    assert f"  {src}/alpha.bin" in res.err
    assert "beta.bin" not in res.err
    assert res.err.strip().endswith("problems (see above)")

    # Files elsewhere restore byte for byte; the damaged one fails with a clear error.
    ok = restore(repo, f"{snap}:{src}/beta.bin", tmp_path / "beta")
    assert ok.code == 0, ok.err
    assert (tmp_path / "beta" / "beta.bin").read_bytes() == (src / "beta.bin").read_bytes()
    bad = restore(repo, f"{snap}:{src}/alpha.bin", tmp_path / "alpha")
    assert bad.code == 26
    assert "alpha.bin" in bad.err and f"pack {pack[:12]}" in bad.err
    (line,) = bad.err.strip().splitlines()  # one entry failed: one line with its path
    assert line.startswith("error: alpha.bin: blob ") and "is damaged" in line
    assert not (tmp_path / "alpha" / "alpha.bin").exists()  # nothing partial under its name
    # A whole-folder restore gets everything else right and still fails loudly.
    whole = restore(repo, f"{snap}:{src}", tmp_path / "whole")
    assert whole.code == 26
    for name in ("beta.bin", "gamma.bin", "small.txt"):
        assert (tmp_path / "whole" / name).read_bytes() == (src / name).read_bytes()
    dump = run_cli("dump", f"{snap}:{src}/alpha.bin", repo=repo)
    assert dump.code == 22 and dump.err.startswith("error: ") and "Traceback" not in dump.err


def test_truncated_pack_is_found_without_read_data_and_repaired(setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, src, snap = setup
    pack, _ = data_pack_of(repo, src, "beta.bin")
    path = pack_path(repo, pack)
    os.truncate(path, os.path.getsize(path) // 2)
    res = run_cli("check", repo=repo)
    no_traceback(res)
    assert res.code == 29
    assert f"pack {pack[:12]} has an unreadable header" in res.err
    assert f"  {src}/beta.bin" in res.err and "alpha.bin" not in res.err
    # The pack's chunks are gone for good, but the source still has them: drop the pack
    # from the index, back up again, and the old snapshot is whole again (same chunk ids).
    res = run_cli("repair", "index", "--read-all-packs", repo=repo)
    assert res.code == 0 and "cannot be indexed" in res.err
    assert run_cli("backup", str(src), "--type", "full", repo=repo).code == 0
    check = run_cli("check", "--read-data", repo=repo)
    assert check.code == 0, check.err
    ok = restore(repo, f"{snap}:{src}/beta.bin", tmp_path / "beta")
    assert ok.code == 0
    assert (tmp_path / "beta" / "beta.bin").read_bytes() == (src / "beta.bin").read_bytes()


def test_deleted_pack_is_found_without_read_data_and_repaired(setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, src, snap = setup
    pack, _ = data_pack_of(repo, src, "gamma.bin")
    os.unlink(pack_path(repo, pack))
    res = run_cli("check", repo=repo)
    no_traceback(res)
    assert res.code == 29
    assert f"pack {pack[:12]} is missing" in res.err
    assert f"  {src}/gamma.bin" in res.err and "beta.bin" not in res.err
    bad = restore(repo, f"{snap}:{src}/gamma.bin", tmp_path / "gamma")
    assert bad.code != 0 and "error: " in bad.err
    res = run_cli("repair", "index", repo=repo)
    assert res.code == 0, res.err
    assert run_cli("backup", str(src), repo=repo).code == 0
    assert run_cli("check", "--read-data", repo=repo).code == 0
    ok = restore(repo, f"{snap}:{src}/gamma.bin", tmp_path / "gamma2")
    assert ok.code == 0, ok.err
    assert (tmp_path / "gamma2" / "gamma.bin").read_bytes() == (src / "gamma.bin").read_bytes()


def test_damaged_index_file_is_reported_and_repaired(setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, src, snap = setup
    index_dir = Path(repo) / "index"
    # A backup may write several index files (one every few packs): damage one of them.
    victim = sorted(index_dir.iterdir())[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    shutil.rmtree(os.environ["CASBACKUP_CACHE_DIR"])  # else the cache hides the damage
    res = run_cli("check", repo=repo)
    no_traceback(res)
    assert res.code == 29
    assert f"index file {victim.name[:12]} is damaged" in res.err
    assert "repair index" in res.err
    res = run_cli("repair", "index", repo=repo)
    assert res.code == 0, res.err
    assert "damaged and is replaced" in res.err
    assert not victim.exists()
    res = run_cli("check", "--read-data", repo=repo)
    assert res.code == 0, res.err
    ok = restore(repo, snap, tmp_path / "all")
    assert ok.code == 0, ok.err
    for name in FILES:
        restored = tmp_path / "all" / str(src).lstrip("/") / name
        assert restored.read_bytes() == (src / name).read_bytes()


def test_deleted_cache_is_rebuilt_transparently(setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, src, snap = setup
    cache = Path(os.environ["CASBACKUP_CACHE_DIR"])
    assert any(cache.rglob("*.mdb"))
    shutil.rmtree(cache)
    ok = restore(repo, f"{snap}:{src}", tmp_path / "out")
    assert ok.code == 0 and ok.err == "", ok.err
    assert (tmp_path / "out" / "alpha.bin").read_bytes() == (src / "alpha.bin").read_bytes()
    assert any(cache.rglob("*.mdb"))  # rebuilt
    shutil.rmtree(cache)
    res = run_cli("check", repo=repo)
    assert res.code == 0 and res.err == "", res.err
    # An incremental backup after losing the cache still recognises every chunk.
    shutil.rmtree(cache)
    res = run_cli("--json", "backup", str(src), repo=repo)
    assert res.code == 0, res.err
    summary = json.loads(res.out.splitlines()[-1])
    assert summary["files_unchanged"] == len(FILES) + 1
    assert summary["bytes_added"] < 4096  # only the folder listings can differ
