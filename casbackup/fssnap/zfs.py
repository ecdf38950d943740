"""ZFS: ``zfs snapshot`` of the dataset that holds a source.

OpenZFS shows a snapshot under ``<mountpoint>/.zfs/snapshot/<name>``; zfs-fuse has no such
folder, so there the snapshot is read through a read-only clone mounted under
``/run/casbackup-fssnap/`` (destroyed with its snapshot; zfs-fuse may answer "dataset is busy"
right after the clone was read, hence the retries).
"""

from __future__ import annotations

import os

from casbackup.fssnap.base import (
    Frozen,
    Leftover,
    NotThatFileSystem,
    ProviderSettings,
    Volume,
    parse_name,
    require_root,
    run_tool,
)
from casbackup.fssnap.mounts import mount_of
from casbackup.repo.snapshot import now_utc

CLONE_ROOT = "/run/casbackup-fssnap"
ZFS_TYPES = ("zfs", "fuse.zfs")  # OpenZFS, zfs-fuse (as /proc/self/mountinfo names them)
BUSY_RETRIES = 8


def _lines(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines() if line.strip()]


class ZfsProvider:
    name = "zfs"

    def locate(self, path: str) -> Volume:
        real = os.path.realpath(path)
        listing = run_tool(
            ["zfs", "list", "-H", "-t", "filesystem", "-o", "name,mountpoint,mounted"], "zfs"
        )
        best: tuple[str, str] | None = None
        for row in _lines(listing):
            # "legacy", "none", "-": not mounted where zfs says; and a dataset that is not
            # mounted now (canmount=noauto, a key not loaded) holds nothing of the folder
            # at its mountpoint, which belongs to the dataset above it
            if len(row) != 3 or not row[1].startswith("/") or row[2] != "yes":
                continue
            name, mp, _mounted = row
            mp = mp.rstrip("/") or "/"
            inside = real == mp or real.startswith(mp.rstrip("/") + "/")
            if inside and (best is None or len(mp) > len(best[1])):
                best = (name, mp)
        if best is None:
            raise NotThatFileSystem(f"{path} is not on a ZFS dataset")
        return Volume(self.name, best[0], best[1])

    def supports(self, path: str) -> bool:
        # From the mount table, not `zfs list`: that needs the zfs-fuse daemon (and root to
        # reach it), and a backup as another user must hear "need root", not "no ZFS here".
        mount = mount_of(path)
        return mount is not None and mount.fstype in ZFS_TYPES

    def freeze(self, volume: Volume, snap_name: str, settings: ProviderSettings) -> Frozen:
        require_root(self.name)
        handle = f"{volume.origin}@{snap_name}"
        time_text, _ = now_utc()
        run_tool(["zfs", "snapshot", handle], self.name)
        visible = os.path.join(volume.root, ".zfs", "snapshot", snap_name)
        if os.path.isdir(visible):  # OpenZFS
            return Frozen(volume, handle, visible, time_text)
        pool = volume.origin.split("/")[0]
        clone = f"{pool}/{snap_name}"
        mount_point = os.path.join(CLONE_ROOT, snap_name)
        try:
            os.makedirs(mount_point, mode=0o700, exist_ok=True)
            run_tool(
                ["zfs", "clone", "-o", "readonly=on", "-o", f"mountpoint={mount_point}",
                 handle, clone], self.name,
            )  # fmt: skip
        except BaseException:
            run_tool(["zfs", "destroy", handle], self.name, retries=BUSY_RETRIES)
            raise
        return Frozen(volume, handle, mount_point, time_text, (clone, mount_point))

    def check(self, frozen: Frozen) -> None:
        return None  # a ZFS snapshot cannot fill up apart from the pool itself

    def release(self, frozen: Frozen) -> None:
        if frozen.extra:
            clone, mount_point = frozen.extra
            run_tool(["zfs", "destroy", clone], self.name, retries=BUSY_RETRIES)
            _rmdir(mount_point)
        run_tool(["zfs", "destroy", frozen.handle], self.name, retries=BUSY_RETRIES)

    def leftovers(self, paths: tuple[str, ...] | None) -> list[Leftover]:
        # Clones first: a snapshot with a clone cannot be destroyed before it.
        out = []
        clones = run_tool(["zfs", "list", "-H", "-t", "filesystem", "-o", "name"], self.name)
        for row in _lines(clones):
            name = row[0].rsplit("/", 1)[-1]
            pid = parse_name(name)
            if pid is not None and "/" in row[0]:
                out.append(Leftover(self.name, row[0], pid, name))
        snaps = run_tool(["zfs", "list", "-H", "-t", "snapshot", "-o", "name"], self.name)
        for row in _lines(snaps):
            name = row[0].partition("@")[2]
            pid = parse_name(name)
            if pid is not None:
                out.append(Leftover(self.name, row[0], pid, name))
        return out

    def remove(self, leftover: Leftover) -> None:
        run_tool(["zfs", "destroy", leftover.handle], self.name, retries=BUSY_RETRIES)
        if "@" not in leftover.handle:
            _rmdir(os.path.join(CLONE_ROOT, leftover.handle.rsplit("/", 1)[-1]))


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass  # still mounted or already gone: an empty folder under /run harms nothing
