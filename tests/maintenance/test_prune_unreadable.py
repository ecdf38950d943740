"""An object prune cannot read because of permissions is a storage error (exit 25) that
names the object, never "data failed authentication" (exit 22): found by a newcomer,
`chmod 000` on a tree pack made `prune --dry-run` report damage and advise `check`.

As root, chmod 000 stops nothing, so the refusal is made by the backend here: reading the
chosen object fails with EACCES inside ``LocalBackend._open_object``, where the real
``os.open`` would."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from casbackup.errors import IntegrityError, StorageError
from casbackup.maintenance.forget import execute_forget, plan_forget
from casbackup.maintenance.prune import plan_prune
from casbackup.maintenance.retention import RetentionPolicy
from casbackup.repo.pack import pack_name
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalBackend, _storage_error
from casbackup.testing.fixtures import PASSWORD, make_repo
from tests.maintenance.history import build_history


def _refuse(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    real = LocalBackend._open_object

    def open_object(self: LocalBackend, wanted: str):  # type: ignore[no-untyped-def]
        if wanted == name:
            denied = OSError(errno.EACCES, os.strerror(errno.EACCES))
            raise _storage_error(denied, f"reading {wanted}")
        return real(self, wanted)

    monkeypatch.setattr(LocalBackend, "_open_object", open_object)


@pytest.fixture
def repo(tmp_path) -> Repository:  # type: ignore[no-untyped-def]
    repo = make_repo(str(tmp_path / "repo"))
    build_history(repo, str(tmp_path), [3, 2, 1, 0])
    policy = RetentionPolicy(keep_last=1)
    plan = plan_forget(repo.list_snapshots(), lambda key: policy, datetime.now(UTC), tz=UTC)
    execute_forget(repo, plan)
    yield repo
    repo.close()


def _tree_pack(repo: Repository) -> str:
    return pack_name(repo.locate(repo.list_snapshots()[-1].root).pack)


def _assert_permission(exc: pytest.ExceptionInfo[StorageError], name: str) -> None:
    assert not isinstance(exc.value, IntegrityError)
    assert exc.value.exit_code == 25
    assert "permission denied" in str(exc.value) and name in str(exc.value), str(exc.value)


def test_an_unreadable_tree_pack_is_a_storage_error(repo, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    name = _tree_pack(repo)
    _refuse(monkeypatch, name)
    with pytest.raises(StorageError) as caught:
        plan_prune(repo)
    _assert_permission(caught, name)
    assert "deleted nothing" in str(caught.value)


def test_an_unreadable_snapshot_is_a_storage_error(repo, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    name = f"snapshots/{repo.snapshot_ids()[0]}"
    _refuse(monkeypatch, name)
    with pytest.raises(StorageError) as caught:
        plan_prune(repo)
    _assert_permission(caught, name)


def test_an_unreadable_index_file_is_a_storage_error(repo, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    name = f"index/{repo.index_files()[0]}"
    _refuse(monkeypatch, name)
    with pytest.raises(StorageError) as caught:
        plan_prune(repo)
    _assert_permission(caught, name)
    assert "repair" not in str(caught.value)  # repairing would not help: nothing is damaged


def test_damage_is_still_an_integrity_error(repo) -> None:  # type: ignore[no-untyped-def]
    name = _tree_pack(repo)
    path = os.path.join(repo.backend.root, *name.split("/"))  # type: ignore[attr-defined]
    with open(path, "r+b") as f:
        f.seek(40)
        byte = f.read(1)
        f.seek(40)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(IntegrityError):
        plan_prune(repo)


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


@pytest.mark.parametrize("args", [["prune", "--dry-run"], ["prune"]])
def test_cli_prune_says_permission_denied_and_exits_25(repo, args) -> None:  # type: ignore[no-untyped-def]
    name = _tree_pack(repo)
    root = repo.backend.root  # type: ignore[attr-defined]
    env = dict(os.environ, CASBACKUP_PASSWORD=PASSWORD, REFUSE=name)
    proc = subprocess.run(
        [sys.executable, "-c", _PRELUDE, "-r", root, *args],
        capture_output=True, env=env, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 25, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "permission denied" in lines[0] and name in lines[0], lines[0]
