"""LVM: ``lvcreate --snapshot`` of the logical volume mounted under a source, mounted read-only.

The snapshot's size comes from the config (`[snapshots] lvm_snapshot_size`, "1G" or
"20%ORIGIN"). A classic snapshot that runs out of space becomes invalid and reads fail, so
`check` asks ``lvs`` after the files were read and before the backup is saved: a full
snapshot fails the backup loudly (exit 31) instead of leaving unreadable files behind.
Reports are read as lvm2's JSON (``lvs --reportformat json``).
"""

from __future__ import annotations

import json
import os
from typing import Any

from casbackup.fssnap.base import (
    Frozen,
    Leftover,
    NotThatFileSystem,
    ProviderSettings,
    SnapshotInvalid,
    ToolFailed,
    ToolMissing,
    Volume,
    parse_name,
    require_root,
    run_tool,
)
from casbackup.fssnap.mounts import mount_of
from casbackup.repo.snapshot import now_utc

MOUNT_ROOT = "/run/casbackup-fssnap"


def lvs(*args: str) -> list[dict[str, Any]]:
    """Rows of ``lvs --reportformat json``; `ToolFailed` on output that is not lvm2's JSON."""
    text = run_tool(["lvs", "--reportformat", "json", *args], "lvm")
    try:
        doc = json.loads(text)
        rows = [row for part in doc["report"] for row in part.get("lv", [])]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ToolFailed("lvs answered with something that is not an lvm2 JSON report") from None
    return [r for r in rows if isinstance(r, dict)]


class LvmProvider:
    name = "lvm"

    def locate(self, path: str) -> Volume:
        mount = mount_of(path)
        if mount is None or not mount.source.startswith("/dev/"):
            raise NotThatFileSystem(f"{path} is not on an LVM logical volume")
        try:
            rows = lvs("-o", "lv_name,vg_name", mount.source)
        except ToolMissing:
            raise
        except ToolFailed:
            raise NotThatFileSystem(
                f"{path} is not on an LVM logical volume ({mount.source})"
            ) from None
        if len(rows) != 1 or not rows[0].get("lv_name") or not rows[0].get("vg_name"):
            raise NotThatFileSystem(f"{path} is not on an LVM logical volume ({mount.source})")
        origin = f"{rows[0]['vg_name']}/{rows[0]['lv_name']}"
        return Volume(self.name, origin, mount.mount_point)

    def supports(self, path: str) -> bool:
        try:
            self.locate(path)
        except (NotThatFileSystem, ToolMissing, ToolFailed):
            return False
        return True

    def freeze(self, volume: Volume, snap_name: str, settings: ProviderSettings) -> Frozen:
        require_root(self.name)
        vg = volume.origin.split("/")[0]
        size = settings.lvm_snapshot_size
        size_args = ["--extents", size] if "%" in size else ["--size", size]
        time_text, _ = now_utc()
        try:
            run_tool(
                ["lvcreate", "--snapshot", "--name", snap_name, *size_args, volume.origin], "lvm"
            )
        except ToolFailed as exc:
            if "insufficient free" in str(exc).lower():
                raise ToolFailed(
                    f"not enough free extents in volume group {vg} for a {size} snapshot of "
                    f"{volume.origin}: {exc}"
                ) from None
            raise
        handle = f"{vg}/{snap_name}"
        mount_point = os.path.join(MOUNT_ROOT, snap_name)
        fstype = mount_of(volume.root)
        options = "ro,nouuid" if fstype is not None and fstype.fstype == "xfs" else "ro"
        try:
            os.makedirs(mount_point, mode=0o700, exist_ok=True)
            run_tool(["mount", "-o", options, f"/dev/{handle}", mount_point], "lvm")
        except BaseException:
            _rmdir(mount_point)
            run_tool(["lvremove", "-f", handle], "lvm")
            raise
        return Frozen(volume, handle, mount_point, time_text, (mount_point,))

    def check(self, frozen: Frozen) -> None:
        rows = lvs("-o", "lv_name,lv_attr,data_percent", frozen.handle)
        for row in rows:
            attr = str(row.get("lv_attr", ""))
            try:
                used = float(row.get("data_percent") or 0)
            except ValueError:
                used = 0.0
            if (len(attr) > 4 and attr[4] == "I") or used >= 100.0:
                raise SnapshotInvalid(
                    f"LVM snapshot {frozen.handle} of {frozen.volume.origin} filled up during "
                    "the backup, so files read from it cannot be trusted; no snapshot was "
                    "saved: raise [snapshots] lvm_snapshot_size"
                )

    def release(self, frozen: Frozen) -> None:
        self._unmount(frozen.extra[0] if frozen.extra else None)
        run_tool(["lvremove", "-f", frozen.handle], "lvm")

    def leftovers(self, paths: tuple[str, ...] | None) -> list[Leftover]:
        out = []
        for row in lvs("-o", "lv_name,vg_name"):
            pid = parse_name(str(row.get("lv_name", "")))
            if pid is not None:
                lv = str(row["lv_name"])
                out.append(Leftover(self.name, f"{row.get('vg_name')}/{lv}", pid, lv))
        return out

    def remove(self, leftover: Leftover) -> None:
        self._unmount(os.path.join(MOUNT_ROOT, leftover.handle.split("/", 1)[1]))
        run_tool(["lvremove", "-f", leftover.handle], "lvm")

    def _unmount(self, mount_point: str | None) -> None:
        if mount_point is None:
            return
        if not os.path.isdir(mount_point):
            return
        # Not os.path.ismount: it misses a mount of the same device (a bind mount); umount
        # itself knows, and "not mounted" is the answer when a crash came before the mount.
        try:
            run_tool(["umount", mount_point], "lvm")
        except ToolFailed as exc:
            if "not mounted" not in str(exc):
                raise
        _rmdir(mount_point)


def _rmdir(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass
