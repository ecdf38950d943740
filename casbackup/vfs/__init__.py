"""A snapshot as a file system: one core (``core.Vfs``) behind the FUSE mount and web browsing."""

from casbackup.vfs.core import Entry, OpenFile, Stat, Vfs, snapshot_folder

__all__ = ["Entry", "OpenFile", "Stat", "Vfs", "snapshot_folder"]
