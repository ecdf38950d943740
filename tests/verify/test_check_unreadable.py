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
from casbackup.testing.fixtures import PASSWORD, make_repo, open_repo, run_cli
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


def _check_refusing(
    root: str, name: str, *args: str, json_mode: bool = False
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CASBACKUP_PASSWORD=PASSWORD, REFUSE=name)
    front = ["--json"] if json_mode else []
    return subprocess.run([sys.executable, "-c", _PRELUDE, "-r", root, *front, "check", *args],
                          capture_output=True, env=env, text=True, timeout=120)  # fmt: skip


def test_check_with_only_storage_errors_exits_25(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An unreadable index file, snapshot, tree pack or data pack (with and without --read-data):
    each is reported, and the exit is the storage code 25, not damage (29)."""
    repo = _repo_with_backup(tmp_path)
    snap = repo.list_snapshots()[-1]
    tree = pack_name(repo.locate(snap.root).pack)
    data = pack_name(repo.locate(repo.find_node(snap.root, str(tmp_path / "src" / "a")).content[0]).pack)  # fmt: skip
    index = f"index/{repo.index_files()[0]}"
    snapshot = f"snapshots/{snap.id}"
    repo.close()
    root = str(tmp_path / "repo")
    for name, args in [(index, ()), (snapshot, ()), (tree, ()), (data, ()), (data, ("--read-data",)),
                       (tree, ("--read-data",))]:  # fmt: skip
        proc = _check_refusing(root, name, *args)
        assert proc.returncode == 25, (name, args, proc.returncode, proc.stderr)
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: the repository could not be fully read:"), last
        assert "permission denied" in proc.stderr and name in proc.stderr, proc.stderr
        assert "damaged file" not in proc.stderr, proc.stderr  # not read is not damaged
    proc = _check_refusing(root, tree, json_mode=True)
    assert proc.returncode == 25, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not doc["ok"] and doc["storage_errors"] == len(doc["errors"]) == 2, doc
    assert json.loads(proc.stderr.strip().splitlines()[-1])["kind"] == "storage_error"


def test_check_with_damage_besides_storage_errors_exits_29(tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo = _repo_with_backup(tmp_path)
    tree = pack_name(repo.locate(repo.list_snapshots()[-1].root).pack)
    repo.close()
    root = tmp_path / "repo"
    (root / "planted").write_bytes(b"not an object")  # damage: no object of the format
    proc = _check_refusing(str(root), tree)
    assert proc.returncode == 29, (proc.returncode, proc.stderr)
    assert "permission denied" in proc.stderr and "planted" in proc.stderr, proc.stderr
    reopened = open_repo(str(root))
    report = check(reopened, CheckOptions())
    reopened.close()
    assert report.damaged and report.storage_errors == 0, report
