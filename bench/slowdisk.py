"""A slower disk for benchmarks: the kernel's block I/O throttle on the reads of the timed tools.

Issue 17 asks for the re-backup targets "on a slow disk as on a fast one". Waiting for a slow
day is not a method, so this makes one: every timed command (and everything it starts) runs
in a block-I/O control group whose reads from the disk under the bench's work folder are
capped to ``iops`` requests and ``mib_s`` MiB a second. The default, 3,000 IOPS and 125 MiB/s,
is the baseline of a general-purpose cloud volume (AWS gp3), a common "slow" disk for the
servers casbackup backs up. Only reads are capped: writes reach the disk through the kernel's
writeback, which cgroup v1 does not charge to the tool, and both tools are treated alike.

Uses cgroup v1's ``blkio.throttle.read_{iops,bps}_device`` where the blkio hierarchy is
mounted, else cgroup v2's ``io.max`` (``riops``/``rbps``) where the ``io`` controller can be
enabled; needs root. The cap applies to the whole disk (a partition's parent), as the
throttle does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

V1_ROOT = Path("/sys/fs/cgroup/blkio")
V2_ROOT = Path("/sys/fs/cgroup")
GROUP = "casbackup-bench-slowdisk"
DEFAULT = "3000:125"


class SlowDiskError(Exception):
    """The throttle cannot be set up here (no blkio/io controller, not root, no device)."""


@dataclass(frozen=True)
class SlowDisk:
    """A read cap on one disk; ``enter()`` moves the calling process into it (for
    ``subprocess.Popen(preexec_fn=...)``: the tool and its children are capped)."""

    device: str  # "major:minor" of the whole disk
    iops: int
    mib_s: int
    procs_file: Path  # the group's cgroup.procs

    def describe(self) -> str:
        """E.g. "reads capped at 3000 IOPS and 125 MiB/s on disk 254:0 (cgroup v1 blkio)"."""
        kind = "cgroup v1 blkio" if V1_ROOT in self.procs_file.parents else "cgroup v2 io.max"
        return f"reads capped at {self.iops} IOPS and {self.mib_s} MiB/s on disk {self.device} ({kind})"

    def enter(self) -> None:
        with open(self.procs_file, "w") as f:
            f.write(str(os.getpid()))


def parse(spec: str) -> tuple[int, int]:
    """ "IOPS:MIB_S" -> (iops, mib_s); ValueError for anything else."""
    iops_text, sep, mib_text = spec.partition(":")
    if not sep or not iops_text.isdigit() or not mib_text.isdigit():
        raise ValueError(f"--slow-disk {spec!r}: give IOPS:MIB_S, e.g. {DEFAULT}")
    iops, mib_s = int(iops_text), int(mib_text)
    if iops < 1 or mib_s < 1:
        raise ValueError(f"--slow-disk {spec!r}: both must be positive")
    return iops, mib_s


def whole_disk(path: Path) -> str:
    """ "major:minor" of the disk holding ``path`` (its parent disk when it is a partition).
    Raises SlowDiskError when it is not a block device (tmpfs, overlay without one)."""
    dev = os.stat(path).st_dev
    node = f"{os.major(dev)}:{os.minor(dev)}"
    sys_dev = Path("/sys/dev/block") / node
    if not sys_dev.exists():
        raise SlowDiskError(f"{path} is not on a block device ({node}): nothing to throttle")
    if (sys_dev / "partition").exists():
        node = (sys_dev.resolve().parent / "dev").read_text().strip()
    return node


def set_up(path: Path, spec: str = DEFAULT) -> SlowDisk:
    """The throttle for the disk under ``path``, created (or updated) now.
    Raises ValueError (bad spec) or SlowDiskError."""
    iops, mib_s = parse(spec)
    device = whole_disk(path)
    try:
        if (V1_ROOT / "blkio.throttle.read_iops_device").exists():
            group = V1_ROOT / GROUP
            group.mkdir(exist_ok=True)
            (group / "blkio.throttle.read_iops_device").write_text(f"{device} {iops}\n")
            (group / "blkio.throttle.read_bps_device").write_text(f"{device} {mib_s << 20}\n")
            return SlowDisk(device, iops, mib_s, group / "cgroup.procs")
        controllers = V2_ROOT / "cgroup.controllers"
        if controllers.exists() and "io" in controllers.read_text().split():
            (V2_ROOT / "cgroup.subtree_control").write_text("+io\n")
            group = V2_ROOT / GROUP
            group.mkdir(exist_ok=True)
            (group / "io.max").write_text(f"{device} riops={iops} rbps={mib_s << 20}\n")
            return SlowDisk(device, iops, mib_s, group / "cgroup.procs")
    except OSError as exc:
        raise SlowDiskError(f"cannot set the read cap up ({exc.strerror}): run as root") from None
    raise SlowDiskError("no block I/O throttle here (neither cgroup v1 blkio nor v2 io)")
