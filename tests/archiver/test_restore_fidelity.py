"""Restore brings back what the tree holds: extended attributes (ACLs, capabilities),
modes and times when owners cannot be set, and any depth; nothing partial under a real name.

Trees are built through the library (tests/archiver/trees.py), so these tests do not
depend on what the backup side records.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from casbackup.archiver.restore import RestoreOptions, restore
from casbackup.errors import RestoreError
from casbackup.repo.pack import pack_name
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalBackend
from casbackup.testing.faults import FaultScript, FaultyBackend
from casbackup.testing.fixtures import PASSWORD, open_repo
from tests.archiver.trees import dir_node, file_node, snapshot_of, symlink_node

T1, T2, T3 = 1_500_000_000_123_456_789, 1_400_000_000_000_000_001, 1_300_000_000_000_000_007
ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root (chown, capabilities, mounts)")


def acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL as its xattr value (linux/posix_acl_xattr.h): version 2, then
    (tag, perm, id) entries sorted by tag and id."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


ANY = 0xFFFFFFFF
# setfacl -m u:nobody:r f  (on a 0644 file)
ACL_NOBODY_R = acl((1, 6, ANY), (2, 4, 65534), (4, 4, ANY), (0x10, 4, ANY), (0x20, 4, ANY))
# setfacl -d -m u:nobody:rx d  (a folder's default ACL)
ACL_DEFAULT = acl((1, 7, ANY), (2, 5, 65534), (4, 5, ANY), (0x10, 5, ANY), (0x20, 5, ANY))
# setcap cap_net_raw+ep f: VFS_CAP_REVISION_2 | effective, permitted = 1 << CAP_NET_RAW
CAP_NET_RAW = struct.pack("<IIIII", 0x02000001, 1 << 13, 0, 0, 0)
BIG = bytes(range(256)) * 11 + b"x" * 184  # a 3,000-byte attribute


@pytest.fixture
def xattr_snapshot(repo: Repository):  # type: ignore[no-untyped-def]
    f = file_node(repo, b"f", b"content\n", mode=0o644, uid=1000, gid=1000, mtime_ns=T2,
                  xattrs=((b"security.capability", CAP_NET_RAW),
                          (b"system.posix_acl_access", ACL_NOBODY_R),
                          (b"user.big", BIG), (b"user.test", b"1")))  # fmt: skip
    link = symlink_node(b"l", b"f", mtime_ns=T3, xattrs=((b"trusted.link", b"on the link"),))
    d = dir_node(repo, b"d", [f, link], mode=0o750, mtime_ns=T1,
                 xattrs=((b"system.posix_acl_default", ACL_DEFAULT), (b"user.folder", b"yes")))  # fmt: skip
    return snapshot_of(repo, [d])


@needs_root
def test_xattrs_acls_and_capabilities_are_restored(
    repo: Repository,
    xattr_snapshot,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    out = tmp_path / "out"  # ext4 here; the tmpfs case is below
    result = restore(repo, xattr_snapshot, RestoreOptions(target=str(out)))
    assert result.errors == [] and result.warnings == []
    f, d, link = out / "d" / "f", out / "d", out / "d" / "l"
    assert os.getxattr(f, "user.test") == b"1"
    assert os.getxattr(f, "user.big") == BIG
    assert os.getxattr(f, "system.posix_acl_access") == ACL_NOBODY_R
    # Set after chown to uid 1000, which would have cleared it.
    assert os.getxattr(f, "security.capability") == CAP_NET_RAW
    assert os.stat(f).st_uid == 1000 and os.stat(f).st_mode & 0o7777 == 0o644
    assert os.getxattr(d, "user.folder") == b"yes"
    assert os.getxattr(d, "system.posix_acl_default") == ACL_DEFAULT
    assert os.getxattr(link, "trusted.link", follow_symlinks=False) == b"on the link"
    assert b"trusted.link" not in [os.fsencode(k) for k in os.listxattr(f)]  # not followed
    assert os.lstat(link).st_mtime_ns == T3 and os.stat(d).st_mtime_ns == T1

    bare = tmp_path / "bare"
    result = restore(repo, xattr_snapshot, RestoreOptions(target=str(bare), xattrs=False))
    assert result.errors == [] and result.warnings == []
    assert os.listxattr(bare / "d" / "f") == [] and os.listxattr(bare / "d") == []
    assert os.listxattr(bare / "d" / "l", follow_symlinks=False) == []


def _acls(path: Path) -> dict[str, bytes]:
    names = [n for n in os.listxattr(path) if n.startswith("system.posix_acl")]
    return {n: os.getxattr(path, n) for n in names}


@needs_root
def test_acls_inherited_in_the_target_are_removed_where_the_snapshot_has_none(
    repo: Repository, tmp_path: Path
) -> None:
    """A new entry inherits its folder's default ACL. Restored into a target that has one,
    or a second time with --overwrite into the snapshot's own folder that has one, files
    recorded without an ACL must still come back without (they came back with one)."""
    plain = file_node(repo, b"plain", b"no acl\n", mode=0o640, mtime_ns=T2)
    with_acl = file_node(repo, b"acl", b"acl\n", mode=0o644, mtime_ns=T2,
                         xattrs=((b"system.posix_acl_access", ACL_NOBODY_R),))  # fmt: skip
    sub = dir_node(repo, b"sub", [], mode=0o755, mtime_ns=T1)
    d = dir_node(repo, b"d", [plain, with_acl, sub], mode=0o750, mtime_ns=T1,
                 xattrs=((b"system.posix_acl_default", ACL_DEFAULT),))  # fmt: skip
    snap = snapshot_of(repo, [d], xattrs=True)
    out = tmp_path / "out"
    out.mkdir()
    os.setxattr(out, "system.posix_acl_default", ACL_DEFAULT)  # setfacl -d -m u:nobody:rx out

    def check() -> None:
        assert _acls(out / "d") == {"system.posix_acl_default": ACL_DEFAULT}
        assert _acls(out / "d" / "plain") == {}
        assert _acls(out / "d" / "sub") == {}
        assert _acls(out / "d" / "acl") == {"system.posix_acl_access": ACL_NOBODY_R}
        assert os.stat(out / "d" / "plain").st_mode & 0o7777 == 0o640

    result = restore(repo, snap, RestoreOptions(target=str(out)))
    assert result.errors == [] and result.warnings == []
    check()
    result = restore(repo, snap, RestoreOptions(target=str(out), overwrite=True))
    assert result.errors == [] and result.warnings == []
    check()
    # A snapshot that did not record attributes (--no-xattrs, or older) says nothing about
    # ACLs: what the target gives new entries is left to it.
    unknown = snapshot_of(repo, [d])
    other = tmp_path / "other"
    other.mkdir()
    os.setxattr(other, "system.posix_acl_default", ACL_DEFAULT)
    restore(repo, unknown, RestoreOptions(target=str(other)))
    assert "system.posix_acl_access" in _acls(other / "d" / "plain")


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[callable]:  # type: ignore[valid-type]
    """Mount a file system of a type and options; unmounted at the end."""
    done: list[Path] = []

    def mount(fstype: str, options: str = "") -> Path:
        where = tmp_path / f"mnt{len(done)}"
        where.mkdir()
        args = ["mount", "-t", fstype, *(["-o", options] if options else []), fstype, str(where)]
        if subprocess.run(args, capture_output=True).returncode != 0:
            pytest.skip(f"cannot mount {fstype} here")
        done.append(where)
        return where

    yield mount
    for where in done:
        subprocess.run(["umount", "-l", str(where)], check=False)


@needs_root
def test_xattrs_on_tmpfs_and_refused_on_a_file_system_without_them(
    repo: Repository,
    xattr_snapshot,
    mounted,  # type: ignore[no-untyped-def]
) -> None:
    tmpfs = mounted("tmpfs", "size=4m")
    result = restore(repo, xattr_snapshot, RestoreOptions(target=str(tmpfs)))
    assert result.errors == []
    assert os.getxattr(tmpfs / "d" / "f", "user.big") == BIG
    assert os.getxattr(tmpfs / "d", "user.folder") == b"yes"

    ramfs = mounted("ramfs")  # no extended attributes at all: ENOTSUP for each
    result = restore(repo, xattr_snapshot, RestoreOptions(target=str(ramfs)))
    assert result.errors == []
    assert (ramfs / "d" / "f").read_bytes() == b"content\n"  # the restore went on
    refused = "not restored: Operation not supported"
    for path, key in [("d/f", "user.test"), ("d/f", "user.big"),
                      ("d/f", "system.posix_acl_access"), ("d/f", "security.capability"),
                      ("d", "user.folder"), ("d/l", "trusted.link")]:  # fmt: skip
        assert f"{path}: extended attribute {key} {refused}" in "\n".join(result.warnings)
    assert os.stat(ramfs / "d" / "f").st_mode & 0o7777 == 0o644  # the rest of the metadata
    assert os.stat(ramfs / "d").st_mtime_ns == T1


# ------------------------------------------------------------------ owners refused (item 7)
@needs_root
def test_refused_chown_keeps_modes_and_times(
    repo: Repository, repo_path: str, tmp_path: Path
) -> None:
    """Restoring as uid 0 of a user namespace where uid 1000 is not mapped: every chown
    fails (EINVAL), and modes (setuid/setgid left out) and times still come back."""
    owned = {"uid": 1000, "gid": 1000}
    d = dir_node(repo, b"d", [
        file_node(repo, b"f", b"data", mode=0o640, mtime_ns=T2, **owned),
        file_node(repo, b"s", b"tool", mode=0o6755, mtime_ns=T3, **owned),
        symlink_node(b"l", b"f", mtime_ns=T3, **owned),
    ], mode=0o750, mtime_ns=T1, **owned)  # fmt: skip
    snap = snapshot_of(repo, [d])
    out = tmp_path / "out"
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", sys.executable, "-m", "casbackup.cli.main",
         "-r", repo_path, "restore", snap.id, "--target", str(out)],
        capture_output=True, text=True, env={**os.environ, "CASBACKUP_PASSWORD": PASSWORD},
    )  # fmt: skip
    if "unshare failed" in proc.stderr:
        pytest.skip("no user namespaces here")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    for name in ("d", "d/f", "d/s", "d/l"):
        assert f"{name}: owner 1000:1000 not restored" in proc.stderr
    assert os.stat(out / "d").st_mode & 0o7777 == 0o750
    assert os.stat(out / "d").st_mtime_ns == T1
    assert os.stat(out / "d" / "f").st_mode & 0o7777 == 0o640
    assert os.stat(out / "d" / "f").st_mtime_ns == T2
    assert os.stat(out / "d" / "s").st_mode & 0o7777 == 0o755  # no setuid/setgid for us
    assert os.lstat(out / "d" / "l").st_mtime_ns == T3


# ------------------------------------------------------------------ temporary names (item 8)
def leftovers(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.startswith(".casbackup-restore-")]


def damage_chunk(repo: Repository, repo_path: str, chunk: bytes) -> str:
    (loc,) = repo.locate_many([chunk])
    path = os.path.join(repo_path, pack_name(loc.pack))
    with open(path, "r+b") as f:
        f.seek(loc.offset + loc.stored_len // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes((byte[0] ^ 0x40,)))
    return pack_name(loc.pack)


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("overwrite", [False, True])
def test_damaged_pack_leaves_nothing_partial(
    repo: Repository, repo_path: str, tmp_path: Path, workers: int, overwrite: bool
) -> None:
    data = os.urandom(300_000)
    big = file_node(repo, b"big", data, chunk=100_000)
    snap = snapshot_of(repo, [big, file_node(repo, b"ok", b"fine"),
                              file_node(repo, b"h1", data[:1000] * 3, chunk=1000, nlink=2, inode=9, device=9),
                              file_node(repo, b"h2", data[:1000] * 3, chunk=1000, nlink=2, inode=9, device=9)])  # fmt: skip
    damage_chunk(repo, repo_path, big.content[1])  # the middle chunk: the first is written
    damage_chunk(repo, repo_path, repo.load_tree(snap.root)[1].content[0])  # h1's (h2 shares it)
    out = tmp_path / "out"
    out.mkdir()
    if overwrite:
        (out / "big").write_bytes(b"the old file")
    repo.close()
    reopened = open_repo(repo_path)
    try:
        result = restore(
            reopened, snap, RestoreOptions(target=str(out), workers=workers, overwrite=overwrite)
        )
    finally:
        reopened.close()
    errors = sorted(result.errors)
    assert len(errors) == 3, errors
    assert errors[0].startswith("big: ") and errors[1].startswith("h1: ")
    assert errors[2] == "h2: hard link not made: h1 failed"
    # Nothing partial under a real name; the old file whole under --overwrite.
    assert sorted(os.listdir(out)) == (["big", "ok"] if overwrite else ["ok"])
    if overwrite:
        assert (out / "big").read_bytes() == b"the old file"
    assert (out / "ok").read_bytes() == b"fine"
    assert leftovers(out) == []


def test_damage_seen_through_a_fault_injecting_backend(
    repo: Repository, repo_path: str, tmp_path: Path
) -> None:
    big = file_node(repo, b"big", os.urandom(200_000), chunk=50_000)
    snap = snapshot_of(repo, [big])
    (loc,) = repo.locate_many([big.content[2]])
    repo.close()
    faulty = FaultyBackend(LocalBackend(repo_path), FaultScript(flip_on_get=pack_name(loc.pack),
                                                                flip_bit=(loc.offset + 40) * 8))  # fmt: skip
    reopened = open_repo(faulty)  # type: ignore[arg-type]
    out = tmp_path / "out"
    try:
        result = restore(reopened, snap, RestoreOptions(target=str(out), workers=1))
    finally:
        reopened.close()
    assert len(result.errors) == 1 and result.errors[0].startswith("big: ")
    assert os.listdir(out) == []


@needs_root
@pytest.mark.parametrize("workers", [1, 2])
def test_full_disk_leaves_nothing_partial(
    repo: Repository,
    mounted,
    workers: int,  # type: ignore[no-untyped-def]
) -> None:
    small = mounted("tmpfs", "size=1m")
    snap = snapshot_of(repo, [file_node(repo, b"huge", os.urandom(3_000_000), chunk=500_000),
                              file_node(repo, b"tiny", b"fits")])  # fmt: skip
    # The disk is full: the restore stops at once (tiny, after huge, is not even tried),
    # with one error, and no temporary file is left.
    with pytest.raises(RestoreError, match=r"\(No space left on device\): 0 of 2 files restored"):
        restore(repo, snap, RestoreOptions(target=str(small), workers=workers))
    assert os.listdir(small) == []


def test_interrupted_writer_leaves_no_temporary_files(repo: Repository, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """A batch whose outcome never comes back (its writer died): its temporary files are
    removed by the restoring process."""
    from casbackup.archiver import writers

    snap = snapshot_of(repo, [file_node(repo, b"a", b"x" * 10), file_node(repo, b"b", b"y")])

    def dies_after_creating(dir_fd, name, job, reader, on_bytes):  # type: ignore[no-untyped-def]
        os.close(writers.create_file(dir_fd, job.temp))
        raise RuntimeError("writer crashed")

    monkeypatch.setattr(writers, "write_file", dies_after_creating)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="writer crashed"):
        restore(repo, snap, RestoreOptions(target=str(out), workers=1))
    assert os.listdir(out) == []


# ------------------------------------------------------------------ depth
def test_a_thousand_levels_deep_restores_without_recursion(
    repo: Repository, tmp_path: Path
) -> None:
    """1,000 nested folders (paths far past PATH_MAX): everything is made through folder
    fds, so all of it is restored; a hard link whose first name sits at the bottom cannot
    be made by path (ENAMETOOLONG), and is reported by path while the rest goes on."""
    name = b"n" * 100
    same = {"nlink": 2, "inode": 4, "device": 4}
    node = dir_node(repo, name, [file_node(repo, b"bottom", b"deep", **same)])
    for level in range(999):
        node = dir_node(repo, name, [node, file_node(repo, b"f", b"%d" % level)])
    snap = snapshot_of(repo, [node, file_node(repo, b"top", b"deep", **same),
                              file_node(repo, b"zz", b"after")])  # fmt: skip
    out = tmp_path / "out"
    result = restore(repo, snap, RestoreOptions(target=str(out), workers=2))
    (error,) = result.errors
    assert error.startswith("top: ") and "File name too long" in error
    assert result.dirs == 1000 and result.files == 999 + 1 + 1
    assert (out / "zz").read_bytes() == b"after"
    fd = os.open(out, os.O_RDONLY)
    try:
        for level in reversed(range(999)):
            fd_next = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = fd_next
            with open(os.open(b"f", os.O_RDONLY, dir_fd=fd), "rb") as f:
                assert f.read() == b"%d" % level
        fd_next = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = fd_next
        with open(os.open(b"bottom", os.O_RDONLY, dir_fd=fd), "rb") as f:
            assert f.read() == b"deep"
    finally:
        os.close(fd)
        flatten(out, name)


def flatten(top: Path, name: bytes) -> None:
    """Move each nested folder up to ``top`` (short paths only), so that removing the
    test's tmp folder later does not recurse 1,000 levels."""
    current, moved = top / os.fsdecode(name), 0
    while True:
        try:
            os.rename(current / os.fsdecode(name), top / f"level{moved}")
        except FileNotFoundError:
            return
        current, moved = top / f"level{moved}", moved + 1


FD_LIMITED = """
import json, resource, sys
from casbackup.archiver.restore import RestoreOptions, restore
from casbackup.errors import RestoreError
from casbackup.testing.fixtures import open_repo
repo = open_repo(sys.argv[1])
snap = repo.load_snapshot(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (200, int(sys.argv[4])))
result = restore(repo, snap, RestoreOptions(target=sys.argv[3], workers=2))
print(json.dumps({"errors": result.errors, "dirs": result.dirs, "files": result.files}))
"""


@pytest.mark.parametrize("hard", [200, 4096])
def test_deep_tree_under_a_low_fd_limit(
    repo: Repository, repo_path: str, tmp_path: Path, hard: int
) -> None:
    """300 levels with a soft limit of 200 fds: the restore raises the soft limit to the
    hard one; where it cannot, the level the OS refuses (EMFILE) is reported by path and
    the rest of the snapshot is restored."""
    node = dir_node(repo, b"d", [file_node(repo, b"bottom", b"x")])
    for _ in range(299):
        node = dir_node(repo, b"d", [node])
    snap = snapshot_of(repo, [node, file_node(repo, b"zz", b"after")])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", FD_LIMITED, repo_path, snap.id, str(out), str(hard)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    if hard == 200:
        (error,) = result["errors"]
        assert error.startswith("d/d/") and error.endswith(
            ": cannot open folder: Too many open files"
        )
        assert result["files"] == 1  # zz; the bottom file is below the refused level
    else:
        assert result == {"errors": [], "dirs": 300, "files": 2}
    assert (out / "zz").read_bytes() == b"after"


def test_hostile_xattr_keys_are_warnings_not_crashes(repo: Repository, tmp_path: Path) -> None:
    bad = ((b"user.a\0b", b"1"), (b"", b"2"), (b"user.line\nbreak", b"3"), (b"user.ok", b"4"))
    snap = snapshot_of(repo, [file_node(repo, b"f", b"data", xattrs=bad),
                              symlink_node(b"l", b"f", xattrs=bad[:1]),
                              dir_node(repo, b"d", [], xattrs=bad[:1])])  # fmt: skip
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        result = restore(repo, snap, RestoreOptions(target=str(out), workers=workers))
        assert result.errors == []
        assert (out / "f").read_bytes() == b"data" and os.getxattr(out / "f", "user.ok") == b"4"
        assert "f: extended attribute user.a\\x00b not restored: invalid name" in result.warnings
        assert "l: extended attribute user.a\\x00b not restored: invalid name" in result.warnings
        assert "d: extended attribute user.a\\x00b not restored: invalid name" in result.warnings
        assert all("\n" not in w for w in result.warnings)


# ------------------------------------------------------------------ the CLI's report
def test_cli_lists_each_failed_entry_by_path_and_caps_warnings(
    repo: Repository, repo_path: str, tmp_path: Path
) -> None:
    from casbackup.testing.fixtures import run_cli

    files = [file_node(repo, b"f%02d" % i, b"x", xattrs=((b"user.a\0b", b"1"),)) for i in range(60)]
    snap = snapshot_of(repo, [*files, file_node(repo, b"a", b"new"), file_node(repo, b"b", b"new")])
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "b").mkdir()
    res = run_cli("restore", snap.id, "--target", str(out), "--overwrite", repo=repo_path)
    assert res.code == 26, res.err
    lines = res.err.strip().splitlines()
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert (
        len(warnings) == 51 and warnings[-1] == "warning: 10 more warnings (--json lists them all)"
    )
    assert [line for line in lines if line.startswith("error: ")] == [
        "error: a: is a directory in the target; not replacing it",
        "error: b: is a directory in the target; not replacing it",
        "error: 2 entries could not be restored (listed above); the rest was restored",
    ]
    assert (out / "f59").read_bytes() == b"x"
