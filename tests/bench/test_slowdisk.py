"""bench/slowdisk.py: the read cap's spec and the disk it applies to (the cap itself is the
kernel's; bench.run --slow-disk reports what it set)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import slowdisk


def test_spec_is_iops_and_mib_per_second() -> None:
    assert slowdisk.parse("3000:125") == (3000, 125)
    assert slowdisk.parse(slowdisk.DEFAULT) == (3000, 125)
    for bad in ("", "3000", "3000:", ":125", "0:125", "3000:0", "-1:5", "3k:125", "1:2:3"):
        with pytest.raises(ValueError, match="IOPS:MIB_S|positive"):
            slowdisk.parse(bad)


def test_the_whole_disk_is_named_not_the_file_system() -> None:
    here = Path(__file__)
    dev = os.stat(here).st_dev
    node = Path("/sys/dev/block") / f"{os.major(dev)}:{os.minor(dev)}"
    if not node.exists():
        pytest.skip("the tests' folder is not on a block device")
    disk = slowdisk.whole_disk(here)
    assert (Path("/sys/dev/block") / disk).exists()
    assert not (Path("/sys/dev/block") / disk / "partition").exists()


def test_a_folder_on_no_block_device_is_refused() -> None:
    with pytest.raises(slowdisk.SlowDiskError, match="not on a block device"):
        slowdisk.whole_disk(Path("/proc/self"))


def test_every_timed_command_of_bench_run_goes_through_one_place() -> None:
    """bench/run.py's backups and restores once called run_timed themselves and ran
    uncapped under --slow-disk while the floors were capped (2026-12-02: an unchanged
    re-backup in 1.2 s beside a 4.5 s capped stat walk). Only ``Bench.timed`` may call it."""
    import ast

    tree = ast.parse((Path(__file__).parents[2] / "bench" / "run.py").read_text())
    callers = [
        fn.name
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef)
        for node in ast.walk(fn)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run_timed"
    ]
    assert callers == ["timed"]
