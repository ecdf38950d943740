"""ZFS through zfs-fuse for real (clone path), and OpenZFS's .zfs/snapshot path against a
fake `zfs` that follows the command contract."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

from tests.cli.conftest import assert_one_error
from tests.fssnap.conftest import write_site

# Run in the backup's process after the snapshots exist and before any file is read: the
# live file changes, so only a backup that reads the snapshot stores the old content.
CHANGE_LIVE = (
    "import casbackup.archiver.application as a\n"
    "_run = a.run_backup\n"
    "def run(repo, options, reporter):\n"
    "    for source, _read in options.read_from:\n"
    "        with open(source + '/data.txt', 'w') as f:\n"
    "            f.write('changed after the snapshot\\n')\n"
    "    return _run(repo, options, reporter)\n"
    "a.run_backup = run\n"
)
HANG = (
    "import time, casbackup.archiver.application as a\n"
    "def hang(*args, **kw):\n"
    "    print('READY', flush=True)\n"
    "    time.sleep(600)\n"
    "a.run_backup = hang\n"
)
MAIN = "from casbackup.cli.main import main; main()"


def run_with(prelude: str, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CASBACKUP_CONFIG": str(config)}
    return subprocess.run([sys.executable, "-c", prelude + MAIN, *args], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def kill_inside_backup(config: Path) -> int:
    env = {**os.environ, "CASBACKUP_CONFIG": str(config)}
    child = subprocess.Popen([sys.executable, "-c", HANG + MAIN, "backup", "--app", "webapp"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"READY"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    return child.pid


def zfs_names(kind: str, pool: str) -> list[str]:
    """casbackup's snapshots or clones in this test's pool (another run of these tests may
    have its own pool at the same time, on the same zfs-fuse daemon)."""
    out = subprocess.run(["zfs", "list", "-H", "-r", "-t", kind, "-o", "name", pool],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    return [n for n in out.split() if "casbackup-" in n]


def test_zfs_backup_reads_the_snapshot_and_removes_it(
    zfs_pool: tuple[str, Path], tmp_path: Path
) -> None:
    pool, mnt = zfs_pool
    (mnt / "data.txt").write_text("as at snapshot time\n")
    site = write_site(tmp_path, [str(mnt)], "zfs")
    res = run_with(CHANGE_LIVE, site.config, "backup", "--app", "webapp")
    assert res.returncode == 0, res.stderr
    assert (mnt / "data.txt").read_text() == "changed after the snapshot\n"
    stored = site.cli("cat", f"latest:{mnt}/data.txt", "--app", "webapp")
    assert stored.out == "as at snapshot time\n"
    assert zfs_names("snapshot", pool) == [] and zfs_names("filesystem", pool) == []
    [snap] = json.loads(site.cli("--json", "snapshots").out)
    [record] = snap["fs_snapshots"]
    assert (record["provider"], record["origin"], record["source"]) == ("zfs", pool, str(mnt))
    assert f"{mnt}/data.txt" in site.cli("ls", "latest", "--app", "webapp").out


def test_zfs_killed_backup_leftovers_are_removed_by_the_next_run(
    zfs_pool: tuple[str, Path], tmp_path: Path
) -> None:
    pool, mnt = zfs_pool
    (mnt / "data.txt").write_text("x\n")
    site = write_site(tmp_path, [str(mnt)], "zfs")
    pid = kill_inside_backup(site.config)
    [snap] = zfs_names("snapshot", pool)
    assert snap.startswith(f"{pool}@casbackup-webapp-") and snap.endswith(f"-{pid}")
    assert len(zfs_names("filesystem", pool)) == 1  # the clone it was read through
    res = site.cli("backup", "--app", "webapp")
    assert res.code == 0, res.err
    assert f"removed leftover zfs snapshot {snap}" in res.err
    assert zfs_names("snapshot", pool) == [] and zfs_names("filesystem", pool) == []


def test_zfs_dataset_not_mounted_is_not_the_one_read(
    zfs_pool: tuple[str, Path], tmp_path: Path
) -> None:
    """A dataset that is not mounted (canmount=noauto) still lists its mountpoint: the
    folder there belongs to the dataset above. The snapshot was taken of the unmounted one,
    and the backup stored its (empty) contents instead of the folder's files."""
    pool, mnt = zfs_pool
    subprocess.run(["zfs", "create", "-o", "canmount=noauto", f"{pool}/off"], check=True,
                   capture_output=True)  # fmt: skip
    folder = mnt / "off"
    folder.mkdir(exist_ok=True)
    (folder / "data.txt").write_text("on the pool's top dataset\n")
    site = write_site(tmp_path, [str(folder)], "zfs")
    res = site.cli("backup", "--app", "webapp")
    assert res.code == 0, res.err
    [snap] = json.loads(site.cli("--json", "snapshots").out)
    assert [r["origin"] for r in snap["fs_snapshots"]] == [pool]
    stored = site.cli("cat", f"latest:{folder}/data.txt", "--app", "webapp")
    assert stored.out == "on the pool's top dataset\n", stored.err
    assert zfs_names("snapshot", pool) == [] and zfs_names("filesystem", pool) == []


def test_zfs_source_elsewhere_is_a_one_line_error(
    zfs_pool: tuple[str, Path], tmp_path: Path
) -> None:
    src = tmp_path / "plain"
    src.mkdir()
    site = write_site(tmp_path, [str(src)], "zfs")
    assert_one_error(site.cli("backup", "--app", "webapp"), 31, f"{src} is not on a ZFS dataset")


FAKE_ZFS = r"""#!/bin/sh
# OpenZFS's command contract, for the .zfs/snapshot path zfs-fuse lacks.
echo "zfs $*" >> "$FAKE_LOG"
case "$1" in
list)
    case "$*" in
    *"-t filesystem -o name,mountpoint,mounted"*)
        printf 'tank\t/tank-none\tyes\ntank/app\t%s\tyes\n' "$FAKE_MNT" ;;
    *"-t filesystem -o name"*) printf 'tank\ntank/app\n' ;;
    *"-t snapshot"*) ls "$FAKE_MNT/.zfs/snapshot" 2>/dev/null | sed 's/^/tank\/app@/' ;;
    esac ;;
snapshot)
    [ -n "$FAKE_FAIL_SNAPSHOT" ] && { echo "cannot create snapshot '$2': out of space" >&2; exit 1; }
    mkdir -p "$FAKE_MNT/.zfs/snapshot/${2#*@}" && cp -a "$FAKE_MNT/data.txt" "$FAKE_MNT/.zfs/snapshot/${2#*@}/" ;;
destroy)
    rm -rf "$FAKE_MNT/.zfs/snapshot/${2#*@}" ;;
*) echo "unexpected: $*" >&2; exit 2 ;;
esac
"""


def _fake(tmp_path: Path, mnt: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "zfs"
    tool.write_text(FAKE_ZFS)
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_MNT": str(mnt),
            "FAKE_LOG": str(tmp_path / "zfs.log")}  # fmt: skip


def test_openzfs_reads_through_dot_zfs_snapshot(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        import pytest

        pytest.skip("snapshots need root")
    mnt = tmp_path / "app"
    mnt.mkdir()
    (mnt / "data.txt").write_text("as at snapshot time\n")
    env = _fake(tmp_path, mnt)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    site = write_site(tmp_path, [str(mnt)], "zfs")
    res = run_with(CHANGE_LIVE, site.config, "backup", "--app", "webapp")
    assert res.returncode == 0, res.stderr
    assert site.cli("cat", f"latest:{mnt}/data.txt", "--app", "webapp").out == (
        "as at snapshot time\n"
    )
    log = (tmp_path / "zfs.log").read_text().splitlines()
    made = [line for line in log if line.startswith("zfs snapshot ")]
    [name] = [line.split()[2] for line in made]
    assert name.startswith("tank/app@casbackup-webapp-")
    assert f"zfs destroy {name}" in log and not any(" clone " in line for line in log)
    assert not (mnt / ".zfs" / "snapshot" / name.split("@")[1]).exists()


def test_zfs_tool_failure_surfaces_stderr(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        import pytest

        pytest.skip("snapshots need root")
    mnt = tmp_path / "app"
    mnt.mkdir()
    (mnt / "data.txt").write_text("x")
    for k, v in {**_fake(tmp_path, mnt), "FAKE_FAIL_SNAPSHOT": "1"}.items():
        monkeypatch.setenv(k, v)
    site = write_site(tmp_path, [str(mnt)], "zfs")
    res = site.cli("backup", "--app", "webapp")
    assert_one_error(res, 31, "zfs snapshot tank/app@casbackup-webapp-", "out of space")
    assert json.loads(site.cli("--json", "snapshots").out) == []
