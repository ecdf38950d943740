"""File-system snapshots (Btrfs, ZFS, LVM) that freeze an application's sources for a backup.

Not to be confused with backup snapshots (repo/snapshot.py): these are the file system's own
point-in-time copies, taken before a backup reads anything and removed when it ends. The
backup reads each source from its frozen copy and records the original paths.

- `base`: the `Provider` interface, the `Frozen` value, naming of casbackup's snapshots and
  running the tools.
- `mounts`: which mount holds a path (/proc/self/mountinfo).
- `btrfs`, `zfs`, `lvm`: the providers.
- `session`: `frozen_sources`, the context manager a backup runs inside, and `cleanup`.
"""
