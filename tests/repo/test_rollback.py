"""Names vs hashes and rollback detection (issue 12, kind 5)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import pytest

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.errors import RecoveryError
from casbackup.recovery.plan import RecoverOptions, choose_snapshot
from casbackup.repo.ids import Kind
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.testing.fixtures import open_repo, run_cli
from casbackup.verify.check import CheckOptions, check
from casbackup.verify.records import VerificationRecord, list_records, save_record
from casbackup.vfs.core import Vfs, snapshot_folder


def _backup(repo: Repository, source: str, app: str = "shop") -> Snapshot:
    with open(os.path.join(source, "f"), "wb") as f:
        f.write(os.urandom(50_000))
    snap = run_backup(repo, BackupOptions(paths=(source,), app=app)).snapshot
    assert snap is not None
    return snap


@pytest.fixture
def source(tmp_path) -> str:  # type: ignore[no-untyped-def]
    path = tmp_path / "src"
    path.mkdir()
    return str(path)


def _copy(repo_path: str, name: str, new_name: str) -> None:
    shutil.copyfile(os.path.join(repo_path, name), os.path.join(repo_path, new_name))


def _record(sid: str, ok: bool, time: str) -> VerificationRecord:
    return VerificationRecord(sid, "shop", time, "h", 1.0, ok, 1, 1)


def test_snapshot_copied_under_another_name_is_not_a_second_snapshot(
    repo: Repository, repo_path: str, source: str
) -> None:
    """The issue's example: a copy of a snapshot file under another name."""
    snap = _backup(repo, source)
    _copy(repo_path, f"snapshots/{snap.id}", "snapshots/" + "ab" * 32)
    warnings: list[str] = []
    assert [s.id for s in repo.list_snapshots(warnings=warnings)] == [snap.id]
    assert "does not match its name" in warnings[0]
    report = check(repo, CheckOptions())
    assert any("abababab" in e and "does not match its name" in e for e in report.errors)
    res = run_cli("snapshots", "--json", repo=repo_path)
    assert res.code == 0 and res.out.count(snap.id) == 1


@pytest.mark.parametrize("folder", ["index", "verifications", "checkstate"])
def test_other_hash_named_objects_are_checked_against_their_names(
    repo: Repository, repo_path: str, source: str, folder: str
) -> None:
    snap = _backup(repo, source)
    save_record(repo, _record(snap.id, True, "2026-01-01T00:00:00+00:00"))
    check(repo, CheckOptions(read_data=True, workers=1))  # writes a check state
    (name,) = sorted(os.listdir(os.path.join(repo_path, folder)))[:1]
    _copy(repo_path, f"{folder}/{name}", f"{folder}/{'cd' * 32}")
    with pytest.raises(Exception, match="does not match its name"):
        repo.get_encrypted(f"{folder}/{'cd' * 32}", Kind.INDEX)
    report = check(repo, CheckOptions(read_data=folder == "checkstate", workers=1))
    found = [m for m in report.errors + report.warnings if "does not match its name" in m]
    assert found and "cdcdcdcd" in found[0]
    if folder != "checkstate":  # a check state is only a cache of past work: a warning
        assert not report.ok


def test_forgotten_snapshot_that_comes_back_is_ignored_and_loud(
    repo: Repository, repo_path: str, source: str
) -> None:
    """The issue's example: a snapshot removed by forget comes back when its file is put back."""
    old = _backup(repo, source)
    new = _backup(repo, source)
    with open(os.path.join(repo_path, "snapshots", new.id), "rb") as f:
        saved = f.read()
    repo.delete_snapshot(new.id)  # what forget does
    with open(os.path.join(repo_path, "snapshots", new.id), "wb") as f:
        f.write(saved)
    assert [s.id for s in repo.list_snapshots(warnings=[])] == [old.id]
    assert repo.resolve_snapshot("latest", app="shop").id == old.id
    assert any("back in the repository" in a for a in repo.alerts)
    # The mount's view (vfs) leaves it out too, and says so once.
    said: list[str] = []
    with open_repo(repo_path) as fresh:
        vfs = Vfs(fresh, on_warning=said.append)
        folders = sorted(e.name for e in vfs.listdir("/shop"))
    assert folders == sorted(["latest", snapshot_folder(old)])
    assert any("back in the repository" in m for m in said)
    res = run_cli("snapshots", "--json", repo=repo_path)
    assert res.code == 0 and new.id not in res.out and "back in the repository" in res.err
    res = run_cli("check", repo=repo_path)
    assert "back in the repository" in res.err
    res = run_cli("--json", "check", repo=repo_path)
    assert "back in the repository" in json.loads(res.out.splitlines()[-1])["alerts"][0]


def test_forget_command_records_what_it_forgot(repo_path: str, source: str) -> None:
    for _ in range(2):
        with open(os.path.join(source, "f"), "wb") as f:
            f.write(os.urandom(1000))
        assert run_cli("backup", source, "--app", "shop", repo=repo_path).code == 0
    names = set(os.listdir(os.path.join(repo_path, "snapshots")))
    saved = {n: open(os.path.join(repo_path, "snapshots", n), "rb").read() for n in names}
    res = run_cli("forget", "--app", "shop", "--keep-last", "1", repo=repo_path)
    assert res.code == 0, res.err
    for name, data in saved.items():  # the storage is rolled back
        with open(os.path.join(repo_path, "snapshots", name), "wb") as f:
            f.write(data)
    res = run_cli("snapshots", "--json", repo=repo_path)
    assert "back in the repository" in res.err
    with open_repo(repo_path) as repo:
        assert len(repo.list_snapshots(warnings=[])) == 1


def test_snapshots_seen_and_gone_are_a_warning(
    repo: Repository, repo_path: str, source: str
) -> None:
    snap = _backup(repo, source)
    _backup(repo, source)
    repo.list_snapshots()
    os.unlink(os.path.join(repo_path, "snapshots", snap.id))  # not by this client
    with open_repo(repo_path) as again:
        again.list_snapshots()
        assert any("saw before is gone" in a for a in again.alerts)
    with open_repo(repo_path) as third:  # said once; the record follows the listing
        third.list_snapshots()
        assert not third.alerts


def test_deleted_newest_failed_record_does_not_make_recover_trust_an_older_one(
    repo: Repository, repo_path: str, source: str
) -> None:
    """The issue's example: deleting the newest (failed) verification record."""
    snap = _backup(repo, source)
    save_record(repo, _record(snap.id, True, "2026-01-01T00:00:00+00:00"))
    failed = save_record(repo, _record(snap.id, False, "2026-02-01T00:00:00+00:00"))
    options = RecoverOptions(app="shop", target="/nonexistent")
    with pytest.raises(RecoveryError):
        choose_snapshot(repo, options)
    os.unlink(os.path.join(repo_path, "verifications", failed.id))
    with open_repo(repo_path) as again:
        records = list_records(again)
        assert not records.latest_by_snapshot()[snap.id].ok
        assert any("newest verification record" in a for a in again.alerts)
        with pytest.raises(RecoveryError, match="allow-unverified"):
            choose_snapshot(again, options, records)
        chosen, _record_found, warnings = choose_snapshot(
            again, replace(options, allow_unverified=True), records
        )
        assert chosen.id == snap.id and warnings
        # A new verification clears it.
        save_record(again, _record(snap.id, True, "2026-03-01T00:00:00+00:00"))
        assert list_records(again).latest_by_snapshot()[snap.id].ok


def test_records_seen_by_this_client_only_when_it_saw_them(
    repo: Repository, repo_path: str, source: str
) -> None:
    """A client that never saw the failed record has nothing to compare with: no alert."""
    snap = _backup(repo, source)
    save_record(repo, _record(snap.id, True, "2026-01-01T00:00:00+00:00"))
    shutil.rmtree(repo.state.folder)
    with open_repo(repo_path) as fresh:
        assert list_records(fresh).latest_by_snapshot()[snap.id].ok
        assert not fresh.alerts


def test_check_reports_the_same_snapshot_stored_twice(
    repo: Repository, repo_path: str, source: str
) -> None:
    """The same payload re-sealed under another valid name (needs the key)."""
    snap = _backup(repo, source)
    copy_id = repo.save_file_object("snapshots", Kind.SNAPSHOT, snap.encode())
    assert copy_id != snap.id
    report = check(repo, CheckOptions())
    assert any("same backup" in e and snap.short_id in e for e in report.errors)
    res = run_cli("check", repo=repo_path)
    assert res.code == 29 and "same backup" in res.err


def test_prune_keeps_the_data_of_a_forgotten_snapshot_that_is_back(
    repo: Repository, repo_path: str, source: str
) -> None:
    """Deleting data cannot be undone: a snapshot file present names data prune keeps
    (the crash window between recording a forget and deleting the file is one way in)."""
    from casbackup.maintenance.usage import find_used_blobs
    from casbackup.reporter import NULL_REPORTER

    old = _backup(repo, source)
    _backup(repo, source)
    with open(os.path.join(repo_path, "snapshots", old.id), "rb") as f:
        saved = f.read()
    repo.delete_snapshot(old.id)
    _count, without = find_used_blobs(repo, NULL_REPORTER)
    with open(os.path.join(repo_path, "snapshots", old.id), "wb") as f:
        f.write(saved)
    count, used = find_used_blobs(repo, NULL_REPORTER)
    assert count == 2 and used > without


def _rolled_back_after_prune(repo_path: str, source: str, keep_new: bool = False) -> None:
    """Two backups, forget the first, prune (repacks, replaces the index); then the storage
    attacker puts the old index files back and deletes the new one (or, ``keep_new``,
    leaves it: the old ones then come back beside the file that superseded them)."""
    os.makedirs(os.path.join(source, "gone"))
    for i in range(40):  # in the first snapshot only: prune repacks or deletes their packs
        with open(os.path.join(source, "gone", f"f{i}"), "wb") as f:
            f.write(os.urandom(20_000))
    with open(os.path.join(source, "kept"), "wb") as f:
        f.write(os.urandom(300_000))
    assert run_cli("backup", source, repo=repo_path).code == 0
    moved = os.path.join(os.path.dirname(source), "gone-for-now")
    os.rename(os.path.join(source, "gone"), moved)
    assert run_cli("backup", source, repo=repo_path).code == 0
    index = os.path.join(repo_path, "index")
    old = {n: open(os.path.join(index, n), "rb").read() for n in os.listdir(index)}
    assert run_cli("forget", "--keep-last", "1", repo=repo_path).code == 0
    res = run_cli("prune", repo=repo_path)
    assert res.code == 0, res.err
    assert not set(os.listdir(index)) & set(old)  # prune replaced every index file
    for name in os.listdir(index) if not keep_new else ():
        os.unlink(os.path.join(index, name))
    for name, data in old.items():
        with open(os.path.join(index, name), "wb") as f:
            f.write(data)
    os.rename(moved, os.path.join(source, "gone"))  # the same files are backed up again


@pytest.mark.parametrize("client", ["same", "new"])
def test_rolled_back_index_never_makes_a_backup_skip_data(
    repo_path: str, source: str, client: str
) -> None:
    """A rolled-back index names packs prune deleted: a backup that trusted it stored
    nothing for those files, exited 0 and left a snapshot naming missing data."""
    _rolled_back_after_prune(repo_path, source)
    if client == "new":  # no index cache and no local record: the index is built afresh
        with open_repo(repo_path) as repo:
            state, cache = repo.state.folder, os.path.dirname(repo.cache.path)
        shutil.rmtree(state)
        shutil.rmtree(cache)
    res = run_cli("backup", source, repo=repo_path)
    assert res.code == 0, res.err
    assert "missing pack" in res.err and "rolled-back" in res.err, res.err
    res = run_cli("check", "--read-data", repo=repo_path)
    errors = [line for line in res.err.splitlines() if line.startswith("error: ")]
    assert res.code == 29 and errors[-1].startswith("error: the repository has"), res.err
    # The stale index is reported; every snapshot's data is there.
    assert all(" is missing: " in e and e.startswith("error: pack ") for e in errors[:-1]), res.err
    assert run_cli("repair", "index", repo=repo_path).code == 0
    res = run_cli("check", "--read-data", repo=repo_path)
    assert res.code == 0, res.err
    res = run_cli("restore", "latest", "--target", source + "-restored", repo=repo_path)
    assert res.code == 0, res.err


def test_old_index_files_put_back_beside_their_replacement_stay_superseded(
    repo_path: str, source: str
) -> None:
    _rolled_back_after_prune(repo_path, source, keep_new=True)
    res = run_cli("backup", source, repo=repo_path)
    assert res.code == 0 and "missing pack" not in res.err, res.err
    res = run_cli("check", "--read-data", repo=repo_path)
    assert res.code == 0, res.err
