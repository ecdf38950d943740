"""Restored files created unnamed (O_TMPFILE) and linked to their name once verified, and
the owner and mode a new file already has not set again (writers.py).

The guarantee kept: nothing is ever under a file's real name but the whole, verified
file. What changes: a restore killed outright (its writers and the restoring process
together, so nobody is left to clean up) leaves no temporary file behind either.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from casbackup.archiver import targetfs, unnamed, writers
from casbackup.archiver.restore import restore
from casbackup.archiver.restore_files import RestoreOptions
from casbackup.archiver.writers import FileJob
from casbackup.testing.fixtures import open_repo
from tests.archiver.nasty import assert_same_tree
from tests.archiver.test_restore import backed_up, restored, temp_files

needs_unnamed = pytest.mark.skipif(not hasattr(os, "O_TMPFILE"), reason="no O_TMPFILE here")
AT_EMPTY_PATH, AT_SYMLINK_FOLLOW = 0x1000, 0x400  # linkat's flags (Linux)

# Run in a process group of its own: restores the snapshot, with every writer killing the
# whole group (as an OOM kill or a power cut would) halfway through writing its 4th file.
_KILLED_MID_FILE = textwrap.dedent("""
    import os, pickle, signal, sys
    from casbackup.archiver import writers
    from casbackup.archiver.restore import restore
    from casbackup.archiver.restore_files import RestoreOptions
    from casbackup.testing.fixtures import open_repo
    real = writers._pwrite_all
    files = []
    def pwrite_then_die(fd, data, offset):
        if offset == 0:
            files.append(fd)
        if len(files) == 4 and len(data) > 1:
            real(fd, data[: len(data) // 2], offset)
            os.killpg(0, signal.SIGKILL)
        real(fd, data, offset)
    writers._pwrite_all = pwrite_then_die
    with open(sys.argv[2], "rb") as f:
        snap = pickle.load(f)
    restore(open_repo(sys.argv[1]), snap,
            RestoreOptions(target=sys.argv[3], workers=2, overwrite=sys.argv[4:] == ["overwrite"]))
""")


def _killed_restore(
    tmp_path: Path, *, folders: int, files: int, overwrite: bool = False
) -> tuple[Path, Any, Path]:
    """A tree of ``folders`` x ``files`` random files backed up, then restored by
    ``_KILLED_MID_FILE`` (killed outright mid-file) into ``tmp_path/out``: (source, snapshot,
    target)."""
    src = tmp_path / "src"
    for d in range(folders):
        (src / f"d{d}").mkdir(parents=True)
        for i in range(files):
            (src / f"d{d}" / f"f{i:02d}").write_bytes(os.urandom(3000 + 97 * i))
    repo, snap = backed_up(tmp_path, src)
    (tmp_path / "snap").write_bytes(pickle.dumps(snap))
    repo.close()
    out = tmp_path / "out"
    argv = [sys.executable, "-c", _KILLED_MID_FILE, str(tmp_path / "repo"), str(tmp_path / "snap"),
            str(out), *(["overwrite"] if overwrite else [])]  # fmt: skip
    proc = subprocess.run(argv, start_new_session=True, cwd=os.getcwd(), capture_output=True,
                          timeout=100)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    return src, snap, out


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}


@needs_unnamed
@pytest.mark.timeout(120)
def test_a_restore_killed_mid_file_leaves_only_whole_files_and_no_temporary_ones(
    tmp_path: Path,
) -> None:
    """SIGKILL to the restoring process and its writers while files are half written: every
    name in the target holds its whole file, no temporary file is left (before: the half
    written files stayed under ``.casbackup-restore-*`` names, nobody left to remove them),
    and a second restore with --overwrite completes the tree."""
    src, snap, out = _killed_restore(tmp_path, folders=4, files=40)
    assert temp_files(out) == []
    there = _files(restored(out, src))
    assert len(there) < 160  # killed before the end
    for rel, path in there.items():
        assert path.read_bytes() == (src / rel).read_bytes(), rel
    with open_repo(str(tmp_path / "repo")) as again:
        result = restore(again, snap, RestoreOptions(target=str(out), overwrite=True))
    assert result.errors == []
    assert_same_tree(os.fsencode(src), os.fsencode(restored(out, src)))


def _job(mode: int = 0o644, uid: int | None = None, gid: int | None = None) -> FileJob:
    uid = os.geteuid() if uid is None else uid
    gid = os.getegid() if gid is None else gid
    return FileJob(
        (), 3, b"", uid, gid, mode, 10**18, True, (), b".casbackup-restore-t", fresh=True
    )


def _write(folder: Path, job: FileJob) -> writers.Written:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return writers.write_file(fd, b"name", job, iter([b"new"]), lambda n: None)
    finally:
        os.close(fd)


def _count(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls: list[int] = []
    real = getattr(os, name)

    def counted(*args: object) -> None:
        calls.append(1)
        real(*args)

    monkeypatch.setattr(writers.os, name, counted)
    return calls


def test_an_owner_and_mode_the_new_file_has_are_not_set_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restoring user's own file with a mode the umask leaves whole: no chown, no chmod
    (two system calls and two inode updates a file); the file is exactly as recorded."""
    os.umask(old := os.umask(0o022))
    chowns, chmods = _count(monkeypatch, "fchown"), _count(monkeypatch, "fchmod")
    written = _write(tmp_path, _job(0o644))
    assert written.error is None and written.warnings == ()
    st = os.stat(tmp_path / "name")
    assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_mtime_ns == 10**18
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())
    if not unnamed._link_flags.get(os.stat(tmp_path).st_dev):  # a temporary name: made 0600
        assert chmods == [1]
    else:
        assert chmods == []
    assert chowns == []
    os.umask(old)


@pytest.mark.parametrize("mode", [0o666, 0o4755, 0o2750, 0o1777, 0o000])
def test_a_mode_the_new_file_lacks_is_still_set(tmp_path: Path, mode: int) -> None:
    """Modes the umask would cut, and setuid/setgid/sticky bits a new file never has."""
    old = os.umask(0o022)
    try:
        written = _write(tmp_path, _job(mode))
    finally:
        os.umask(old)
    assert written.error is None and written.warnings == ()
    assert stat.S_IMODE(os.stat(tmp_path / "name").st_mode) == mode


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as another group")
def test_the_group_a_setgid_folder_gives_is_replaced_by_the_recorded_one(tmp_path: Path) -> None:
    """A new file in a setgid folder takes the folder's group, not the restoring user's:
    the recorded group is still set, and a setgid bit the file had survives the chown."""
    folder = tmp_path / "sg"
    folder.mkdir()
    os.chown(folder, 0, 4321)
    folder.chmod(0o2777)
    written = _write(folder, _job(0o2755, uid=0, gid=0))
    assert written.error is None and written.warnings == ()
    st = os.stat(folder / "name")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o2755)


@needs_unnamed
@pytest.mark.parametrize("refused", [[AT_EMPTY_PATH], [AT_EMPTY_PATH, AT_SYMLINK_FOLLOW]])
def test_each_way_of_linking_and_temporary_names_when_none_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: list[int]
) -> None:
    """Without CAP_DAC_READ_SEARCH, /proc/self/fd; without that too, temporary names.
    Either way the file is restored, the probe leaves nothing, and a taken name is refused."""
    real = unnamed._LINKAT

    def linkat(fd: int, path: bytes, dir_fd: int, name: bytes, flags: int) -> int:
        if flags in refused:
            ctypes_set_errno(errno.ENOENT)
            return -1
        return real(fd, path, dir_fd, name, flags)  # type: ignore[misc]

    monkeypatch.setattr(unnamed, "_LINKAT", linkat)
    monkeypatch.setattr(unnamed, "_link_flags", {})
    renames = _count(monkeypatch, "rename")
    assert _write(tmp_path, _job()).error is None
    flag = unnamed._link_flags[os.stat(tmp_path).st_dev]
    assert flag == (0 if len(refused) == 2 else AT_SYMLINK_FOLLOW)
    assert (tmp_path / "name").read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["name"]
    written = _write(tmp_path, _job())
    assert written.exists and os.listdir(tmp_path) == ["name"]
    assert renames == []  # renameat2 through ctypes, else link: never a replacing rename


@pytest.fixture
def other_file_system(tmp_path: Path) -> Iterator[Path]:
    """A folder on another file system than ``tmp_path`` (tmpfs /dev/shm)."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second file system (/dev/shm) here")
    folder = Path(tempfile.mkdtemp(dir=shm))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _without_unnamed_files_on(monkeypatch: pytest.MonkeyPatch, device: int) -> None:
    """open(O_TMPFILE) in a folder of ``device`` fails as on vfat or NFS (EOPNOTSUPP)."""
    real = os.open

    def fake_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE and dir_fd is not None:
            if os.fstat(dir_fd).st_dev == device:
                raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))
        return real(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", fake_open)


@needs_unnamed
def test_a_target_spanning_file_systems_uses_temporary_names_where_needed(
    tmp_path: Path, other_file_system: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore target may hold a mount point of a file system without O_TMPFILE (a
    recovery onto / with /boot on vfat): each file system is probed on its own, and files
    there are written under temporary names, not refused."""
    other = os.stat(other_file_system).st_dev
    monkeypatch.setattr(unnamed, "_link_flags", {})
    _without_unnamed_files_on(monkeypatch, other)
    for folder in (tmp_path, other_file_system):
        written = _write(folder, _job())
        assert written.error is None, (folder, written.error)
        assert (folder / "name").read_bytes() == b"new"
        assert os.listdir(folder) == ["name"]
    assert unnamed._link_flags[os.stat(tmp_path).st_dev] != 0
    assert unnamed._link_flags[other] == 0


@needs_unnamed
def test_a_folder_that_refuses_unnamed_files_after_the_probe_gets_a_temporary_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe said yes for this device, but this folder refuses O_TMPFILE (a layer the
    device number does not tell apart): that file is written under a temporary name."""
    device = os.stat(tmp_path).st_dev
    monkeypatch.setattr(unnamed, "_link_flags", {device: AT_SYMLINK_FOLLOW})
    _without_unnamed_files_on(monkeypatch, device)
    written = _write(tmp_path, _job())
    assert written.error is None, written.error
    assert (tmp_path / "name").read_bytes() == b"new" and os.listdir(tmp_path) == ["name"]


def ctypes_set_errno(value: int) -> None:
    ctypes.set_errno(value)


def test_a_snapshot_restores_whole_with_owners_and_modes(tmp_path: Path) -> None:
    """Files of many modes restored through the writer processes: each as recorded."""
    src = tmp_path / "src"
    src.mkdir()
    modes = [0o644, 0o600, 0o755, 0o666, 0o4755, 0o640, 0o444, 0o700]
    for i, mode in enumerate(modes):
        path = src / f"f{i}"
        path.write_bytes(b"%d" % i * 100)
        path.chmod(mode)
    repo, snap = backed_up(tmp_path, src)
    out = tmp_path / "out"
    result = restore(repo, snap, RestoreOptions(target=str(out), workers=2))
    assert result.errors == [] and result.warnings == []
    assert_same_tree(os.fsencode(src), os.fsencode(restored(out, src)))
    repo.close()


@pytest.mark.timeout(120)
def test_temporary_files_of_a_restore_killed_outright_are_removed_by_the_next(
    tmp_path: Path,
) -> None:
    """--overwrite writes each file under a temporary name (a rename replaces an entry in
    one step): killed outright, the restore leaves its half-written temporary files, and
    before, the resume (a second restore, complete and without errors) left them in the
    target for good. A temporary name of a live process, or that is not a regular file,
    or not quite a restore's, stays."""
    src, snap, out = _killed_restore(tmp_path, folders=3, files=30, overwrite=True)
    left = temp_files(out)
    assert left  # what the kill left: the half-written files, under temporary names
    folder = Path(left[0]).parent
    ours = (targetfs.temp_prefix() + b"999999").decode()  # this process's own restore
    kept = [ours, ".casbackup-restore-1-2", ".casbackup-restore-1-0123abcd-2",  # live processes
            ".casbackup-restore-notes", ".casbackup-restore-4x-1"]  # fmt: skip
    for name in kept:
        (folder / name).write_bytes(b"not ours to remove")
    (folder / ".casbackup-restore-999999999-7").mkdir()  # not a file a restore makes
    with open_repo(str(tmp_path / "repo")) as again:
        result = restore(again, snap, RestoreOptions(target=str(out), overwrite=True))
    assert result.errors == []
    assert sorted(os.path.basename(p) for p in temp_files(out)) == sorted(kept)
    assert (folder / ".casbackup-restore-999999999-7").is_dir()
    as_restored = folder.stat()  # its times, before the test takes its own names out again
    for name in kept:
        (folder / name).unlink()
    (folder / ".casbackup-restore-999999999-7").rmdir()
    os.utime(folder, ns=(as_restored.st_atime_ns, as_restored.st_mtime_ns))
    assert_same_tree(os.fsencode(src), os.fsencode(restored(out, src)))


def test_the_sweeper_knows_every_temporary_name_a_restore_writes() -> None:
    """remove_stale_temps matches what restore_files.py names its temporary files."""
    for n in (0, 7, 123_456):
        name = (targetfs.temp_prefix() + b"%d" % n).decode()
        match = targetfs._TEMP_NAME.match(name)
        assert match is not None and int(match.group(1)) == os.getpid()
        assert match.group(2) == targetfs._process_token()


@needs_unnamed
@pytest.mark.timeout(120)
def test_leftovers_of_an_earlier_process_with_this_pid_are_removed_not_collided_with(
    tmp_path: Path,
) -> None:
    """A restore killed outright, run again by a process that got the same pid (a
    container's entrypoint, a rescue system booted again after a power cut): before, the
    sweeper took the leftovers for this restore's own and kept them for good, and every
    file whose temporary name was one of them failed with 'a temporary file of this
    restore exists already'. Leftovers of this pid under another token (or under the names
    of versions before the token) are a dead restore's."""
    src, snap, out = _killed_restore(tmp_path, folders=3, files=30, overwrite=True)
    left = temp_files(out)
    assert left
    me = os.getpid()
    for folder in {Path(p).parent for p in left}:
        for n in range(40):  # the counter of the next restore starts at 0
            for name in (f".casbackup-restore-{me}-{n}", f".casbackup-restore-{me}-89abcdef-{n}"):
                (folder / name).write_bytes(b"left by an earlier process with this pid")
    with open_repo(str(tmp_path / "repo")) as again:
        result = restore(again, snap, RestoreOptions(target=str(out), overwrite=True))
    assert result.errors == []
    assert temp_files(out) == []
    assert_same_tree(os.fsencode(src), os.fsencode(restored(out, src)))
