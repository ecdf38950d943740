"""A lock taken for stale while its owner still runs (a backup paused past STALE_AFTER by
SIGSTOP, a laptop asleep or a VM suspended; refreshes that failed; a clock behind) is
removed by the next exclusive command, which then prunes. Before, the owner went on and
committed index files and a snapshot naming packs that prune had just deleted: restic's
classic way to lose data. Now the owner notices the gap in its lock before it commits
anything (``Lock.confirm``), and an exclusive lock goes ahead only once a listing shows
no live lock, not even one renewed while it was removing the stale file."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from casbackup.errors import LockError, StorageError
from casbackup.maintenance.prune import execute_prune
from casbackup.maintenance.pruneplan import plan_prune
from casbackup.maintenance.unlock import remove_stale_locks
from casbackup.repo import lock as lockmod
from casbackup.repo.ids import Kind
from casbackup.repo.lock import LockInfo
from casbackup.repo.repository import Repository
from casbackup.testing.fixtures import make_repo, open_repo


def _files(path: Path, folder: str) -> set[str]:
    return {
        os.path.join(d, f) for d, _, fs in os.walk(path / folder) for f in fs if ".tmp" not in f
    }


def _looks_stale(monkeypatch: pytest.MonkeyPatch, names: set[str]) -> None:
    """Locks named in ``names`` look stale to everyone (their owner was paused)."""
    real = LockInfo.is_stale
    monkeypatch.setattr(
        LockInfo, "is_stale", lambda self, now=None: self.name in names or real(self, now)
    )


def _pass_over(path: Path, lock_name: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Another client takes an exclusive lock while ``lock_name`` looks stale, and
    releases it: the stale lock is removed."""
    _looks_stale(monkeypatch, {lock_name})
    other = open_repo(str(path))
    try:
        held = other.lock(exclusive=True, command="casbackup prune")
        held.release()
        return held.removed
    finally:
        other.close()


@pytest.fixture
def repo_path(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    make_repo(str(path)).close()
    return path


def test_a_backup_whose_lock_was_passed_over_commits_no_index_file(
    repo_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup = open_repo(str(repo_path))
    try:
        held = backup.lock(command="casbackup backup")
        backup.save_blob(Kind.DATA, os.urandom(5000))
        before = _files(repo_path, "index")
        assert len(_pass_over(repo_path, held.name or "", monkeypatch)) == 1
        with pytest.raises(LockError, match="removed by another client while it ran"):
            backup.flush()
        assert _files(repo_path, "index") == before  # nothing naming a pack was committed
        with pytest.raises(LockError):
            backup.confirm_locks()  # lost for good: a later commit is refused too
        held.release()
    finally:
        backup.close()


def test_a_lock_that_only_looked_stale_is_still_held(
    repo_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup = open_repo(str(repo_path))
    try:
        held = backup.lock(command="casbackup backup")
        _looks_stale(monkeypatch, {held.name or ""})  # paused, but nobody removed it
        first = held.name
        backup.save_blob(Kind.DATA, os.urandom(5000))
        backup.flush()  # confirmed and renewed
        assert held.name != first and held.lost is None
        assert sorted(os.listdir(repo_path / "locks")) == [(held.name or "").split("/")[1]]
        held.release()
    finally:
        backup.close()


def test_the_refresh_notices_a_lock_removed_under_it(
    repo_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lockmod, "REFRESH_EVERY", 0.05)
    backup = open_repo(str(repo_path))
    try:
        held = backup.lock(command="casbackup backup")
        admin = open_repo(str(repo_path))
        assert len(remove_stale_locks(admin, remove_all=True).removed) == 1
        admin.close()
        deadline = time.monotonic() + 10
        while held.lost is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert held.lost is not None
        # Its lock file is still renewed until it ends: others see a running process.
        first = held.name
        while held.name == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert held.name != first and len(os.listdir(repo_path / "locks")) == 1
        with pytest.raises(LockError):
            backup.confirm_locks()
        held.release()
        assert os.listdir(repo_path / "locks") == []
    finally:
        backup.close()


def test_an_exclusive_lock_sees_a_lock_renewed_while_it_removed_the_stale_one(
    repo_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup = open_repo(str(repo_path))
    prune = open_repo(str(repo_path))
    try:
        held = backup.lock(command="casbackup backup")
        stale = held.name or ""
        _looks_stale(monkeypatch, {stale})
        real_delete = prune.backend.delete

        def delete(name: str) -> None:
            if name == stale:
                held.confirm()  # the owner wakes up and renews between list and delete
            real_delete(name)

        monkeypatch.setattr(prune.backend, "delete", delete)
        with pytest.raises(LockError, match="repository is locked: shared lock"):
            prune.lock(exclusive=True, command="casbackup prune")
        held.confirm()  # the backup's lock was never passed over
        assert len(os.listdir(repo_path / "locks")) == 1
        held.release()
    finally:
        prune.close()
        backup.close()


def test_an_exclusive_lock_that_cannot_remove_a_stale_lock_does_not_go_ahead(
    repo_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backup = open_repo(str(repo_path))
    prune = open_repo(str(repo_path))
    try:
        held = backup.lock(command="casbackup backup")
        stale = held.name or ""
        _looks_stale(monkeypatch, {stale})
        real_delete = prune.backend.delete

        def delete(name: str) -> None:
            if name == stale:
                raise StorageError(f"{name}: permission denied")
            real_delete(name)

        monkeypatch.setattr(prune.backend, "delete", delete)
        with pytest.raises(LockError, match="could not remove the stale lock"):
            prune.lock(exclusive=True, command="casbackup prune")
        assert os.listdir(repo_path / "locks") == [stale.split("/")[1]]  # its own is gone
        held.confirm()
        held.release()
    finally:
        prune.close()
        backup.close()


def _unused_pack(path: Path) -> set[str]:
    repo = open_repo(str(path))
    try:
        repo.save_blob(Kind.DATA, os.urandom(5000))
        repo.flush()  # indexed, named by no snapshot: the next prune deletes it
    finally:
        repo.close()
    return _files(path, "data")


def test_a_prune_passed_over_while_paused_deletes_nothing(
    repo_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    packs = _unused_pack(repo_path)
    assert packs
    first: Repository = open_repo(str(repo_path))
    try:
        held = first.lock(exclusive=True, command="casbackup prune")
        plan = plan_prune(first)
        assert plan.delete
        # Paused past the stale limit: a second prune removes its lock and goes ahead;
        # a backup since may use what the first plan would delete.
        assert len(_pass_over(repo_path, held.name or "", monkeypatch)) == 1
        with pytest.raises(LockError):
            execute_prune(first, plan)
        assert _files(repo_path, "data") == packs
        held.release()
    finally:
        first.close()


def test_a_snapshot_written_after_its_lock_was_taken_is_withdrawn(
    repo_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pause falls between the last check and the snapshot's write: the snapshot is
    written, then found unprotected, and deleted again."""
    from casbackup.repo.snapshot import Snapshot

    backup = open_repo(str(repo_path))
    try:
        held = backup.lock(command="casbackup backup")
        tree = backup.save_tree([])
        snap = Snapshot(
            time="2026-01-01T00:00:00Z", start_ns=time.time_ns(), host="h", user="u",
            paths=("/x",), tree=tree.hex(),
        )  # fmt: skip
        real = backup.save_file_object

        def save(directory: str, kind: Kind, data: bytes) -> str:
            if directory == "snapshots":
                _pass_over(repo_path, held.name or "", monkeypatch)
            return real(directory, kind, data)

        monkeypatch.setattr(backup, "save_file_object", save)
        with pytest.raises(LockError):
            backup.save_snapshot(snap)
        assert os.listdir(repo_path / "snapshots") == []
        held.release()
    finally:
        backup.close()


def _one_snapshot(path: Path, tmp_path: Path) -> str:
    from casbackup.testing.fixtures import run_cli

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(50_000))
    res = run_cli("--json", "backup", str(src), repo=str(path))
    assert res.code == 0, res.err
    return str(json.loads(res.out.splitlines()[-1])["snapshot_id"])


def test_a_verify_passed_over_records_no_failure(
    repo_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A verify paused past the stale limit while a prune moved its snapshot's data: what
    it could not restore is the prune's doing, not the backup's. Before, a failed
    verification was recorded (and recover would skip the snapshot)."""
    from casbackup.verify.sandbox import VerifyOptions, run_verification

    sid = _one_snapshot(repo_path, tmp_path)
    repo = open_repo(str(repo_path))
    try:
        held = repo.lock(command="casbackup verify")
        snap = repo.load_snapshot(repo.snapshot_id_of(sid))
        _pass_over(repo_path, held.name or "", monkeypatch)
        for pack in _files(repo_path, "data"):  # what the prune moved away
            os.unlink(pack)
        with pytest.raises(LockError):
            run_verification(repo, snap, VerifyOptions(sandbox_dir=str(tmp_path / "sb")))
        assert not (repo_path / "verifications").exists() or not os.listdir(
            repo_path / "verifications"
        )
        held.release()
    finally:
        repo.close()


def test_a_repair_index_passed_over_writes_no_index(
    repo_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repair index paused past the stale limit: a prune since deleted packs its listing
    holds, and its new index would name them."""
    from casbackup.verify.repair import repair_index

    _one_snapshot(repo_path, tmp_path)
    repo = open_repo(str(repo_path))
    try:
        held = repo.lock(exclusive=True, command="casbackup repair index")
        before = _files(repo_path, "index")
        _pass_over(repo_path, held.name or "", monkeypatch)
        with pytest.raises(LockError):
            repair_index(repo)
        assert _files(repo_path, "index") == before
        held.release()
    finally:
        repo.close()


def test_a_repair_packs_passed_over_writes_no_index(
    repo_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As repair index: a repair packs whose lock was taken for stale replaces no index."""
    from casbackup.verify.repair_packs import repair_packs, resolve_packs

    sid = _one_snapshot(repo_path, tmp_path)
    repo = open_repo(str(repo_path))
    try:
        held = repo.lock(exclusive=True, command="casbackup repair packs")
        snap = repo.load_snapshot(repo.snapshot_id_of(sid))
        pack = repo.locate(snap.root).pack
        before = _files(repo_path, "index")
        _pass_over(repo_path, held.name or "", monkeypatch)
        with pytest.raises(LockError):
            repair_packs(repo, resolve_packs(repo, [pack]))
        assert _files(repo_path, "index") == before
        assert repo.backend.exists(f"data/{pack[:2]}/{pack}")
        held.release()
    finally:
        repo.close()
