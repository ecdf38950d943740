"""`casbackup mount` through a real FUSE mount in a subprocess, as a user runs it."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.repo.pack import pack_name
from casbackup.repo.snapshot import Snapshot
from casbackup.testing.fixtures import make_repo, run_cli
from casbackup.vfs import Vfs, snapshot_folder
from tests.test_vfs import flip_byte, make_source


def _fuse_missing() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt-get install fuse3)"
    probe = subprocess.run(
        [sys.executable, "-c", "from casbackup.vfs.fuse import check_fuse; check_fuse()"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        return probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "binding missing"
    return None


def require_fuse() -> None:
    """Skip without FUSE (a reason given), except under CI=true, where it fails."""
    reason = _fuse_missing()
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"FUSE is required under CI: {reason}")
    pytest.skip(f"FUSE is not available: {reason}")


@pytest.fixture(scope="module")
def fuse() -> None:
    require_fuse()


@contextmanager
def mounted(repo: str, mountpoint: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [sys.executable, "-m", "casbackup.cli.main", "-r", repo, "mount", str(mountpoint), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if proc.poll() is not None:
                pytest.fail(f"mount exited with {proc.returncode}: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                pytest.fail("the mount did not appear within 30 s")
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        if os.path.ismount(mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)


def unmount(proc: subprocess.Popen[bytes], mountpoint: Path) -> str:
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    assert not os.path.ismount(mountpoint)
    return err.decode()


def snap_backup(repo, src: Path, app: str | None) -> Snapshot:  # type: ignore[no-untyped-def]
    result = run_backup(repo, BackupOptions(paths=(str(src),), app=app, type="incremental"))
    assert result.snapshot is not None
    return result.snapshot


def assert_same(expected: Path, actual: Path, *, check_inodes: bool = True) -> int:
    """Every entry below ``expected`` exists below ``actual`` with the same metadata and bytes."""
    compared = 0
    links: dict[int, int] = {}  # inode in expected -> inode in actual
    for dirpath, dirnames, filenames in os.walk(expected):
        rel = Path(dirpath).relative_to(expected)
        got = sorted(os.listdir(actual / rel))
        assert got == sorted(dirnames + filenames), rel
        for name in dirnames + filenames:
            e, a = os.lstat(Path(dirpath) / name), os.lstat(actual / rel / name)
            what = rel / name
            assert stat.S_IFMT(e.st_mode) == stat.S_IFMT(a.st_mode), what
            assert stat.S_IMODE(e.st_mode) == stat.S_IMODE(a.st_mode), what
            assert (e.st_uid, e.st_gid) == (a.st_uid, a.st_gid), what
            if stat.S_ISDIR(e.st_mode):
                continue
            assert e.st_mtime_ns == a.st_mtime_ns, what
            assert (e.st_size, e.st_nlink) == (a.st_size, a.st_nlink), what
            if stat.S_ISLNK(e.st_mode):
                assert os.readlink(Path(dirpath) / name) == os.readlink(actual / rel / name)
            if stat.S_ISREG(e.st_mode):
                assert (Path(dirpath) / name).read_bytes() == (actual / rel / name).read_bytes()
                if e.st_nlink > 1 and check_inodes:
                    assert links.setdefault(e.st_ino, a.st_ino) == a.st_ino, f"{what}: hard link"
            compared += 1
    return compared


def test_mount_shows_every_snapshot_faithfully(fuse, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo_path = str(tmp_path / "repo")
    repo = make_repo(repo_path)
    web, db, loose = tmp_path / "web", tmp_path / "db", tmp_path / "loose"
    for i, src in enumerate((web, db, loose)):
        src.mkdir()
        make_source(src, seed=i)
    expected: dict[str, tuple[Path, Path]] = {}  # mount folder -> (copy of the source, source)

    def keep(app: str, snap: Snapshot, src: Path) -> None:
        copy = tmp_path / f"expected-{snap.short_id}"
        subprocess.run(["cp", "-a", str(src), str(copy)], check=True)
        expected[f"{app}/{snapshot_folder(snap)}"] = (copy, src)

    keep("web", snap_backup(repo, web, "web"), web)
    keep("db", snap_backup(repo, db, "db"), db)
    (web / "etc/new").write_bytes(b"listen = 9090\n")
    os.replace(web / "etc/new", web / "etc/app.conf")
    (web / "added.txt").write_bytes(b"added later\n" * 5000)
    keep("web", snap_backup(repo, web, "web"), web)
    loose_snap = snap_backup(repo, loose, None)
    keep(loose_snap.host, loose_snap, loose)
    repo.close()

    mp = tmp_path / "mnt"
    mp.mkdir()
    with mounted(repo_path, mp) as proc:
        assert sorted(os.listdir(mp)) == sorted({key.split("/")[0] for key in expected})
        compared = 0
        for folder, (copy, src) in expected.items():
            root = mp / folder / str(src).lstrip("/")
            compared += assert_same(copy, root)
        assert compared > 30
        assert os.readlink(mp / "web/latest") == list(expected)[2].split("/")[1]

        # Reads at random offsets, several files open at once.
        big = mp / "web/latest" / str(web).lstrip("/") / "big.bin"
        data = (web / "big.bin").read_bytes()
        rng = random.Random(3)
        fd = os.open(big, os.O_RDONLY)
        try:
            for _ in range(200):
                off = rng.randrange(len(data))
                n = rng.choice([1, 777, 4096, 70_000, 200_000])
                assert os.pread(fd, n, off) == data[off : off + n]
        finally:
            os.close(fd)

        # Writes are refused: the mount is read-only.
        with pytest.raises(OSError) as info:
            (mp / "web/latest" / str(web).lstrip("/") / "x").write_bytes(b"x")
        assert info.value.errno == errno.EROFS

        # cp -a out of the mount gives a faithful copy, hard links included.
        out = tmp_path / "out"
        subprocess.run(["cp", "-a", str(mp / "web/latest" / str(web).lstrip("/")), str(out)],
                       check=True)  # fmt: skip
        assert assert_same(web, out, check_inodes=False) > 5
        assert_same(out, web, check_inodes=False)
        first_web = expected[list(expected)[0]][0]
        out_first = tmp_path / "out-first"
        subprocess.run(["cp", "-a", str(mp / list(expected)[0] / str(web).lstrip("/")), str(out_first)],
                       check=True)  # fmt: skip
        assert assert_same(first_web, out_first) > 5
        hard = os.stat(out_first / "etc/app.conf"), os.stat(out_first / "etc/app.conf.hard")
        assert hard[0].st_ino == hard[1].st_ino
        err = unmount(proc, mp)
    assert "mounted at" in err and "unmounted" in err and "Traceback" not in err


def test_damaged_chunk_gives_eio_and_is_logged(fuse, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo_path = str(tmp_path / "repo")
    repo = make_repo(repo_path)
    src = tmp_path / "src"
    src.mkdir()
    files = make_source(src)
    snap_backup(repo, src, "web")
    vfs = Vfs(repo)
    path = "/web/latest" + str(src / "big.bin")
    node = vfs.lookup(path).node
    offsets = vfs._chunk_offsets(vfs.lookup(path))
    loc = repo.locate(node.content[4])
    flip_byte(Path(repo_path), pack_name(loc.pack), loc.offset + loc.stored_len // 2)
    repo.close()

    mp = tmp_path / "mnt"
    mp.mkdir()
    with mounted(repo_path, mp) as proc:
        big = mp / "web/latest" / str(src / "big.bin").lstrip("/")
        fd = os.open(big, os.O_RDONLY)
        try:
            with pytest.raises(OSError) as info:
                os.pread(fd, 100, offsets[4] + 10)
            assert info.value.errno == errno.EIO
            assert os.pread(fd, 100, 0) == files["big.bin"][:100]  # the same file, a good chunk
        finally:
            os.close(fd)
        leaf = mp / "web/latest" / str(src / "deep/a/b/c/leaf.txt").lstrip("/")
        assert leaf.read_bytes() == files["deep/a/b/c/leaf.txt"]  # the mount still serves
        assert len(os.listdir(big.parent)) == len(os.listdir(src))
        err = unmount(proc, mp)
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert lines and all("big.bin" in line for line in lines), err
    assert "Traceback" not in err


def test_app_filter(fuse, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo_path = str(tmp_path / "repo")
    repo = make_repo(repo_path)
    for app in ("web", "db"):
        src = tmp_path / app
        src.mkdir()
        (src / "f").write_bytes(app.encode())
        snap_backup(repo, src, app)
    repo.close()
    mp = tmp_path / "mnt"
    mp.mkdir()
    with mounted(repo_path, mp, "--app", "db") as proc:
        assert os.listdir(mp) == ["db"]
        assert (mp / "db/latest" / str(tmp_path / "db/f").lstrip("/")).read_bytes() == b"db"
        unmount(proc, mp)


def test_mount_json_status(fuse, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """With --json the mount's status lines are JSON (stdout), its warnings too (stderr)."""
    repo_path = str(tmp_path / "repo")
    make_repo(repo_path).close()
    mp = tmp_path / "mnt"
    mp.mkdir()
    with mounted(repo_path, mp, "--json", "--app", "none-yet") as proc:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    status = [json.loads(line) for line in out.decode().splitlines()]
    assert [d["message_type"] for d in status] == ["status", "status"]
    assert status[0]["message"].startswith(f"mounted at {mp}") and status[0]["mountpoint"] == str(
        mp
    )
    assert status[1]["message"] == f"unmounted {mp}"
    warnings = [json.loads(line) for line in err.decode().splitlines()]
    assert [d["message_type"] for d in warnings] == ["warning"]
    assert "no snapshot of application 'none-yet'" in warnings[0]["message"]


def test_clear_errors(tmp_path: Path, repo_path: str) -> None:
    result = run_cli("mount", str(tmp_path / "missing"), repo=repo_path)
    assert result.code == 32
    assert (
        result.err.strip() == f"error: mount point {tmp_path / 'missing'} is not an existing folder"
    )
    (tmp_path / "mp").mkdir()
    no_fuse = {"PATH": str(tmp_path / "empty-bin")}
    result = run_cli("mount", str(tmp_path / "mp"), repo=repo_path, env=no_fuse)
    assert result.code == 32
    assert (
        result.err.strip()
        == ("error: FUSE is not available: fusermount3 is not installed (install fuse3)")
        or "/dev/fuse" in result.err
    )


def test_a_killed_mount_leaves_a_mount_point_the_next_mount_names(fuse, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # SIGKILL leaves the kernel's side of the mount behind: every access to the folder fails
    # with ENOTCONN. The next mount called it "not an existing folder", which it is, and
    # gave no hint of the 'fusermount3 -u' that makes it usable again.
    repo_path = str(tmp_path / "repo")
    make_repo(repo_path).close()
    mp = tmp_path / "mnt"
    mp.mkdir()
    try:
        with mounted(repo_path, mp) as proc:
            proc.kill()
            proc.wait(timeout=20)
            with pytest.raises(OSError) as gone:
                os.listdir(mp)
            assert gone.value.errno == errno.ENOTCONN
            result = run_cli("mount", str(mp), repo=repo_path)
            assert result.code == 32
            assert result.err == (
                f"error: {mp} is left from a mount whose process was killed: run "
                f"'fusermount3 -u {mp}', then mount again\n"
            )
    finally:
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False, capture_output=True)


def test_every_folder_lists_dot_and_dotdot(fuse, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # '.' and '..' went out with inode number 0, and the C library drops such entries:
    # 'ls -a' showed neither anywhere in the mount, as no real file system does.
    repo_path = str(tmp_path / "repo")
    repo = make_repo(repo_path)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub/f").write_bytes(b"f")
    snap_backup(repo, src, "web")
    repo.close()
    mp = tmp_path / "mnt"
    mp.mkdir()
    with mounted(repo_path, mp) as proc:
        inner = mp / "web/latest" / str(src).lstrip("/")
        for folder in (mp, mp / "web", mp / "web/latest", inner, inner / "sub"):
            listed = subprocess.run(["ls", "-a", str(folder)], capture_output=True, text=True)
            assert listed.stdout.splitlines()[:2] == [".", ".."], (folder, listed)
        dot = subprocess.run(["stat", "-c", "%i", str(inner / "sub"), str(inner / "sub/.")],
                             capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
        assert dot[0] == dot[1]
        unmount(proc, mp)


def test_prune_refused_by_a_mount_says_to_unmount(fuse, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # A mount holds its shared lock until it is unmounted: "wait for it to finish" had the
    # user wait for something that never ends by itself.
    repo_path = str(tmp_path / "repo")
    make_repo(repo_path).close()
    mp = tmp_path / "mnt"
    mp.mkdir()
    with mounted(repo_path, mp) as proc:
        res = run_cli("prune", repo=repo_path)
        assert res.code == 11 and res.err.count("\n") == 1, res.err
        assert "(casbackup mount)" in res.err and "unmount it" in res.err, res.err
        assert "wait for it to finish" not in res.err
        unmount(proc, mp)


def test_mounting_over_files_warns_that_they_are_hidden(fuse, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # libfuse 3 mounts over a folder that holds files without a word: a user who mounted
    # on a folder of restored files saw them vanish.
    repo_path = str(tmp_path / "repo")
    make_repo(repo_path).close()
    mp = tmp_path / "mnt"
    mp.mkdir()
    (mp / "mine.txt").write_bytes(b"mine")
    with mounted(repo_path, mp) as proc:
        assert not (mp / "mine.txt").exists()
        err = unmount(proc, mp)
    assert f"warning: {mp} is not empty: what it holds is hidden until the mount ends" in err, err
    assert (mp / "mine.txt").read_bytes() == b"mine"


def test_cp_out_of_the_mount_keeps_a_sparse_file_sparse(fuse, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo_path = str(tmp_path / "repo")
    repo = make_repo(repo_path)
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "vm.img", "wb") as f:
        f.truncate(16 << 20)
        f.seek(16 << 20)
        f.write(b"tail")
    snap_backup(repo, src, "vm")
    repo.close()
    mp = tmp_path / "mnt"
    mp.mkdir()
    with mounted(repo_path, mp) as proc:
        subprocess.run(["cp", "-a", str(mp / "vm/latest" / str(src).lstrip("/") / "vm.img"),
                        str(tmp_path / "copy.img")], check=True)  # fmt: skip
        unmount(proc, mp)
    copy = os.stat(tmp_path / "copy.img")
    assert copy.st_size == (16 << 20) + 4
    assert copy.st_blocks * 512 < 1 << 20, copy.st_blocks
    assert (tmp_path / "copy.img").read_bytes() == (src / "vm.img").read_bytes()
