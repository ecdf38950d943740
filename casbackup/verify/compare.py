"""Compare a restored tree on disk with the snapshot it came from.

Folder by folder: the names on disk must be exactly the names in the snapshot's tree (nothing
missing, nothing extra), each entry must have the recorded type, files the recorded size and,
re-read from disk, the recorded BLAKE3; symlinks the recorded target. Only one folder's listing
and one read buffer are in memory at a time, so memory does not grow with the snapshot.

This deliberately re-reads what the restore just wrote: the restore checks the bytes it got from
the repository, this checks the bytes that reached the disk, which is what a recovery gets.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import blake3

from casbackup.errors import CasError, StorageError
from casbackup.repo.ids import BlobId
from casbackup.repo.nodecheck import file_node_problem
from casbackup.repo.repository import Repository
from casbackup.repo.tree import Node, NodeKind, kind_of_mode

READ_SIZE = 1 << 20


@dataclass
class Comparison:
    files_checked: int = 0
    bytes_checked: int = 0
    entries: int = 0
    problems: dict[str, str] = field(default_factory=dict)  # snapshot path -> first problem
    warnings: list[str] = field(default_factory=list)

    def fail(self, path: str, problem: str) -> None:
        self.problems.setdefault(path, problem)


_BUFFERS = threading.local()


def file_hash(path: str) -> tuple[bytes, int]:
    """BLAKE3 and size of a file, read in pieces of READ_SIZE into one buffer per thread (a
    fresh 1 MiB buffer per file cost an mmap, page faults and an munmap each: a third of the
    CPU of hashing a tree of small files). Raises OSError."""
    hasher = blake3.blake3()
    size = 0
    buf = getattr(_BUFFERS, "buf", None)
    if buf is None:
        buf = _BUFFERS.buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            hasher.update(view[:n])
            size += n
    return hasher.digest(), size


def open_up(path: str | bytes, bits: int) -> bool:
    """Give the owner ``bits`` on an entry of the sandbox that we own and that lacks them;
    True when it changed. A snapshot's 0000 folder or file comes back with its mode, and
    a verification not run as root (the service's own user) could not read it back:
    'folder was not restored: Permission denied', a sound snapshot recorded as FAILED.
    Root reads through modes and never needs this. Symlinks are left alone."""
    try:
        st = os.lstat(path)
        if st.st_uid != os.geteuid() or stat.S_ISLNK(st.st_mode) or st.st_mode & bits == bits:
            return False
        os.chmod(path, stat.S_IMODE(st.st_mode) | bits)
    except OSError:
        return False
    return True


def compare_tree(
    repo: Repository,
    root: BlobId,
    disk_root: str,
    *,
    can_make_devices: bool,
    on_file: Callable[[int], None] | None = None,
    known: dict[str, str] | None = None,
) -> Comparison:
    """Compare the snapshot tree `root` with the folder `disk_root` it was restored into.

    `known` are problems found before (by the restore); they are kept as each path's first.
    """
    out = Comparison(problems=dict(known or {}))
    stack: list[tuple[BlobId, bytes]] = [(root, b"")]
    while stack:
        tree_id, prefix = stack.pop()
        shown = os.fsdecode(prefix) or "/"
        try:
            nodes = repo.load_tree(tree_id)
        except StorageError:
            raise  # the store failed (permissions, I/O): that says nothing of the snapshot
        except CasError as exc:
            out.fail(shown, f"folder listing is unreadable: {exc}")
            continue
        disk_dir = os.path.join(disk_root, os.fsdecode(prefix).lstrip("/"))
        if os.geteuid() != 0:
            open_up(disk_dir, stat.S_IRUSR | stat.S_IXUSR)
        try:
            on_disk = set(os.listdir(os.fsencode(disk_dir)))
        except OSError as exc:
            out.fail(shown, f"folder was not restored: {exc.strerror}")
            continue
        for node in nodes:
            path = prefix + b"/" + node.name
            on_disk.discard(node.name)
            out.entries += 1
            _compare_node(node, path, os.path.join(os.fsencode(disk_dir), node.name), out,
                          can_make_devices)  # fmt: skip
            if node.kind == NodeKind.FILE and on_file is not None:
                on_file(node.size)
            if node.kind == NodeKind.DIR and node.subtree is not None:
                stack.append((node.subtree, path))
        for extra in sorted(on_disk):
            out.fail(os.fsdecode(prefix + b"/" + extra), "is on disk but not in the snapshot")
    return out


def _compare_node(
    node: Node, path: bytes, disk: bytes, out: Comparison, can_make_devices: bool
) -> None:
    shown = os.fsdecode(path)
    try:
        st = os.lstat(disk)
    except OSError:
        if node.kind == NodeKind.SOCKET or (
            node.kind in (NodeKind.CHARDEV, NodeKind.BLOCKDEV) and not can_make_devices
        ):
            # Restore cannot recreate these here; that is a limit of the sandbox, not damage.
            out.warnings.append(f"{shown}: {node.kind.name.lower()} not restorable in a sandbox")
            return
        out.fail(shown, "is missing after restore")
        return
    kind = kind_of_mode(st.st_mode)
    if kind != node.kind:
        found = kind.name.lower() if kind else "unknown"
        out.fail(shown, f"restored as a {found}, the snapshot has a {node.kind.name.lower()}")
        return
    if node.kind == NodeKind.SYMLINK:
        if os.readlink(disk) != (node.link_target or b""):
            out.fail(shown, "symlink target differs from the snapshot")
        return
    if node.kind != NodeKind.FILE:
        return
    problem = file_node_problem(node)  # a node contradicting itself proves nothing
    if problem is not None:
        out.fail(shown, problem)
        return
    if st.st_size != node.size:
        out.fail(shown, f"restored size {st.st_size} bytes, the snapshot records {node.size}")
        return
    try:
        try:
            digest, size = file_hash(os.fsdecode(disk))
        except PermissionError:
            if not open_up(disk, stat.S_IRUSR):
                raise
            digest, size = file_hash(os.fsdecode(disk))
    except OSError as exc:
        out.fail(shown, f"cannot be read back: {exc.strerror}")
        return
    out.files_checked += 1
    out.bytes_checked += size
    if node.content_hash and digest != node.content_hash:
        out.fail(shown, "content does not match the hash recorded at backup time")
