"""Btrfs: a read-only snapshot of the subvolume that holds a source.

A subvolume's top folder has inode 256 (BTRFS_FIRST_FREE_OBJECTID), so the subvolume of a
path is its nearest ancestor with that inode. Snapshots go to ``.casbackup-fssnap/`` at the
file system's mount point: a snapshot must stay on the same file system, and keeping them
out of the subvolume itself keeps them out of the next snapshot of it.
"""

from __future__ import annotations

import os
import stat

from casbackup.errors import SnapshotProviderError
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
from casbackup.fssnap.mounts import Mount, mount_of, mounts
from casbackup.repo.snapshot import now_utc

SUBVOLUME_ROOT_INODE = 256
SNAP_DIR = ".casbackup-fssnap"


class BtrfsProvider:
    name = "btrfs"

    def locate(self, path: str) -> Volume:
        """The subvolume holding `path`. A snapshot leaves subvolumes nested in it empty, so
        a source that holds one is refused (`NotThatFileSystem`) rather than backed up empty.
        """
        real = os.path.realpath(path)
        mount = mount_of(real)
        if mount is None or mount.fstype != "btrfs":
            kind = mount.fstype if mount else "unknown"
            raise NotThatFileSystem(f"{path} is not on a Btrfs file system (it is on {kind})")
        top = mount.mount_point
        current = real if os.path.isdir(real) else os.path.dirname(real)
        while True:
            try:
                st = os.stat(current)
            except OSError as exc:
                raise NotThatFileSystem(f"cannot inspect {current}: {exc.strerror}") from None
            if st.st_ino == SUBVOLUME_ROOT_INODE or current == top or current == "/":
                break
            current = os.path.dirname(current)
        for nested in self._nested(current, mount):
            if nested == real or nested.startswith(real.rstrip("/") + "/"):
                raise NotThatFileSystem(
                    f"{path} holds the Btrfs subvolume {nested}, which a snapshot of {current} "
                    "would leave empty; make it a source of its own application or set "
                    'snapshot = "none"'
                )
        return Volume(self.name, current, current)

    def supports(self, path: str) -> bool:
        mount = mount_of(path)
        return mount is not None and mount.fstype == "btrfs"

    def _nested(self, subvolume: str, mount: Mount) -> list[str]:
        """Subvolumes directly inside `subvolume`, as paths under this mount (not ours)."""
        out = []
        listing = run_tool(["btrfs", "subvolume", "list", "-o", subvolume], self.name)
        for line in listing.splitlines():
            _, sep, rel = line.partition(" path ")
            if not sep:
                continue
            # paths are relative to the file system's top; the mount shows mount.root of it
            inside = os.path.relpath("/" + rel, mount.root)
            if inside.startswith(".."):
                continue
            full = os.path.normpath(os.path.join(mount.mount_point, inside))
            if os.path.basename(os.path.dirname(full)) != SNAP_DIR:
                out.append(full)
        return out

    def freeze(self, volume: Volume, snap_name: str, settings: ProviderSettings) -> Frozen:
        require_root(self.name)
        mount = mount_of(volume.root)
        assert mount is not None
        folder = os.path.join(mount.mount_point, SNAP_DIR)
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
        except OSError as exc:
            raise NotThatFileSystem(f"cannot create {folder}: {exc.strerror}") from None
        if not _trusted_folder(folder):
            raise SnapshotProviderError(
                f"{folder} is not a folder owned by root: refusing to put snapshots there"
            )
        target = os.path.join(folder, snap_name)
        time_text, _ = now_utc()
        run_tool(["btrfs", "subvolume", "snapshot", "-r", volume.root, target], self.name)
        return Frozen(volume, target, target, time_text)

    def check(self, frozen: Frozen) -> None:
        return None  # a Btrfs snapshot cannot fill up apart from the file system itself

    def release(self, frozen: Frozen) -> None:
        self._delete(frozen.handle)

    def leftovers(self, paths: tuple[str, ...] | None) -> list[Leftover]:
        if paths is None:
            points = {m.mount_point for m in mounts() if m.fstype == "btrfs"}
        else:
            found = (mount_of(p) for p in paths)
            points = {m.mount_point for m in found if m is not None and m.fstype == "btrfs"}
        out = []
        for point in sorted(points):
            folder = os.path.join(point, SNAP_DIR)
            if not _trusted_folder(folder):
                continue  # absent, or planted by someone else: nothing of ours in it
            try:
                names = sorted(os.listdir(folder))
            except OSError as exc:
                raise SnapshotProviderError(
                    f"cannot list {folder}: {exc.strerror} (btrfs snapshots need root)"
                ) from None
            for name in names:
                pid = parse_name(name)
                path = os.path.join(folder, name)
                # only a subvolume (not a symlink to one elsewhere) is deleted
                if pid is not None and _is_subvolume(path):
                    out.append(Leftover(self.name, path, pid, name))
        return out

    def remove(self, leftover: Leftover) -> None:
        self._delete(leftover.handle)

    def _delete(self, path: str) -> None:
        if not _is_subvolume(path):
            return
        run_tool(["btrfs", "subvolume", "delete", path], self.name)


def _trusted_folder(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == 0 and not st.st_mode & 0o022


def _is_subvolume(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_ino == SUBVOLUME_ROOT_INODE
