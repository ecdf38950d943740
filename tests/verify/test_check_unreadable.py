"""`check` does not call an index file damaged, nor advise 'repair index', when the store
merely cannot read it (permission denied, I/O error): rebuilding would not help, fixing the
storage would. Damage is still damage. (As root chmod 000 stops nothing, so the backend
refuses the read here, as ``os.open`` would.)"""

from __future__ import annotations

import errno
import os

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.store.local import LocalBackend, _storage_error
from casbackup.testing.fixtures import make_repo
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
