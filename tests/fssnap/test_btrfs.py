"""Btrfs for real: a loop-file Btrfs, an application on a subvolume, the CLI in subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from casbackup.fssnap.base import snapshot_name
from casbackup.fssnap.btrfs import SNAP_DIR
from tests.cli.conftest import assert_one_error
from tests.fssnap.conftest import write_site

MAIN = "from casbackup.cli.main import main; main()"
BLOCK = 64 * 1024
BLOCKS = 128  # an 8 MiB file, rewritten in place block by block


def _subvolume(mnt: Path, name: str = "app") -> Path:
    subprocess.run(["btrfs", "subvolume", "create", str(mnt / name)], check=True,
                   capture_output=True)  # fmt: skip
    return mnt / name


def _block(version: int) -> bytes:
    head = f"version {version:08d}\n".encode()
    return (head * (BLOCK // len(head) + 1))[:BLOCK]


def _ours(mnt: Path) -> list[str]:
    folder = mnt / SNAP_DIR
    return sorted(os.listdir(folder)) if folder.exists() else []


def _subvolumes(mnt: Path) -> str:
    return subprocess.run(["btrfs", "subvolume", "list", str(mnt)], capture_output=True,
                          text=True, check=True).stdout  # fmt: skip


class Rewriter(threading.Thread):
    """Rewrites live.bin in place, one version after another, then counter.txt."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.version = 0

    def write_version(self, version: int) -> None:
        with open(self.path / "live.bin", "r+b" if version else "wb") as f:
            for _ in range(BLOCKS):
                f.write(_block(version))
        (self.path / "counter.txt").write_text(str(version))
        self.version = version

    def run(self) -> None:
        version = self.version
        while not self.stop.is_set():
            version += 1
            self.write_version(version)


# Runs in the backup's process once the snapshots exist, before anything is read: it notes
# what the frozen copy holds, so the test can compare the stored file with it afterwards.
NOTE_FROZEN = (
    "import hashlib, os, casbackup.archiver.application as a\n"
    "_run = a.run_backup\n"
    "def run(repo, options, reporter):\n"
    "    for source, read in options.read_from:\n"
    "        with open(os.path.join(read, 'live.bin'), 'rb') as f:\n"
    "            digest = hashlib.sha256(f.read()).hexdigest()\n"
    "        with open(os.environ['FROZEN_NOTE'], 'w') as f:\n"
    "            f.write(digest)\n"
    "    return _run(repo, options, reporter)\n"
    "a.run_backup = run\n"
)


@pytest.mark.slow
def test_rewritten_file_is_stored_as_at_snapshot_time_and_snapshot_is_removed(
    btrfs_mount: Path, tmp_path: Path
) -> None:
    app = _subvolume(btrfs_mount)
    (app / "conf").mkdir()
    for i in range(300):  # enough files for the backup to overlap many rewrites
        (app / "conf" / f"f{i:03d}.txt").write_text(f"setting {i}\n" * 50)
    writer = Rewriter(app)
    writer.write_version(0)
    site = write_site(tmp_path, [str(app)], "btrfs")
    note = tmp_path / "frozen.sha256"
    env = {**os.environ, "CASBACKUP_CONFIG": str(site.config), "FROZEN_NOTE": str(note)}
    writer.start()
    try:
        first = writer.version
        res = subprocess.run(
            [sys.executable, "-c", NOTE_FROZEN + MAIN, "backup", "--app", "webapp"],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        last = writer.version
    finally:
        writer.stop.set()
        writer.join()
    assert res.returncode == 0, res.stderr
    assert "changed while it was read" not in res.stderr
    assert last > first + 1, "the file was not rewritten during the backup"
    stored = site.cli("cat", f"latest:{app}/live.bin", "--app", "webapp")
    blob = stored.out.encode(errors="surrogateescape")
    assert stored.code == 0, stored.err
    assert len(blob) == BLOCK * BLOCKS
    # byte for byte what the snapshot held when it was taken, though the live file was
    # rewritten many times while the backup read it
    assert hashlib.sha256(blob).hexdigest() == note.read_text()
    assert blob != (app / "live.bin").read_bytes()
    # the snapshot is gone; only the application's subvolume is left
    assert _ours(btrfs_mount) == []
    assert "casbackup-" not in _subvolumes(btrfs_mount)
    # the record names the provider and time; paths are the originals
    [snap] = json.loads(site.cli("--json", "snapshots").out)
    [record] = snap["fs_snapshots"]
    assert record["provider"] == "btrfs" and record["source"] == str(app)
    # taken before the backup started reading (the backup's own time)
    assert record["origin"] == str(app) and record["time"] <= snap["time"]
    listing = site.cli("ls", "latest", "--app", "webapp").out
    assert f"{app}/live.bin" in listing and SNAP_DIR not in listing
    target = tmp_path / "restored"
    res = site.cli("restore", "latest", "--app", "webapp", "--target", str(target))
    assert res.code == 0, res.err
    assert (target / str(app).lstrip("/") / "conf" / "f007.txt").read_text() == "setting 7\n" * 50


def test_live_read_without_snapshot_is_not_frozen(btrfs_mount: Path, tmp_path: Path) -> None:
    """The same setup with snapshot = "none" reads live: it names no file-system snapshot."""
    app = _subvolume(btrfs_mount)
    (app / "a.txt").write_text("a")
    site = write_site(tmp_path, [str(app)], "none")
    assert site.cli("backup", "--app", "webapp").code == 0
    [snap] = json.loads(site.cli("--json", "snapshots").out)
    assert snap["fs_snapshots"] == []


def test_killed_backup_leaves_a_snapshot_the_next_run_removes(
    btrfs_mount: Path, tmp_path: Path
) -> None:
    app = _subvolume(btrfs_mount)
    (app / "data.txt").write_text("precious\n")
    site = write_site(tmp_path, [str(app)], "btrfs")
    # The child stops inside the backup, after the snapshot was taken, and is killed there.
    prelude = (
        "import time, casbackup.archiver.application as a\n"
        "def hang(*args, **kw):\n"
        "    print('READY', flush=True)\n"
        "    time.sleep(600)\n"
        "a.run_backup = hang\n"
    )
    main = "from casbackup.cli.main import main; main()"
    env = {**os.environ, "CASBACKUP_CONFIG": str(site.config)}
    child = subprocess.Popen(
        [sys.executable, "-c", prelude + main, "backup", "--app", "webapp"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == b"READY", child.stderr.read()  # type: ignore[union-attr]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    [leftover] = _ours(btrfs_mount)
    assert leftover.startswith("casbackup-webapp-") and leftover.endswith(f"-{child.pid}")
    res = site.cli("backup", "--app", "webapp")
    assert res.code == 0, res.err
    assert f"removed leftover btrfs snapshot {btrfs_mount / SNAP_DIR / leftover}" in res.err
    assert _ours(btrfs_mount) == []
    assert site.cli("cat", f"latest:{app}/data.txt", "--app", "webapp").out == "precious\n"


def _casbackup_like_process() -> subprocess.Popen[bytes]:
    """A live process whose command line names casbackup, as a running backup's does."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)  # casbackup"])


def test_cleanup_command_removes_only_dead_runs_snapshots(btrfs_mount: Path) -> None:
    from casbackup.testing.fixtures import run_cli

    app = _subvolume(btrfs_mount)
    (btrfs_mount / SNAP_DIR).mkdir(mode=0o700)
    dead = subprocess.Popen(["true"])
    dead.wait()
    running = _casbackup_like_process()
    reused = subprocess.Popen(["sleep", "120"])  # a pid now held by something else
    try:
        names = {
            "dead": snapshot_name("webapp", pid=dead.pid),
            "reused": snapshot_name("webapp", now=1, pid=reused.pid),
            "alive": snapshot_name("webapp", pid=running.pid),
            "user": "nightly-by-hand",
        }
        for name in names.values():
            subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(app),
                            str(btrfs_mount / SNAP_DIR / name)], check=True, capture_output=True)  # fmt: skip
        # a symlink with one of our names must not lead cleanup to another subvolume
        trap = snapshot_name("trap", pid=dead.pid)
        os.symlink(app, btrfs_mount / SNAP_DIR / trap)
        res = run_cli("fs-snapshots", "cleanup", "--provider", "btrfs")
    finally:
        running.kill()
        reused.kill()
    assert res.code == 0, res.err
    assert f"removed btrfs snapshot {btrfs_mount / SNAP_DIR / names['dead']}" in res.out
    assert f"removed btrfs snapshot {btrfs_mount / SNAP_DIR / names['reused']}" in res.out
    assert f"kept btrfs snapshot {btrfs_mount / SNAP_DIR / names['alive']}" in res.out
    assert _ours(btrfs_mount) == sorted([names["alive"], names["user"], trap])
    assert app.is_dir() and "app" in _subvolumes(btrfs_mount)


def test_max_snapshots_is_never_exceeded(btrfs_mount: Path, tmp_path: Path) -> None:
    app = _subvolume(btrfs_mount)
    (app / "a.txt").write_text("a")
    (btrfs_mount / SNAP_DIR).mkdir(mode=0o700)
    running = _casbackup_like_process()
    try:
        # three snapshots of a run still alive: max_snapshots = 3 is reached
        for i in range(3):
            name = snapshot_name(f"other{i}", pid=running.pid)
            subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(app),
                            str(btrfs_mount / SNAP_DIR / name)], check=True, capture_output=True)  # fmt: skip
        site = write_site(tmp_path, [str(app)], "btrfs")
        res = site.cli("backup", "--app", "webapp")
    finally:
        running.kill()
    assert_one_error(res, 31, "max_snapshots = 3")
    assert len(_ours(btrfs_mount)) == 3
    assert json.loads(site.cli("--json", "snapshots").out) == []


def test_source_not_on_btrfs_is_a_one_line_error(tmp_path: Path) -> None:
    src = tmp_path / "plain"
    src.mkdir()
    (src / "a.txt").write_text("a")
    site = write_site(tmp_path, [str(src)], "btrfs")
    res = site.cli("backup", "--app", "webapp")
    assert_one_error(res, 31, f"{src} is not on a Btrfs file system")
    assert json.loads(site.cli("--json", "snapshots").out) == []


def test_auto_reads_a_plain_folder_live_and_says_so(tmp_path: Path) -> None:
    src = tmp_path / "plain"
    src.mkdir()
    (src / "a.txt").write_text("a")
    site = write_site(tmp_path, [str(src)], "auto")
    res = site.cli("backup", "--app", "webapp")
    assert res.code == 0, res.err
    assert f"no file-system snapshot for {src}" in res.err


def test_auto_as_another_user_says_lvm_could_not_be_asked(tmp_path: Path) -> None:
    """`lvs` refuses other users: "supports none" was not known, only assumed."""
    src = tmp_path / "plain"
    src.mkdir()
    site = write_site(tmp_path, [str(src)], "auto")
    env = {**os.environ, "CASBACKUP_CONFIG": str(site.config)}
    res = subprocess.run([sys.executable, "-c", NOT_ROOT + MAIN, "backup", "--app", "webapp"],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"no file-system snapshot for {src}: " in res.stderr
    assert "(LVM needs it to be asked); reading it live" in res.stderr


def test_btrfs_tool_missing_is_a_one_line_error(btrfs_mount: Path, tmp_path: Path) -> None:
    app = _subvolume(btrfs_mount)
    site = write_site(tmp_path, [str(app)], "btrfs")
    empty = tmp_path / "emptybin"
    empty.mkdir()
    res = site.cli("backup", "--app", "webapp", env={"PATH": str(empty)})
    assert_one_error(res, 31, "need the 'btrfs' command")


def test_nested_subvolume_inside_a_source_is_refused(btrfs_mount: Path, tmp_path: Path) -> None:
    """A snapshot leaves nested subvolumes empty: backing that up would lose their files."""
    app = _subvolume(btrfs_mount)
    (app / "uploads").mkdir()
    nested = _subvolume(app / "uploads", "photos")
    (nested / "cat.jpg").write_bytes(b"meow")
    site = write_site(tmp_path, [str(app)], "btrfs")
    res = site.cli("backup", "--app", "webapp")
    assert_one_error(res, 31, f"holds the Btrfs subvolume {nested}")
    assert _ours(btrfs_mount) == []
    # the nested subvolume on its own is fine
    (tmp_path / "second").mkdir()
    site = write_site(tmp_path / "second", [str(nested)], "btrfs")
    assert site.cli("backup", "--app", "webapp").code == 0


def test_top_level_source_two_sources_auto_and_excludes(btrfs_mount: Path, tmp_path: Path) -> None:
    """The mount's top as a source (casbackup's snapshot folder is left out), a second
    source on the same subvolume (one snapshot for both), "auto" choosing Btrfs, and an
    absolute exclude that still matches although the files are read from the snapshot."""
    (btrfs_mount / "etc").mkdir()
    (btrfs_mount / "etc" / "app.conf").write_text("port = 80\n")
    (btrfs_mount / "cache").mkdir()
    (btrfs_mount / "cache" / "junk").write_text("junk")
    site = write_site(tmp_path, [str(btrfs_mount), str(btrfs_mount / "etc")], "auto", extra="")
    text = site.config.read_text().replace(
        'default_backup_type = "full"',
        f'default_backup_type = "full"\nexcludes = ["{btrfs_mount}/cache"]',
    )
    site.config.write_text(text)
    res = site.cli("backup", "--app", "webapp")
    assert res.code == 0, res.err
    assert res.err.count("btrfs snapshot of") == 1
    listing = site.cli("ls", "latest", "--app", "webapp").out
    assert f"{btrfs_mount}/etc/app.conf" in listing
    assert "cache" not in listing and SNAP_DIR not in listing
    [snap] = json.loads(site.cli("--json", "snapshots").out)
    assert {r["source"] for r in snap["fs_snapshots"]} == {
        str(btrfs_mount),
        str(btrfs_mount / "etc"),
    }
    assert _ours(btrfs_mount) == []


def test_incremental_from_snapshots_reuses_unchanged_files(
    btrfs_mount: Path, tmp_path: Path
) -> None:
    """Each run reads another snapshot folder; unchanged files are still not read again."""
    app = _subvolume(btrfs_mount)
    for i in range(20):
        (app / f"f{i}.bin").write_bytes(os.urandom(50_000))
    time.sleep(2.1)  # past the race guard's margin: files this fresh are read again anyway
    site = write_site(tmp_path, [str(app)], "btrfs")
    text = site.config.read_text().replace('"full"', '"incremental"')
    site.config.write_text(text)
    assert site.cli("backup", "--app", "webapp").code == 0
    (app / "f3.bin").write_bytes(b"changed")
    res = site.cli("backup", "--app", "webapp")
    assert res.code == 0, res.err
    second = json.loads(site.cli("--json", "snapshots").out)[-1]["summary"]
    assert (second["files_unchanged"], second["files_changed"]) == (19, 1)
    assert second["bytes_read"] == len(b"changed")


def test_two_subvolumes_of_one_file_system_get_two_snapshots(
    btrfs_mount: Path, tmp_path: Path
) -> None:
    web, media = _subvolume(btrfs_mount, "web"), _subvolume(btrfs_mount, "media")
    (web / "index.html").write_text("<h1>hi</h1>")
    (media / "logo.svg").write_text("<svg/>")
    site = write_site(tmp_path, [str(web), str(media)], "btrfs")
    res = site.cli("backup", "--app", "webapp")
    assert res.code == 0, res.err
    assert res.err.count("btrfs snapshot of") == 2
    [snap] = json.loads(site.cli("--json", "snapshots").out)
    assert sorted(r["origin"] for r in snap["fs_snapshots"]) == [str(media), str(web)]
    assert site.cli("cat", f"latest:{media}/logo.svg", "--app", "webapp").out == "<svg/>"
    assert _ours(btrfs_mount) == []


def _mount_ext4(tmp_path: Path, where: Path) -> None:
    image = tmp_path / "other.img"
    with open(image, "wb") as f:
        f.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", str(image)], check=True, capture_output=True)
    where.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(where)], check=True,
                   capture_output=True)  # fmt: skip


def _umount(where: Path) -> None:
    for _ in range(20):
        if subprocess.run(["umount", str(where)], capture_output=True).returncode == 0:
            return
        time.sleep(0.2)


def test_other_file_system_mounted_inside_a_source_is_refused(
    btrfs_mount: Path, tmp_path: Path
) -> None:
    """A snapshot shows an empty folder where another file system is mounted: without the
    refusal its files were silently missing from the backup (a live read has them)."""
    app = _subvolume(btrfs_mount)
    (app / "index.html").write_text("<h1>hi</h1>")
    uploads = app / "uploads"
    _mount_ext4(tmp_path, uploads)
    try:
        (uploads / "cat.jpg").write_bytes(b"meow")
        site = write_site(tmp_path, [str(app)], "auto")
        res = site.cli("backup", "--app", "webapp")
        assert_one_error(res, 31, f"{app} holds {uploads}, where another file system (ext4 ")
        assert _ours(btrfs_mount) == [] and json.loads(site.cli("--json", "snapshots").out) == []
        # excluded, it is no reason to refuse; a tmpfs inside is left out with a log line
        text = site.config.read_text().replace(
            'default_backup_type = "full"', 'default_backup_type = "full"\nexcludes = ["uploads"]'
        )
        site.config.write_text(text)
        (app / "run").mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "none", str(app / "run")], check=True)
        try:
            res = site.cli("backup", "--app", "webapp")
        finally:
            _umount(app / "run")
        assert res.code == 0, res.err
        assert f"not in the snapshot of {app}, so not backed up: {app}/run (tmpfs)" in res.err
        assert site.cli("cat", f"latest:{app}/index.html", "--app", "webapp").out == "<h1>hi</h1>"
        assert _ours(btrfs_mount) == []
    finally:
        _umount(uploads)


def test_source_inside_a_live_source_gets_no_snapshot_of_its_own(
    btrfs_mount: Path, tmp_path: Path
) -> None:
    """The walk reads a source inside another as part of it: here the outer folder is read
    live, so a snapshot of the inner one would be taken for nothing and its record would
    claim a frozen read that never happened."""
    app = _subvolume(btrfs_mount)
    (app / "a.txt").write_text("a")
    outer = btrfs_mount.parent  # a plain folder holding the Btrfs mount
    site = write_site(tmp_path, [str(outer), str(app)], "auto")
    text = site.config.read_text().replace(
        'default_backup_type = "full"',
        f'default_backup_type = "full"\nexcludes = ["{outer}/*.img"]',
    )
    site.config.write_text(text)
    res = site.cli("backup", "--app", "webapp")
    assert res.code == 0, res.err
    assert "btrfs snapshot of" not in res.err
    [snap] = json.loads(site.cli("--json", "snapshots").out)
    assert snap["fs_snapshots"] == []
    assert site.cli("cat", f"latest:{app}/a.txt", "--app", "webapp").out == "a"


# The snapshot code and its command are shown another user (they ask os.geteuid); the rest of the process is
# still root, so the cache's ownership checks (repo/userdirs.py) see its own folders as
# its own (faking geteuid process-wide made every folder root made look foreign).
NOT_ROOT = (
    "import os\n"
    "import casbackup.fssnap.base as _fb, casbackup.fssnap.session as _fs\n"
    "import casbackup.cli.cmd_fs_snapshots as _fc\n"
    "class _NotRoot:\n"
    "    def __getattr__(self, name): return getattr(os, name)\n"
    "    def geteuid(self): return 1000\n"
    "_fb.os = _fs.os = _fc.os = _NotRoot()\n"
)


@pytest.mark.parametrize("choice", ["btrfs", "auto"])
def test_not_root_is_a_one_line_error_before_any_tool_runs(
    btrfs_mount: Path, tmp_path: Path, choice: str
) -> None:
    """As another user, `btrfs subvolume list` answered "Operation not permitted" in its
    own words (and zfs "connect: Permission denied"): the user must hear "need root"."""
    app = _subvolume(btrfs_mount)
    site = write_site(tmp_path, [str(app)], choice)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "btrfs"
    fake.write_text(f'#!/bin/sh\necho "btrfs $*" >> {tmp_path}/ran\nexit 1\n')
    fake.chmod(0o755)
    env = {**os.environ, "CASBACKUP_CONFIG": str(site.config),
           "PATH": f"{bin_dir}:{os.environ['PATH']}"}  # fmt: skip
    res = subprocess.run([sys.executable, "-c", NOT_ROOT + MAIN, "backup", "--app", "webapp"],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 31, res.stderr
    assert res.stderr == "error: btrfs snapshots need root; run the backup as root\n"
    assert not (tmp_path / "ran").exists()


def test_unreadable_snapshot_folder_is_a_provider_error(
    btrfs_mount: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fs-snapshots list` as another user failed with exit 1 and a bare "Permission denied"."""
    from casbackup.errors import SnapshotProviderError
    from casbackup.fssnap.btrfs import BtrfsProvider

    (btrfs_mount / SNAP_DIR).mkdir(mode=0o700)
    real_listdir = os.listdir

    def denied(path: str) -> list[str]:
        if str(path).endswith(SNAP_DIR):
            raise PermissionError(13, "Permission denied")
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", denied)
    with pytest.raises(SnapshotProviderError, match="Permission denied .btrfs snapshots need root"):
        BtrfsProvider().leftovers((str(btrfs_mount),))


def test_sigterm_during_the_backup_removes_the_snapshot(btrfs_mount: Path, tmp_path: Path) -> None:
    """A cancelled backup (SIGTERM: systemd, the service's cancel) removes its snapshot."""
    app = _subvolume(btrfs_mount)
    (app / "data.txt").write_text("x\n")
    site = write_site(tmp_path, [str(app)], "btrfs")
    prelude = (
        "import time, casbackup.archiver.application as a\n"
        "def hang(*args, **kw):\n"
        "    print('READY', flush=True)\n"
        "    time.sleep(600)\n"
        "a.run_backup = hang\n"
    )
    env = {**os.environ, "CASBACKUP_CONFIG": str(site.config)}
    child = subprocess.Popen([sys.executable, "-c", prelude + MAIN, "backup", "--app", "webapp"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"READY"
        assert len(_ours(btrfs_mount)) == 1
        child.send_signal(signal.SIGTERM)
        _out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 143, err
    assert b"btrfs snapshot" in err and b"removed" in err
    assert _ours(btrfs_mount) == []
    assert "casbackup-" not in _subvolumes(btrfs_mount)


def test_scheduled_backup_job_reads_from_a_snapshot(btrfs_mount: Path, tmp_path: Path) -> None:
    """The service's backup job (scheduled runs) freezes the sources as `backup --app` does."""
    from casbackup.config import load_config
    from casbackup.reporter import Reporter
    from casbackup.server.worker import Job, run_backup_job
    from casbackup.testing.fixtures import open_repo

    class Collect(Reporter):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def info(self, message: str) -> None:
            self.lines.append(message)

    app = _subvolume(btrfs_mount)
    (app / "a.txt").write_text("a")
    # the [snapshots] section, not the application, asks for them
    site = write_site(tmp_path, [str(app)], "none", extra='enabled = true\nprovider = "auto"\n')
    site.config.write_text(site.config.read_text().replace('snapshot = "none"\n', ""))
    repo = open_repo(site.repo)
    reporter = Collect()
    try:
        run_backup_job(Job("backup", repo, load_config(site.config), "webapp", {}, reporter))  # type: ignore[arg-type]
    finally:
        repo.close()
    assert any(line.startswith(f"btrfs snapshot of {app} taken") for line in reporter.lines)
    [snap] = json.loads(site.cli("--json", "snapshots").out)
    assert [r["provider"] for r in snap["fs_snapshots"]] == ["btrfs"]
    assert _ours(btrfs_mount) == []


def test_mount_shows_the_original_paths(btrfs_mount: Path, tmp_path: Path) -> None:
    from tests.cli.test_mount import _fuse_missing, mounted
    from tests.fssnap.conftest import unavailable

    reason = _fuse_missing()
    if reason is not None:
        unavailable(f"FUSE is not available: {reason}")
    app = _subvolume(btrfs_mount)
    (app / "a.txt").write_text("frozen")
    site = write_site(tmp_path, [str(app)], "btrfs")
    assert site.cli("backup", "--app", "webapp").code == 0
    point = tmp_path / "fuse"
    point.mkdir()
    with mounted(site.repo, point):
        [folder] = [n for n in os.listdir(point / "webapp") if n != "latest"]
        inside = point / "webapp" / folder
        assert (inside / str(app).lstrip("/") / "a.txt").read_text() == "frozen"
        found = [str(p) for p in inside.rglob("*")]
    assert not any(SNAP_DIR in p for p in found)


# Both runs take a moment before their snapshot exists and keep it a moment: without one
# lock around counting and taking, both counted none and took one each (max_snapshots = 1).
SLOW_FREEZE = (
    "import time, casbackup.archiver.application as a, casbackup.fssnap.btrfs as b\n"
    "_freeze, _run = b.BtrfsProvider.freeze, a.run_backup\n"
    "def freeze(self, *args):\n"
    "    time.sleep(1.5)\n"
    "    return _freeze(self, *args)\n"
    "def run(*args, **kw):\n"
    "    time.sleep(2)\n"
    "    return _run(*args, **kw)\n"
    "b.BtrfsProvider.freeze, a.run_backup = freeze, run\n"
)


def test_concurrent_backups_never_exceed_max_snapshots(btrfs_mount: Path, tmp_path: Path) -> None:
    app = _subvolume(btrfs_mount)
    (app / "a.txt").write_text("a")
    site = write_site(tmp_path, [str(app)], "btrfs")
    site.config.write_text(
        site.config.read_text().replace("max_snapshots = 3", "max_snapshots = 1")
    )
    env = {**os.environ, "CASBACKUP_CONFIG": str(site.config)}
    runs = [
        subprocess.Popen([sys.executable, "-c", SLOW_FREEZE + MAIN, "backup", "--app", "webapp"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]  # fmt: skip
    done = [run.communicate(timeout=120) for run in runs]
    codes = sorted(run.returncode for run in runs)
    assert codes == [0, 31], done
    [refused] = [err for (_out, err), run in zip(done, runs, strict=True) if run.returncode == 31]
    assert "over max_snapshots = 1" in refused
    assert _ours(btrfs_mount) == []


def test_cleanup_as_another_user_is_a_one_line_error(tmp_path: Path) -> None:
    """It said "0 snapshots removed" (exit 0) though it could remove nothing."""
    res = subprocess.run([sys.executable, "-c", NOT_ROOT + MAIN, "fs-snapshots", "cleanup"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert (res.returncode, res.stdout) == (31, "")
    assert res.stderr == "error: removing file-system snapshots needs root; run it as root\n"


# A second Ctrl-C (or SIGTERM) that lands while the snapshot is being removed.
STOP_DURING_RELEASE = (
    "import os, signal, casbackup.fssnap.btrfs as b\n"
    "_release = b.BtrfsProvider.release\n"
    "def release(self, frozen):\n"
    "    os.kill(os.getpid(), signal.SIG{sig})\n"
    "    return _release(self, frozen)\n"
    "b.BtrfsProvider.release = release\n"
)


@pytest.mark.parametrize(("sig", "code"), [("INT", 130), ("TERM", 143)])
def test_a_stop_during_removal_waits_for_it(
    btrfs_mount: Path, tmp_path: Path, sig: str, code: int
) -> None:
    """It interrupted the removal and left the snapshot behind; now it takes effect after."""
    app = _subvolume(btrfs_mount)
    (app / "a.txt").write_text("a")
    site = write_site(tmp_path, [str(app)], "btrfs")
    env = {**os.environ, "CASBACKUP_CONFIG": str(site.config)}
    res = subprocess.run(
        [sys.executable, "-c", STOP_DURING_RELEASE.format(sig=sig) + MAIN, "backup", "--app",
         "webapp"], env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == code, res.stderr
    assert "btrfs snapshot" in res.stderr and "removed" in res.stderr
    assert _ours(btrfs_mount) == []


def test_a_missing_source_is_a_warning_and_the_others_are_frozen(
    btrfs_mount: Path, tmp_path: Path
) -> None:
    """One source of two gone: as without file-system snapshots, the other is stored (read
    from its snapshot), the missing one is a warning and the exit code 3. Before, it failed
    with exit 23, after snapshotting the file system's top (holding the missing path)."""
    app = _subvolume(btrfs_mount)
    (app / "data.txt").write_text("kept")
    missing = btrfs_mount / "missing"
    site = write_site(tmp_path, [str(app), str(missing)], "btrfs")
    res = site.cli("backup", "--app", "webapp")
    assert res.code == 3, res.err
    assert f"btrfs snapshot of {app} taken" in res.err, res.err
    assert f"warning: {missing}: source does not exist" in res.err
    assert f"btrfs snapshot of {btrfs_mount} " not in res.err, res.err
    assert _ours(btrfs_mount) == []


def test_no_source_there_fails_before_any_snapshot(btrfs_mount: Path, tmp_path: Path) -> None:
    missing = btrfs_mount / "missing"
    site = write_site(tmp_path, [str(missing)], "btrfs")
    res = site.cli("backup", "--app", "webapp")
    assert_one_error(res, 23, f"source {missing} does not exist")
    assert "snapshot" not in res.err
