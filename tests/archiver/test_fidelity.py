"""What the backup records beyond contents: extended attributes, ACLs, capabilities, times
outside 64-bit nanoseconds, mount points, pseudo-files, and folders of any depth."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from casbackup.archiver.backup import Backup, BackupOptions, BackupResult, run_backup
from casbackup.maintenance.diff import diff_snapshots
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.tree import Node, NodeKind

ACL = b"system.posix_acl_access"
CAP = b"security.capability"
AFTER_2262_NS = 10_413_792_000 * 10**9 + 123_456_789  # 2300-01-01T00:00:00.123456789Z
BEFORE_1970_NS = -315_619_200 * 10**9 + 987_654_321  # 1960-01-01T00:00:00.987654321Z


def backup(repo: Repository, *paths: Path | str, **kw: object) -> BackupResult:
    return run_backup(repo, BackupOptions(paths=tuple(str(p) for p in paths), **kw))  # type: ignore[arg-type]


def node_at(repo: Repository, snap: Snapshot | None, path: Path | str) -> Node:
    assert snap is not None
    node = repo.find_node(snap.root, str(path))
    assert node is not None
    return node


def _tool(*argv: str) -> None:
    if shutil.which(argv[0]) is None:
        why = f"{argv[0]} is not installed (make sysdeps installs attr and acl)"
        if os.environ.get("CI") == "true":  # make test installs them: missing is a failure
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    subprocess.run(argv, check=True, capture_output=True)


def _user_xattrs_supported(path: Path) -> None:
    try:
        os.setxattr(path, "user.probe", b"1")
        os.removexattr(path, "user.probe")
    except OSError as exc:
        pytest.skip(f"{path}'s file system keeps no user xattrs: {exc.strerror}")


@pytest.fixture
def attributed(tmp_path: Path) -> Path:
    """A file, a folder and a symlink with attributes, an ACL and a capability."""
    src = tmp_path / "src"
    (src / "folder").mkdir(parents=True)
    _user_xattrs_supported(src)
    f = src / "f"
    f.write_bytes(b"data")
    os.setxattr(f, "user.test", b"1")  # setfattr -n user.test -v 1 f
    os.setxattr(f, "user.big", bytes(range(256)) * 12)  # 3,072 bytes
    os.setxattr(src / "folder", "user.folder", b"on a folder")
    acl = src / "acl"
    acl.write_bytes(b"acl")
    _tool("setfacl", "-m", "u:nobody:r", str(acl))
    if os.geteuid() == 0:
        cap = src / "cap"
        cap.write_bytes(b"cap")
        _tool("setcap", "cap_net_raw+ep", str(cap))
    os.symlink("f", src / "link")
    return src


def test_xattrs_acls_and_capabilities_are_recorded(repo, attributed: Path) -> None:  # type: ignore[no-untyped-def]
    result = backup(repo, attributed, type="full")
    assert result.warnings == []
    snap = result.snapshot
    assert snap is not None and snap.xattrs is True
    f = dict(node_at(repo, snap, attributed / "f").xattrs)
    assert f[b"user.test"] == b"1" and f[b"user.big"] == bytes(range(256)) * 12
    assert dict(node_at(repo, snap, attributed / "folder").xattrs) == {
        b"user.folder": b"on a folder"
    }
    acl = dict(node_at(repo, snap, attributed / "acl").xattrs)
    assert acl[ACL] == os.getxattr(attributed / "acl", ACL.decode())
    if os.geteuid() == 0:
        cap = dict(node_at(repo, snap, attributed / "cap").xattrs)
        assert cap[CAP] == os.getxattr(attributed / "cap", CAP.decode())
    # Sorted by name, so the same attributes always make the same tree.
    xattrs = node_at(repo, snap, attributed / "f").xattrs
    assert list(xattrs) == sorted(xattrs)


def test_no_xattrs_records_none(repo, attributed: Path) -> None:  # type: ignore[no-untyped-def]
    snap = backup(repo, attributed, type="full", xattrs=False).snapshot
    assert snap is not None and snap.xattrs is False
    assert node_at(repo, snap, attributed / "f").xattrs == ()
    assert node_at(repo, snap, attributed / "folder").xattrs == ()


def test_an_unreadable_attribute_is_a_warning_naming_file_and_attribute(  # type: ignore[no-untyped-def]
    repo, attributed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.getxattr

    def refuse(path, name, *a, **kw):  # type: ignore[no-untyped-def]
        if name == "user.test":
            raise OSError(errno.EACCES, "Permission denied")
        return real(path, name, *a, **kw)

    monkeypatch.setattr(os, "getxattr", refuse)
    result = backup(repo, attributed, type="full")
    assert result.warnings == [
        f"{attributed / 'f'}: extended attribute user.test: Permission denied"
    ]
    # The rest of that file's attributes, and the file itself, are stored.
    node = node_at(repo, result.snapshot, attributed / "f")
    assert dict(node.xattrs) == {b"user.big": bytes(range(256)) * 12}
    assert node.content_hash


def test_a_changed_attribute_is_seen_by_an_incremental(  # type: ignore[no-untyped-def]
    repo, attributed: Path, clock
) -> None:
    # Deep enough that the readers' subtree comparison answers for the folder.
    deep = attributed / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "g").write_bytes(b"g")
    first = backup(repo, attributed, type="full").snapshot
    os.setxattr(attributed / "f", "user.test", b"2")  # changes ctime, not mtime or size
    os.setxattr(deep / "g", "user.new", b"x")
    second = backup(repo, attributed, type="incremental").snapshot
    assert dict(node_at(repo, second, attributed / "f").xattrs)[b"user.test"] == b"2"
    assert dict(node_at(repo, second, deep / "g").xattrs) == {b"user.new": b"x"}
    assert second is not None and second.summary.files_changed == 0  # contents were reused
    # diff reports attribute-only changes as metadata changes.
    _, changes = diff_snapshots(repo, first.root, second.root, str(attributed))  # type: ignore[union-attr]
    got = {(c.code, c.path.decode()) for c in changes}
    assert ("U", str(attributed / "f")) in got and ("U", str(deep / "g")) in got


def test_an_attribute_unreadable_once_is_read_again_by_the_next_backup(  # type: ignore[no-untyped-def]
    repo, attributed: Path, clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attribute that could not be read (an I/O error, a denial since lifted) left its
    entry recorded without it: exit 3 once, then every incremental kept that entry as the
    parent recorded it, exit 0, and the attribute was never stored nor warned about again.
    An entry the parent could not record whole is recorded again (its contents reused)."""
    deep = attributed / "a" / "b" / "c"  # deep enough for the readers' subtree comparison
    deep.mkdir(parents=True)
    (deep / "g").write_bytes(b"g")
    os.setxattr(deep / "g", "user.deep", b"d")
    os.setxattr(deep, "user.dir", b"on c")
    os.symlink("g", deep / "to-g")
    real = os.getxattr
    failing = {"user.test", "user.deep", "user.dir"}

    def flaky(path, name, *a, **kw):  # type: ignore[no-untyped-def]
        if name in failing:
            raise OSError(errno.EIO, "Input/output error")
        return real(path, name, *a, **kw)

    monkeypatch.setattr(os, "getxattr", flaky)
    first = backup(repo, attributed, type="full")
    assert len(first.warnings) == 3
    failing.clear()  # the fault is gone; the files are as they were
    second = backup(repo, attributed, type="incremental")
    assert second.warnings == []
    snap = second.snapshot
    assert dict(node_at(repo, snap, attributed / "f").xattrs)[b"user.test"] == b"1"
    assert dict(node_at(repo, snap, deep / "g").xattrs) == {b"user.deep": b"d"}
    assert dict(node_at(repo, snap, deep).xattrs) == {b"user.dir": b"on c"}
    assert snap is not None and snap.summary.files_changed == 0  # contents were reused
    # Recorded whole now: the next one keeps them as they are.
    third = backup(repo, attributed, type="incremental").snapshot
    # (the source's tree: the folders above it change as other tests make theirs)
    assert node_at(repo, third, attributed).subtree == node_at(repo, snap, attributed).subtree


def test_a_parent_made_by_another_user_lends_contents_not_attributes(  # type: ignore[no-untyped-def]
    repo, attributed: Path, clock, reads, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service runs as its own user (examples/casbackup-serve.service), which the
    kernel shows no trusted.* attributes; a backup run as root afterwards kept every
    unchanged file's node as the service recorded it, so those attributes were never
    stored, without a word. Nodes a parent of another user recorded are recorded again."""
    import getpass

    if os.geteuid() != 0:
        pytest.skip("trusted.* attributes need root")
    os.setxattr(attributed / "f", "trusted.t", b"root only")
    real_list = os.listxattr

    def as_the_service(path, *a, **kw):  # type: ignore[no-untyped-def]
        return [n for n in real_list(path, *a, **kw) if not n.startswith("trusted.")]

    with monkeypatch.context() as service:
        service.setattr(os, "listxattr", as_the_service)
        service.setattr(getpass, "getuser", lambda: "casbackup")
        first = backup(repo, attributed, type="full").snapshot
    assert first is not None and first.user == "casbackup"
    assert b"trusted.t" not in dict(node_at(repo, first, attributed / "f").xattrs)
    reads.clear()
    second = backup(repo, attributed, type="incremental").snapshot
    assert dict(node_at(repo, second, attributed / "f").xattrs)[b"trusted.t"] == b"root only"
    assert reads == []  # the contents were still reused


def test_troubled_paths_reads_any_name_back_from_the_errors() -> None:
    from casbackup.archiver.backup_options import troubled_paths

    odd = os.fsdecode(b"/s/a: b/\xff\nx")  # ": " inside, a newline, a byte not UTF-8
    paths, dirs = troubled_paths([f"{odd}: extended attribute user.x: I/O error", 5, None])
    assert b"/s/a: b/\xff\nx" in paths and {b"/s", b"/s/a: b"} <= dirs


def test_a_parent_without_attributes_does_not_hide_them(  # type: ignore[no-untyped-def]
    repo, attributed: Path, clock, reads
) -> None:
    # Snapshots made with --no-xattrs (or before attributes were recorded) lend their
    # contents, never their attribute-less metadata.
    backup(repo, attributed, type="full", xattrs=False)
    reads.clear()
    snap = backup(repo, attributed, type="incremental").snapshot
    assert reads == []  # nothing read again
    assert dict(node_at(repo, snap, attributed / "f").xattrs)[b"user.test"] == b"1"
    assert node_at(repo, snap, attributed / "folder").xattrs != ()
    # And the reverse: --no-xattrs after a snapshot with attributes drops them.
    snap = backup(repo, attributed, type="incremental", xattrs=False).snapshot
    assert node_at(repo, snap, attributed / "f").xattrs == ()


def test_times_outside_64_bit_nanoseconds(repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    src.mkdir()
    future, past = src / "future", src / "past"
    future.write_bytes(b"2300")
    past.write_bytes(b"1960")
    try:
        os.utime(future, ns=(AFTER_2262_NS, AFTER_2262_NS))  # touch -d 2300-01-01 future
        os.utime(past, ns=(BEFORE_1970_NS, BEFORE_1970_NS))
    except (OSError, OverflowError) as exc:
        pytest.skip(f"this file system does not hold such times: {exc}")
    if (os.stat(future).st_mtime_ns, os.stat(past).st_mtime_ns) != (AFTER_2262_NS, BEFORE_1970_NS):
        pytest.skip("this file system rounds or clamps such times")
    result = backup(repo, src, type="full")
    assert result.warnings == []
    assert node_at(repo, result.snapshot, future).mtime_ns == AFTER_2262_NS
    assert node_at(repo, result.snapshot, past).mtime_ns == BEFORE_1970_NS
    # An incremental sees them unchanged (no float rounding anywhere in the comparison).
    again = backup(repo, src, type="incremental").snapshot
    assert again is not None and again.summary.files_unchanged == 2


def test_zero_size_pseudo_files_are_stored_without_a_warning(repo) -> None:  # type: ignore[no-untyped-def]
    if not os.path.exists("/proc/cpuinfo") or os.stat("/proc/cpuinfo").st_size != 0:
        pytest.skip("no /proc/cpuinfo reporting size 0")
    with open("/proc/cpuinfo", "rb") as f:
        expected = f.read()
    result = backup(repo, "/proc/cpuinfo", type="full")
    assert result.warnings == [] and result.notes == []
    node = node_at(repo, result.snapshot, "/proc/cpuinfo")
    assert node.size > 0 and node.size == len(expected) and node.content
    data = b"".join(repo.load_blob(c) for c in node.content)
    assert data.split(b"\n")[0] == expected.split(b"\n")[0]


def test_a_file_that_changed_while_read_is_a_note_not_an_error(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from casbackup.archiver import workers

    src = tmp_path / "src"
    src.mkdir()
    (src / "growing").write_bytes(b"x" * 100)
    real_fstat = os.fstat
    growing_path = src / "growing"

    def growing(fd: int) -> os.stat_result:  # the file grows as soon as its reader opened it
        st = real_fstat(fd)
        if st.st_size == 100:
            with open(growing_path, "ab") as f:
                f.write(b"y" * 50)
        return st

    monkeypatch.setattr(workers.os, "fstat", growing)  # the readers are forked after this
    result = backup(repo, src, type="full")
    assert result.warnings == []
    assert result.notes == [f"{src / 'growing'}: file changed while it was read; stored as read"]
    assert result.snapshot is not None and result.snapshot.summary.errors == 0


def _can_mount() -> str | None:
    if os.geteuid() != 0:
        return "mounting needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    return None


def test_mount_points_are_kept_as_empty_folders_under_one_file_system(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, clock
) -> None:
    reason = _can_mount()
    if reason:
        pytest.skip(reason)
    src = tmp_path / "src"
    mnt = src / "mnt"
    mnt.mkdir(parents=True)
    (src / "kept").write_bytes(b"k")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0751", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        (mnt / "inside").write_bytes(b"not on the source's file system")
        st = os.lstat(mnt)
        result = backup(repo, src, type="full", one_file_system=True)
        assert result.warnings == []
        node = node_at(repo, result.snapshot, mnt)
        assert node.kind == NodeKind.DIR and node.mode == 0o751
        assert node.mtime_ns == st.st_mtime_ns and node.uid == st.st_uid
        assert node.subtree is not None and repo.load_tree(node.subtree) == []
        # Incremental (walked, and compared in the readers): still there, still empty.
        again = backup(repo, src, type="incremental", one_file_system=True).snapshot
        assert repo.load_tree(node_at(repo, again, mnt).subtree) == []  # type: ignore[arg-type]
        # Without -x the mounted files are backed up as any others.
        whole = backup(repo, src, type="full").snapshot
        assert node_at(repo, whole, mnt / "inside").size > 0
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_backup_of_slash_under_one_file_system_keeps_proc_as_an_empty_folder(  # type: ignore[no-untyped-def]
    repo, clock
) -> None:
    """The issue's ``backup -x /`` (it was refused: "backing up / as a whole is not
    supported"). Everything of / but /proc is excluded here, to keep the test small."""
    if not os.path.ismount("/proc") or os.lstat("/proc").st_dev == os.lstat("/").st_dev:
        pytest.skip("/proc is not a mount point here")
    excludes = tuple(f"/{name}" for name in os.listdir("/") if name != "proc")
    st = os.lstat("/proc")
    for kind in ("full", "incremental"):
        result = backup(repo, "/", type=kind, one_file_system=True, excludes=excludes)
        assert result.warnings == []
        snap = result.snapshot
        assert snap is not None and snap.paths == ("/",)
        assert [n.name for n in repo.load_tree(snap.root)] == [b"proc"]
        proc = node_at(repo, snap, "/proc")
        assert proc.kind == NodeKind.DIR and repo.load_tree(proc.subtree) == []  # type: ignore[arg-type]
        assert (proc.mode, proc.uid, proc.mtime_ns) == (0o555, st.st_uid, st.st_mtime_ns)


def _make_deep(top: Path, levels: int) -> Path:
    """``top`` and ``levels`` folders ``d`` below it, one inside the other (os.makedirs
    and Path.mkdir(parents=True) recurse, and fail at this depth themselves)."""
    path = str(top)
    os.mkdir(path)
    for _ in range(levels):
        path += "/d"
        os.mkdir(path)
    return Path(path)


def _remove_deep(top: Path) -> None:
    """Remove a tree of any depth, bottom up, without recursion (shutil.rmtree recurses:
    pytest's clean-up of old temporary folders would fail on this one, in every session
    on the machine)."""
    fds = [os.open(top, os.O_RDONLY | os.O_DIRECTORY)]
    names: list[str] = []
    while fds:
        sub = None
        with os.scandir(fds[-1]) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    sub = entry.name
                    break
                os.unlink(entry.name, dir_fd=fds[-1])
        if sub is not None:
            fds.append(os.open(sub, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
            names.append(sub)
            continue
        os.close(fds.pop())
        if fds:
            os.rmdir(names.pop(), dir_fd=fds[-1])
    os.rmdir(top)


@pytest.fixture
def deep_src(tmp_path: Path):  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    yield src
    if src.exists():
        _remove_deep(src)


def test_a_folder_1000_levels_deep_backs_up(repo, deep_src: Path, clock) -> None:  # type: ignore[no-untyped-def]
    src = deep_src
    path = _make_deep(src, 1000)
    (path / "bottom").write_bytes(b"the bottom")
    for kind in ("full", "incremental"):  # the walk, then the readers' comparison
        result = backup(repo, src, type=kind)
        assert result.warnings == []
        assert node_at(repo, result.snapshot, path / "bottom").size == 10
        assert result.snapshot is not None and result.snapshot.summary.dirs >= 1001


def test_a_depth_the_os_refuses_is_reported_and_the_rest_saved(repo, deep_src: Path) -> None:  # type: ignore[no-untyped-def]
    src = deep_src
    src.mkdir()
    (src / "fine").write_bytes(b"fine")
    # Longer than PATH_MAX (4096) from the root: made one level at a time, relative.
    name = "n" * 200
    fd = os.open(src, os.O_RDONLY)
    try:
        for _ in range(25):
            os.mkdir(name, dir_fd=fd)
            new = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
    finally:
        os.close(fd)
    result = backup(repo, src, type="full")
    assert result.warnings, "the part beyond PATH_MAX cannot be named, so it is reported"
    assert all("name too long" in w.lower() for w in result.warnings)
    assert node_at(repo, result.snapshot, src / "fine").size == 4
    assert node_at(repo, result.snapshot, src / name).kind == NodeKind.DIR


def test_the_walk_has_no_recursion(monkeypatch: pytest.MonkeyPatch, repo, deep_src: Path) -> None:  # type: ignore[no-untyped-def]
    """With a recursion limit far below the depth, the walk still finishes."""
    import sys

    src = deep_src
    path = _make_deep(src, 300)
    (path / "f").write_bytes(b"f")
    monkeypatch.setattr(Backup, "_start_compares", lambda self, *a: None)  # the walker alone
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(200)
    try:
        result = backup(repo, src, type="full", workers=1)
    finally:
        sys.setrecursionlimit(limit)
    assert result.warnings == [] and node_at(repo, result.snapshot, path / "f").size == 1
