"""repair index tells an index file it could not read (permission denied) from a damaged one."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import pytest

from casbackup.store.local import LocalBackend, _storage_error
from casbackup.testing.fixtures import PASSWORD, make_repo, open_repo, run_cli
from casbackup.verify.repair import repair_index


@pytest.fixture
def repo_path(tmp_path) -> str:  # type: ignore[no-untyped-def]
    path, src = str(tmp_path / "repo"), tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(2000))
    make_repo(path).close()
    assert run_cli("backup", str(src), repo=path).code == 0
    return path


def _index_file(path: str) -> str:
    repo = open_repo(path)
    try:
        (fid,) = repo.index_files()
        return str(fid)
    finally:
        repo.close()


def test_an_index_file_refused_by_the_store_is_unreadable_not_damaged(
    repo_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    fid = _index_file(repo_path)
    real = LocalBackend._open_object

    def open_object(self: LocalBackend, wanted: str):  # type: ignore[no-untyped-def]
        if wanted == f"index/{fid}":
            raise _storage_error(OSError(errno.EACCES, "Permission denied"), f"reading {wanted}")
        return real(self, wanted)

    monkeypatch.setattr(LocalBackend, "_open_object", open_object)
    repo = open_repo(repo_path)
    try:
        result = repair_index(repo)
    finally:
        repo.close()
    assert result.unreadable_index_files == [fid] and result.damaged_index_files == []
    assert result.packs_from_headers >= 1 and result.index_files_removed == 1


def test_a_damaged_index_file_is_still_damaged(repo_path) -> None:  # type: ignore[no-untyped-def]
    fid = _index_file(repo_path)
    name = os.path.join(repo_path, "index", fid)
    data = bytearray(open(name, "rb").read())
    data[40] ^= 0xFF
    with open(name, "wb") as f:
        f.write(data)
    repo = open_repo(repo_path)
    try:
        result = repair_index(repo)
    finally:
        repo.close()
    assert result.damaged_index_files == [fid] and result.unreadable_index_files == []


_PRELUDE = """
import errno, os
from casbackup.store import local
_real = local.LocalBackend._open_object
def _open_object(self, name):
    if name == os.environ["REFUSE"]:
        raise local._storage_error(OSError(errno.EACCES, "Permission denied"), f"reading {name}")
    return _real(self, name)
local.LocalBackend._open_object = _open_object
from casbackup.cli.main import main
main()
"""


def _repair(path: str, fid: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CASBACKUP_PASSWORD=PASSWORD, REFUSE=f"index/{fid}")
    return subprocess.run(
        [sys.executable, "-c", _PRELUDE, "-r", path, *args, "repair", "index"],
        capture_output=True, env=env, text=True, timeout=120,
    )  # fmt: skip


def test_cli_says_could_not_be_read(repo_path) -> None:  # type: ignore[no-untyped-def]
    fid = _index_file(repo_path)
    proc = _repair(repo_path, fid)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if fid[:12] in line]
    assert len(warnings) == 1 and "could not be read" in warnings[0], proc.stderr
    assert "damaged" not in proc.stderr


def test_cli_json_lists_it_apart_from_the_damaged_ones(repo_path) -> None:  # type: ignore[no-untyped-def]
    fid = _index_file(repo_path)
    proc = _repair(repo_path, fid, "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["unreadable_index_files"] == [fid] and doc["damaged_index_files"] == []
