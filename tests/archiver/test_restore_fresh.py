"""What a restore leaves out in folders it made itself: the writers' check that a file's
name is free (``FileJob.fresh``) and the question whether the folder has a default ACL.
Neither may change what is restored or what is refused."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from casbackup.archiver import restore_files, restore_state, targetfs, writers
from casbackup.archiver.restore import RestoreOptions, restore
from casbackup.archiver.writers import FileJob
from tests.archiver.nasty import assert_same_tree
from tests.archiver.test_restore import backed_up, many_small_files, restored


def _jobs_seen(monkeypatch: pytest.MonkeyPatch) -> dict[bytes, bool]:
    """{file name: job.fresh} of every job the restore's writer threads get."""
    seen: dict[bytes, bool] = {}
    real = restore_files.write_batch

    def recording(dir_fds, items, *args, **kwargs):  # type: ignore[no-untyped-def]
        for _slot, name, job in items:
            seen[name] = job.fresh
        return real(dir_fds, items, *args, **kwargs)

    monkeypatch.setattr(restore_files, "write_batch", recording)
    return seen


def test_only_folders_the_restore_made_are_fresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    (src / "made").mkdir(parents=True)
    (src / "made" / "a.txt").write_bytes(b"a")
    (src / "kept").mkdir()
    (src / "kept" / "b.txt").write_bytes(b"b")
    (src / "c.txt").write_bytes(b"c")
    repo, snap = backed_up(tmp_path, src)
    out = tmp_path / "out"
    (restored(out, src) / "kept").mkdir(parents=True)
    seen = _jobs_seen(monkeypatch)
    result = restore(repo, snap, RestoreOptions(target=str(out), workers=1))
    assert result.errors == []
    assert seen == {b"a.txt": True, b"b.txt": False, b"c.txt": False}
    assert_same_tree(os.fsencode(src), os.fsencode(restored(out, src)))
    # A second restore over the first, with --overwrite: nothing is made, nothing fresh.
    seen.clear()
    result = restore(repo, snap, RestoreOptions(target=str(out), workers=1, overwrite=True))
    assert result.errors == [] and set(seen.values()) == {False}
    repo.close()


def test_a_name_taken_in_a_fresh_folder_is_still_never_replaced(tmp_path: Path) -> None:
    """Without the early check the file is written, then refused at publish (renameat2
    RENAME_NOREPLACE, or link): the entry there stays, the temporary file goes."""
    (tmp_path / "name").write_bytes(b"theirs")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        job = FileJob((), 3, b"", 0, 0, 0o644, 0, False, (), b".casbackup-restore-t", fresh=True)
        written = writers.write_file(fd, b"name", job, iter([b"new"]), lambda n: None)
    finally:
        os.close(fd)
    assert written.exists and written.error == "exists in the target"
    assert (tmp_path / "name").read_bytes() == b"theirs"
    assert os.listdir(tmp_path) == ["name"]


def test_default_acl_is_asked_only_where_there_can_be_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src"
    many_small_files(src, folders=4, per_folder=1)
    repo, snap = backed_up(tmp_path, src)
    asked: list[int] = []

    def has_default_acl(fd: int) -> bool:
        asked.append(fd)
        return False

    monkeypatch.setattr(restore_state, "has_default_acl", has_default_acl)
    restore(repo, snap, RestoreOptions(target=str(tmp_path / "a"), workers=1))
    assert len(asked) == 1  # the target itself; every folder below it was made in it
    # A target whose folders have a default ACL: each folder made in one is asked.
    asked.clear()
    monkeypatch.setattr(restore_state, "has_default_acl", lambda fd: asked.append(fd) or True)
    restore(repo, snap, RestoreOptions(target=str(tmp_path / "b"), workers=1))
    folders = sum(1 for _ in (restored(tmp_path / "b", src)).rglob("*") if _.is_dir())
    depth = len(src.parts) - 1  # the folders of its own path (less "/"), made in the target
    assert len(asked) == 1 + folders + depth
    repo.close()


def test_jobs_cross_to_the_writer_processes_as_tuples_and_back() -> None:
    job = FileJob(((b"i" * 32, "ab" * 32, 0, 10, 20),), 20, b"h" * 32, 1, 2, 0o600, 5, True,
                  ((b"user.k", b"v"),), b"t", False, (), True, True)  # fmt: skip
    back = writers._job(tuple(job))
    assert back == job and type(back) is FileJob and back.fresh is True
    with pytest.raises(ValueError):
        writers._job(tuple(job)[:-1])


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setfacl"), reason="root, setfacl")
def test_a_folder_swapped_in_after_the_mkdir_is_not_taken_for_the_one_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the restore's mkdir and its open by name, someone who can write to the
    target puts their own folder there, with a default ACL that grants them the files
    made in it. The restore must not take it for the empty folder without a default ACL
    it made: the inherited ACL goes (exact ACLs), as it does in any folder it did not
    make. Before, ``open_dir`` said "created" for whatever it opened, the default-ACL
    question was skipped and each restored file kept an ACL entry for the other user."""
    src = tmp_path / "src"
    (src / "made").mkdir(parents=True)
    (src / "made" / "a.txt").write_bytes(b"a")
    (src / "made" / "a.txt").chmod(0o640)
    repo, snap = backed_up(tmp_path, src)
    out = tmp_path / "out"
    real_mkdir = targetfs.os.mkdir

    def mkdir_then_swap(name, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        real_mkdir(name, mode, dir_fd=dir_fd)
        if name == b"made":
            os.rmdir(name, dir_fd=dir_fd)
            real_mkdir(name, 0o777, dir_fd=dir_fd)
            theirs = f"/proc/{os.getpid()}/fd/{dir_fd}/made"  # for setfacl too
            os.chown(theirs, 65534, 65534)
            subprocess.run(["setfacl", "-d", "-m", "u:65534:rwx,m::rwx", theirs], check=True)

    monkeypatch.setattr(targetfs.os, "mkdir", mkdir_then_swap)
    seen = _jobs_seen(monkeypatch)
    result = restore(repo, snap, RestoreOptions(target=str(out), workers=1))
    repo.close()
    assert result.errors == []
    assert seen == {b"a.txt": False}
    a = restored(out, src) / "made" / "a.txt"
    assert a.read_bytes() == b"a"
    assert "system.posix_acl_access" not in os.listxattr(a)
