"""A long-lived reader (the service's read handle, a browse) beside another client's prune.
The reader's index still named the packs the prune repacked and deleted, and it synced its
index only when new snapshots appeared: every tree or file it had not cached failed as
damage ('data/2e/... is missing from the repository', HTTP 500 in the service) until the
next backup or a restart. Now a read that finds a pack missing syncs the index once and
reads the blob where it is now; a pack still missing is reported as before."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from casbackup.errors import NotFound
from casbackup.repo import blobstore
from casbackup.repo.ids import Kind
from casbackup.repo.pack import pack_name
from casbackup.testing.fixtures import open_repo, run_cli


def _backup(repo: str, src: Path, *extra: str) -> str:
    res = run_cli("--json", "backup", str(src), *extra, repo=repo)
    assert res.code == 0, res.err
    return str(json.loads(res.out.splitlines()[-1])["snapshot_id"])


def test_a_reader_follows_blobs_another_client_repacked(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    assert run_cli("init", "--pack-size", "4", repo=repo).code == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept.bin").write_bytes(os.urandom(150_000))
    (src / "dropped.bin").write_bytes(os.urandom(150_000))
    first = _backup(repo, src)
    (src / "dropped.bin").unlink()
    second = _backup(repo, src, "--type", "full")

    reader = open_repo(repo)  # its own index cache (this process's cache folder)
    try:
        reader.sync_index()
        snap = reader.load_snapshot(reader.snapshot_id_of(second))
        files = {os.path.basename(os.fsdecode(path)): node for path, node in reader.walk(snap.root)}
        chunks = list(files["kept.bin"].content)
        packs_before = {reader.locate(c).pack for c in chunks}
        # Another client (its own cache folder) forgets the first and repacks the rest.
        res = run_cli("forget", first, "--prune", "--max-unused", "0", repo=repo,
                      env={"CASBACKUP_CACHE_DIR": str(tmp_path / "other-cache")})  # fmt: skip
        assert res.code == 0, res.err
        assert "repack" in res.out
        assert not all(reader.backend.exists(pack_name(p)) for p in packs_before)

        data = b"".join(reader.load_blob(c, Kind.DATA) for c in chunks)
        assert data == (src / "kept.bin").read_bytes()
    finally:
        reader.close()


def test_a_pack_really_missing_is_still_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = str(tmp_path / "repo")
    assert run_cli("init", repo=repo).code == 0
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(50_000))
    sid = _backup(repo, src)
    reader = open_repo(repo)
    try:
        snap = reader.load_snapshot(reader.snapshot_id_of(sid))
        os.unlink(tmp_path / "repo" / pack_name(reader.locate(snap.root).pack))
        monkeypatch.setattr(blobstore, "RESYNC_SECONDS", 0.0)
        with pytest.raises(NotFound):
            reader.load_tree(snap.root, cached=False)
    finally:
        reader.close()
