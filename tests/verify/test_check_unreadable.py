"""A file the store cannot read (permission denied, I/O error) is not damage: `check` does
not call such an index file damaged nor advise 'repair index' (fixing the storage would
help, rebuilding would not), and `verify` stops with exit 25 instead of recording the
snapshot as FAILED (exit 28). Damage is still damage. As root chmod 000 stops nothing, so
the backend refuses the read here, as ``os.open`` would."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.repo.pack import pack_name
from casbackup.store.local import LocalBackend, _storage_error
from casbackup.testing.fixtures import PASSWORD, make_repo, run_cli
from casbackup.verify.check import CheckOptions, check


def _repo_with_backup(tmp_path):  # type: ignore[no-untyped-def]
    repo = make_repo(str(tmp_path / "repo"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_bytes(os.urandom(5000))
    run_backup(repo, BackupOptions(paths=(str(src),)))
    return repo


def test_an_unreadable_index_file_is_not_called_damaged(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    repo = _repo_with_backup(tmp_path)
    name = f"index/{repo.index_files()[0]}"
    real = LocalBackend._open_object

    def open_object(self: LocalBackend, wanted: str):  # type: ignore[no-untyped-def]
        if wanted == name:
            raise _storage_error(
                OSError(errno.EACCES, os.strerror(errno.EACCES)), f"reading {wanted}"
            )
        return real(self, wanted)

    monkeypatch.setattr(LocalBackend, "_open_object", open_object)
    report = check(repo, CheckOptions())
    lines = [e for e in report.errors if "index file" in e]
    assert len(lines) == 1, report.errors
    assert "permission denied" in lines[0] and name in lines[0]
    assert "damaged" not in lines[0] and "repair" not in lines[0], lines[0]
    repo.close()


def test_a_damaged_index_file_still_is(tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo = _repo_with_backup(tmp_path)
    fid = repo.index_files()[0]
    path = tmp_path / "repo" / "index" / fid
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    report = check(repo, CheckOptions())
    assert any("is damaged" in e and "repair index" in e for e in report.errors), report.errors
    repo.close()


# The CLI with one object refused as by a permission denied (shared with prune's tests).
from tests.maintenance.test_prune_unreadable import _PRELUDE  # noqa: E402


def test_verify_with_an_unreadable_tree_pack_exits_25_and_records_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The snapshot was not verified at all: no FAILED record (exit 28) for a permission."""
    repo = _repo_with_backup(tmp_path)
    snap = repo.list_snapshots()[-1]
    name = pack_name(repo.locate(snap.root).pack)
    repo.close()
    root = str(tmp_path / "repo")
    env = dict(os.environ, CASBACKUP_PASSWORD=PASSWORD, REFUSE=name)
    proc = subprocess.run(
        [sys.executable, "-c", _PRELUDE, "-r", root, "verify", snap.short_id,
         "--sandbox", str(tmp_path)],
        capture_output=True, env=env, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 25, (proc.returncode, proc.stderr)
    assert "permission denied" in proc.stderr and name in proc.stderr, proc.stderr
    assert not [p for p in os.listdir(tmp_path) if p.startswith("casbackup-verify")]
    listing = run_cli("--json", "snapshots", repo=root)
    assert [s["verification"] for s in json.loads(listing.out)] == [None], listing.out
