"""LVM for real, where the kernel has device-mapper: a volume group on a loop file, an ext4
logical volume mounted, an application on it, the CLI in subprocesses.

This machine kind has no device-mapper (``lvcreate`` fails with "Required device-mapper
target(s) not detected"): these tests then skip with that reason, under CI too, and the
command-contract tests in test_lvm.py stand in for them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.cli.conftest import assert_one_error
from tests.fssnap.conftest import write_site
from tests.fssnap.test_zfs import CHANGE_LIVE, kill_inside_backup, run_with


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


@dataclass
class RealLvm:
    vg: str
    mnt: Path  # where vg/data (ext4) is mounted

    def ours(self) -> list[str]:
        out = _run("lvs", "--noheadings", "-o", "lv_name", self.vg).stdout
        return [n for n in out.split() if n.startswith("casbackup-")]


@pytest.fixture
def real_lvm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealLvm]:
    if os.geteuid() != 0:
        pytest.skip("real LVM tests need root")
    for tool in ("pvcreate", "vgcreate", "lvcreate", "lvremove", "lvs", "dmsetup", "losetup",
                 "mkfs.ext4"):  # fmt: skip
        if shutil.which(tool) is None:
            pytest.skip(f"'{tool}' is not installed (make sysdeps installs lvm2)")
    probe = _run("dmsetup", "version")
    if probe.returncode != 0:
        pytest.skip("no device-mapper in this kernel: the LVM command-contract tests stand in")
    base = tmp_path_factory.mktemp("lvm")
    image, mnt = base / "pv.img", base / "mnt"
    mnt.mkdir()
    with open(image, "wb") as f:
        f.truncate(256 * 1024 * 1024)
    attached = _run("losetup", "-f", "--show", str(image))
    if attached.returncode != 0:
        image.unlink()
        pytest.skip(f"no loop device: {attached.stderr.strip()}")
    loop = attached.stdout.strip()
    vg = f"cbtvg{uuid.uuid4().hex[:8]}"
    try:
        for step in (("pvcreate", "-q", loop), ("vgcreate", "-q", vg, loop),
                     ("lvcreate", "-q", "-L", "96M", "-n", "data", vg)):  # fmt: skip
            done = _run(*step)
            if done.returncode != 0:
                pytest.skip(f"{step[0]} failed: {' '.join(done.stderr.split())[:300]}")
        device = f"/dev/{vg}/data"
        assert _run("mkfs.ext4", "-q", device).returncode == 0
        assert _run("mount", device, str(mnt)).returncode == 0
        yield RealLvm(vg, mnt)
    finally:
        _run("umount", str(mnt))
        _run("vgremove", "-q", "-f", vg)
        _run("pvremove", "-q", loop)
        _run("losetup", "-d", loop)
        image.unlink(missing_ok=True)


def test_real_lvm_backup_reads_the_snapshot_and_removes_it(
    real_lvm: RealLvm, tmp_path: Path
) -> None:
    (real_lvm.mnt / "data.txt").write_text("as at snapshot time\n")
    site = write_site(tmp_path, [str(real_lvm.mnt)], "lvm", extra='lvm_snapshot_size = "32M"\n')
    res = run_with(CHANGE_LIVE, site.config, "backup", "--app", "webapp")
    assert res.returncode == 0, res.stderr
    assert (real_lvm.mnt / "data.txt").read_text() == "changed after the snapshot\n"
    stored = site.cli("cat", f"latest:{real_lvm.mnt}/data.txt", "--app", "webapp")
    assert stored.out == "as at snapshot time\n", stored.err
    assert real_lvm.ours() == []
    [snap] = json.loads(site.cli("--json", "snapshots").out)
    [record] = snap["fs_snapshots"]
    assert (record["provider"], record["origin"]) == ("lvm", f"{real_lvm.vg}/data")
    listing = site.cli("ls", "latest", "--app", "webapp").out
    assert f"{real_lvm.mnt}/data.txt" in listing and "casbackup-fssnap" not in listing


def test_real_lvm_killed_backup_leftover_is_removed_by_the_next_run(
    real_lvm: RealLvm, tmp_path: Path
) -> None:
    (real_lvm.mnt / "data.txt").write_text("x\n")
    site = write_site(tmp_path, [str(real_lvm.mnt)], "lvm", extra='lvm_snapshot_size = "32M"\n')
    pid = kill_inside_backup(site.config)
    [left] = real_lvm.ours()
    assert left.startswith("casbackup-webapp-") and left.endswith(f"-{pid}")
    res = site.cli("backup", "--app", "webapp")
    assert res.code == 0, res.err
    assert f"removed leftover lvm snapshot {real_lvm.vg}/{left}" in res.err
    assert real_lvm.ours() == []


# Inside the backup, once the snapshot exists: write more to the live volume than the
# snapshot can hold (it keeps the old blocks of whatever changes), so it becomes invalid.
FILL_UP = (
    "import os, casbackup.archiver.application as a\n"
    "_run = a.run_backup\n"
    "def run(repo, options, reporter):\n"
    "    for source, _read in options.read_from:\n"
    "        with open(source + '/big.bin', 'r+b') as f:\n"
    "            f.write(os.urandom(24 * 1024 * 1024))\n"
    "            os.fsync(f.fileno())\n"
    "    return _run(repo, options, reporter)\n"
    "a.run_backup = run\n"
)


def test_real_lvm_snapshot_that_fills_up_fails_the_backup(
    real_lvm: RealLvm, tmp_path: Path
) -> None:
    with open(real_lvm.mnt / "big.bin", "wb") as f:
        f.write(b"\0" * 24 * 1024 * 1024)
        os.fsync(f.fileno())
    site = write_site(tmp_path, [str(real_lvm.mnt)], "lvm", extra='lvm_snapshot_size = "8M"\n')
    res = run_with(FILL_UP, site.config, "backup", "--app", "webapp")
    assert res.returncode == 31, res.stderr
    assert "filled up during the backup" in res.stderr
    assert json.loads(site.cli("--json", "snapshots").out) == []
    assert real_lvm.ours() == []


def test_real_lvm_not_enough_free_extents(real_lvm: RealLvm, tmp_path: Path) -> None:
    site = write_site(tmp_path, [str(real_lvm.mnt)], "lvm", extra='lvm_snapshot_size = "1G"\n')
    res = site.cli("backup", "--app", "webapp")
    assert_one_error(res, 31, f"not enough free extents in volume group {real_lvm.vg}")
    assert real_lvm.ours() == []
