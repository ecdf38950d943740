"""The restore walk's bookkeeping: folders held open, the walk's stack, hard-link groups,
batches for the writers (restore.py explains the order of events they protect)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING

from casbackup.archiver.writers import BatchItem, Written
from casbackup.repo.tree import Node

if TYPE_CHECKING:
    from casbackup.archiver.restore_files import FileSender


def has_default_acl(fd: int) -> bool:
    try:
        os.getxattr(fd, "system.posix_acl_default")
    except OSError:  # ENODATA, or a file system without ACLs
        return False
    return True


class Folder:
    """A folder of the target being restored into.

    Its fd stays open until the walk has left it (``walked``) and every batch with files
    in it (and every hard link waiting for its first name) is back (``batches == 0``);
    then its metadata is applied and the fd closed, on whichever thread sees the last. A
    batch lost with its writer never counts as back: the folder stays open until the
    restore's cleanup has removed the temporary files that batch may have left in it.
    """

    __slots__ = (
        "fd", "node", "rel_path", "batches", "walked", "saved_mode", "inherits", "created"
    )  # fmt: skip

    def __init__(
        self,
        fd: int,
        node: Node | None,
        rel_path: bytes,
        saved_mode: int | None,
        *,
        created: bool = False,
        inherits: bool | None = None,
    ) -> None:
        self.fd = fd
        # Whether it has a default ACL, which new files in it inherit (asked once per
        # folder, so that files are checked for inherited ACLs only where there can be any).
        # Its own recorded attributes are applied after its entries, so this holds until then.
        # ``inherits`` False: the caller knows (a folder it just made in a folder without
        # one), and the getxattr is saved.
        self.inherits = has_default_acl(fd) if inherits is None else inherits
        # Made by this restore (open_dir): no entry of its names can exist but the restore's
        # own, so the writers skip their check that a file's name is free (``FileJob.fresh``).
        self.created = created
        self.node = node  # None: the target itself, which run() opens and closes
        self.rel_path = rel_path
        self.batches = 0
        self.walked = False
        # The mode an existing folder had before the restore made it writable: put back
        # if the restore does not get to apply the node's own mode.
        self.saved_mode = saved_mode


class Frame:
    """A folder on the walk's explicit stack (no recursion: any depth a tree holds)."""

    __slots__ = ("children", "snap_path", "rel_path", "node", "take", "forced", "dir", "parent")

    def __init__(
        self,
        children: Iterator[Node],
        snap_path: bytes,
        rel_path: bytes,
        node: Node | None,
        take: bool,
        forced: bool,
        folder: Folder | None,
        parent: Frame | None,
    ) -> None:
        self.children = children
        self.snap_path, self.rel_path, self.node = snap_path, rel_path, node
        self.take = take  # restore the folder itself (else only what matches below it)
        self.forced = forced  # an include matched above: everything below is taken
        self.dir = folder  # None until created: --include makes only folders with matches
        self.parent = parent


class LinkGroup:
    """A hard-link group: its first name, written by a writer; the other names wait for it."""

    __slots__ = ("source", "state", "waiting")

    def __init__(self, source: bytes) -> None:
        self.source = source  # path of the first name, relative to the target
        self.state: str | None = None  # None: being written; "" done; else why it failed
        self.waiting: list[tuple[Folder, Node, bytes]] = []


class Batch:
    """Files gathered for one message to a writer, and the folders they go in."""

    __slots__ = ("dirs", "slots", "nodes", "rel_paths", "folders", "bytes")

    def __init__(self) -> None:
        self.dirs: list[Folder] = []
        self.slots: dict[int, int] = {}  # id(folder) -> its index in dirs
        self.nodes: list[Node] = []
        self.rel_paths: list[bytes] = []
        self.folders: list[int] = []
        self.bytes = 0


class BatchDone:
    """Called once with a batch's outcomes; until then its temporary names may exist."""

    __slots__ = ("restorer", "dirs", "items", "nodes", "rel_paths")

    def __init__(
        self,
        restorer: FileSender,
        dirs: list[Folder],
        items: list[BatchItem],
        nodes: list[Node],
        rel_paths: list[bytes],
    ) -> None:
        self.restorer, self.dirs, self.items = restorer, dirs, items
        self.nodes, self.rel_paths = nodes, rel_paths

    def __call__(self, results: list[Written] | None) -> None:
        self.restorer.batch_done(self, results)

    def from_future(self, future: Future[list[Written]]) -> None:
        results: list[Written] | None = None
        if not future.cancelled():  # cancelled: the restore stopped before this batch ran
            try:
                results = future.result()
            except BaseException as exc:  # noqa: BLE001 - a bug in a writer: stop the restore
                self.restorer.stop(exc)
        self(results)
