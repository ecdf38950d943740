"""The repository as a read-only file system: one core behind FUSE and, later, web browsing.

Layout::

    /<application>/<YYYY-MM-DDTHH:MM:SS>_<short id>/<the snapshot's tree>
    /<application>/latest -> the newest snapshot's folder

Snapshots made without an application sit under a folder named after their host
(``_paths`` when the host is unknown or is also an application's name).

Only the trees on a looked-up path are loaded, and a read decrypts only the chunks
that cover its byte range: a file's chunk offsets come from the index (each chunk's
raw length), never from reading data. Trees and decrypted chunks are kept in LRU
caches bounded by bytes. Every method is safe to call from several threads.
"""

from __future__ import annotations

import hashlib
import os
import stat
import threading
import time
from bisect import bisect_right
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, replace

from casbackup.archiver.readpool import ReaderPool
from casbackup.errors import CasError, IntegrityError, NotFound, UsageError
from casbackup.repo.ids import BlobId, Kind
from casbackup.repo.nodecheck import require_sound_file
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.tree import Node, NodeKind
from casbackup.store.base import is_remote
from casbackup.timezones import in_zone
from casbackup.vfs.cache import WeightedLru

LATEST = "latest"
# Smaller files count every byte as allocated: no chunk lookups for them in 'ls -l', and
# at most this much too much in du.
SPARSE_MIN = 1 << 20
READ_AHEAD = 4  # chunks loaded ahead of a read on an object store (and reader threads)
UNNAMED_GROUP = "_paths"

_S_IFMT = {
    NodeKind.FILE: stat.S_IFREG, NodeKind.DIR: stat.S_IFDIR, NodeKind.SYMLINK: stat.S_IFLNK,
    NodeKind.FIFO: stat.S_IFIFO, NodeKind.CHARDEV: stat.S_IFCHR, NodeKind.BLOCKDEV: stat.S_IFBLK,
    NodeKind.SOCKET: stat.S_IFSOCK,
}  # fmt: skip


@dataclass(frozen=True)
class Stat:
    ino: int
    mode: int  # file type bits | permission bits, as st_mode
    nlink: int
    uid: int
    gid: int
    size: int
    mtime_ns: int
    ctime_ns: int
    rdev: int
    allocated: int | None = None  # bytes that are not holes, when known; else all of size

    @property
    def blocks(self) -> int:
        """512-byte blocks in use: fewer than the size for a sparse file, so that cp and du
        treat it as one."""
        used = self.size if self.allocated is None else self.allocated
        return (used + 511) // 512


@dataclass(frozen=True)
class Entry:
    """One name in the file system: a virtual folder or link, or a node of a snapshot."""

    path: str
    node: Node  # synthesized for the virtual levels (root, application, snapshot folder, latest)
    ino: int
    snapshot: Snapshot | None = None
    tree: BlobId | None = None  # what listing this folder shows, when it lies in a snapshot

    @property
    def kind(self) -> NodeKind:
        return self.node.kind

    @property
    def name(self) -> str:
        return os.fsdecode(self.node.name) if self.node.name else "/"

    def stat(self) -> Stat:
        n = self.node
        size = len(n.link_target) if n.kind == NodeKind.SYMLINK else n.size
        return Stat(self.ino, _S_IFMT[n.kind] | n.mode, max(n.nlink, 1), n.uid, n.gid, size,
                    n.mtime_ns, n.ctime_ns, n.rdev)  # fmt: skip


@dataclass(frozen=True)
class _Group:
    snapshots: dict[str, Snapshot]  # folder name -> snapshot, oldest first
    latest: str
    mtime_ns: int


@dataclass(frozen=True)
class _Tree:
    nodes: list[Node]
    by_name: dict[bytes, Node]


def _ino(*parts: bytes | str) -> int:
    """A stable inode number: the same node always gets the same number (1 is the root)."""
    h = hashlib.blake2b(digest_size=8)
    for part in parts:
        h.update(part.encode("utf-8", "surrogateescape") if isinstance(part, str) else part)
        h.update(b"\0")
    return max(int.from_bytes(h.digest(), "big") >> 1, 2)


def snapshot_folder(snap: Snapshot) -> str:
    return f"{in_zone(snap.datetime).strftime('%Y-%m-%dT%H:%M:%S')}_{snap.short_id}"


def _group_names(snaps: list[Snapshot]) -> dict[str, str]:
    """snapshot id -> top-level folder name."""
    apps = {s.app for s in snaps if s.app}
    names = {}
    for s in snaps:
        if s.app:
            name = s.app
        elif s.host and s.host not in apps:
            name = s.host
        else:
            name = UNNAMED_GROUP
        names[s.id] = name.replace("/", "_") if name not in (".", "..") else f"_{name}"
    return names


class Vfs:
    def __init__(
        self,
        repo: Repository,
        *,
        app: str | None = None,
        chunk_cache_bytes: int = 64 << 20,
        tree_cache_bytes: int = 64 << 20,
        refresh_seconds: float = 30.0,
        on_warning: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.repo = repo
        self.app = app
        self.refresh_seconds = refresh_seconds
        self.on_warning = on_warning
        self.uid = os.getuid()
        self.gid = os.getgid()
        self._chunks: WeightedLru[bytes] = WeightedLru(chunk_cache_bytes, len)
        # A decoded node costs a few hundred bytes of Python objects plus its chunk list.
        self._trees: WeightedLru[_Tree] = WeightedLru(
            tree_cache_bytes, lambda t: 64 + sum(400 + 40 * len(n.content) for n in t.nodes)
        )
        self._offsets: WeightedLru[list[int]] = WeightedLru(16 << 20, lambda o: 64 + 8 * len(o))
        # Entries inside snapshots never change: `ls -l` of a big folder asks for each name
        # right after listing it, so the listing fills this and the lookups hit it.
        self._entries: WeightedLru[Entry] = WeightedLru(200_000, lambda e: 1)
        self._allocation: WeightedLru[int] = WeightedLru(100_000, lambda n: 1)
        self._zero_ids: dict[int, BlobId] = {}
        # On an object store each chunk is a round trip: a read that reaches the end of a
        # chunk loads the next READ_AHEAD of the file in the background (into the chunk
        # cache, one load per chunk however many readers ask), so a sequential read
        # (`cat`, `cp`, a download) overlaps its gets instead of waiting for each.
        self._ahead: ReaderPool | None = None
        self._ahead_lock = threading.Lock()
        self._queued: set[bytes] = set()  # chunks submitted ahead and not loaded yet
        if is_remote(repo.backend):
            # Daemon reader threads (archiver/readpool.py): an unmount or a stop never waits
            # for a get the store left hanging.
            self._ahead = ReaderPool(READ_AHEAD, "vfs-ahead")
        self._layout_lock = threading.Lock()
        self._known: dict[str, Snapshot] = {}
        self._groups: dict[str, _Group] = {}
        self._loaded_at = -float("inf")
        self.refresh()

    # ----------------------------------------------------------------- layout
    def refresh(self) -> None:
        """Pick up snapshots added or removed since the last look (new ones are read once)."""
        with self._layout_lock:
            # Snapshots this client forgot that came back are not shown (a rollback: the
            # repository's alerts say so once).
            seen = len(self.repo.alerts)
            ids = self.repo.usable_snapshot_ids()
            for message in self.repo.alerts[seen:]:
                self.on_warning(message)
            new = [fid for fid in ids if fid not in self._known]
            known = {fid: self._known[fid] for fid in ids if fid in self._known}
            for fid in new:
                try:
                    known[fid] = self.repo.load_snapshot(fid)
                except CasError as exc:
                    self.on_warning(f"snapshot {fid[:8]} is unreadable: {exc}")
            if new:
                for message in self.repo.sync_index():  # new snapshots name new index files
                    self.on_warning(message)
            snaps = sorted(known.values(), key=lambda s: (s.start_ns, s.id))
            if self.app is not None:
                snaps = [s for s in snaps if s.app == self.app]
            names = _group_names(snaps)
            members: dict[str, dict[str, Snapshot]] = {}
            for s in snaps:
                members.setdefault(names[s.id], {})[snapshot_folder(s)] = s
            self._groups = {
                name: _Group(folders, list(folders)[-1], list(folders.values())[-1].start_ns)
                for name, folders in sorted(members.items())
            }
            self._known = known
            self._loaded_at = time.monotonic()

    def _layout(self, fresh: bool) -> dict[str, _Group]:
        if fresh and time.monotonic() - self._loaded_at > self.refresh_seconds:
            self.refresh()
        return self._groups

    def _virtual_dir(self, path: str, name: str, ino: int, mtime_ns: int) -> Entry:
        node = Node(name=os.fsencode(name), kind=NodeKind.DIR, mode=0o555, uid=self.uid,
                    gid=self.gid, mtime_ns=mtime_ns, ctime_ns=mtime_ns, nlink=2)  # fmt: skip
        return Entry(path, node, ino)

    def _root(self, groups: dict[str, _Group]) -> Entry:
        newest = max((g.mtime_ns for g in groups.values()), default=0)
        return self._virtual_dir("/", "", 1, newest)

    def _group_entry(self, name: str, group: _Group) -> Entry:
        return self._virtual_dir(f"/{name}", name, _ino("group", name), group.mtime_ns)

    def _latest_entry(self, group_name: str, group: _Group) -> Entry:
        node = Node(name=LATEST.encode(), kind=NodeKind.SYMLINK, mode=0o777, uid=self.uid,
                    gid=self.gid, mtime_ns=group.mtime_ns, ctime_ns=group.mtime_ns,
                    link_target=group.latest.encode())  # fmt: skip
        return Entry(f"/{group_name}/{LATEST}", node, _ino("latest", group_name))

    def _snapshot_entry(self, group_name: str, folder: str, snap: Snapshot) -> Entry:
        entry = self._virtual_dir(
            f"/{group_name}/{folder}", folder, _ino("snapshot", snap.id), snap.start_ns
        )
        return Entry(entry.path, entry.node, entry.ino, snap, snap.root)

    def _child(self, parent: Entry, node: Node) -> Entry:
        snap = parent.snapshot
        assert snap is not None
        path = f"{parent.path}/{os.fsdecode(node.name)}"
        key = node.link_group
        if key is not None:
            # Hard links share one inode number, so `cp -a` and `find -samefile` see them as
            # links; not names recorded with different contents (Node.link_group), which the
            # kernel would then serve from one page cache.
            ino = _ino("hardlink", snap.id, str(key[0]), str(key[1]), key[2])
        else:
            ino = _ino("node", snap.id, path.split("/", 3)[3])
        return Entry(path, node, ino, snap, node.subtree if node.kind == NodeKind.DIR else None)

    # ----------------------------------------------------------------- trees
    def _tree(self, tree_id: BlobId) -> _Tree:
        def load() -> _Tree:
            try:
                nodes = self.repo.load_tree(tree_id)
            except NotFound as exc:  # a tree the snapshot names but the index lacks is damage
                raise IntegrityError(str(exc)) from None
            return _Tree(nodes, {n.name: n for n in nodes})

        return self._trees.get_or_load(tree_id, load)

    def snapshot_path(self, snapshot_id: str) -> str:
        """The folder of a snapshot in this file system (``/<group>/<folder>``).

        Raises NotFound for a snapshot this view does not hold (after one refresh).
        """
        for fresh in (False, True):
            if fresh:
                self.refresh()
            for name, group in self._groups.items():
                for folder, snap in group.snapshots.items():
                    if snap.id == snapshot_id:
                        return f"/{name}/{folder}"
        raise NotFound(f"no snapshot {snapshot_id[:8]} in this view")

    # ----------------------------------------------------------------- operations
    def lookup(self, path: str) -> Entry:
        """The entry at ``path`` (``/``-separated, absolute); NotFound if there is none."""
        parts = [p for p in path.split("/") if p and p != "."]
        groups = self._layout(fresh=len(parts) <= 2)
        if not parts:
            return self._root(groups)
        group = groups.get(parts[0])
        if group is None:
            raise NotFound(f"{path}: no such application or host")
        if len(parts) == 1:
            return self._group_entry(parts[0], group)
        if parts[1] == LATEST and len(parts) == 2:
            return self._latest_entry(parts[0], group)
        folder = group.latest if parts[1] == LATEST else parts[1]
        snap = group.snapshots.get(folder)
        if snap is None:
            raise NotFound(f"{path}: no such snapshot")
        entry = self._snapshot_entry(parts[0], folder, snap)
        if len(parts) == 2:
            return entry
        key = (snap.id, *parts[2:])  # key[:m] is the entry of parts[2 : m + 1]
        cached = self._entries.get(key)
        if cached is not None:
            return cached
        # Start below the deepest remembered folder, looking from the parent up: a file
        # system asks for a folder before its entries, so this is one step, not one per level
        # (a path may be thousands of levels deep).
        start = 2
        for m in range(len(parts) - 2, 1, -1):
            cached = self._entries.get(key[:m])
            if cached is not None:
                entry, start = cached, m + 1
                break
        for m in range(start, len(parts)):
            if entry.tree is None:
                raise NotFound(f"{path}: {entry.path} is not a folder")
            node = self._tree(entry.tree).by_name.get(os.fsencode(parts[m]))
            if node is None:
                raise NotFound(f"{path}: no such file or folder")
            entry = self._child(entry, node)
            self._entries.put(key[:m], entry)
        return entry

    def getattr(self, path: str) -> Stat:
        """The entry's metadata; NotFound. A file of SPARSE_MIN or more counts as allocated
        only its chunks that are not all zeros (see ``_allocated``)."""
        entry = self.lookup(path)
        st = entry.stat()
        if entry.kind == NodeKind.FILE and st.size >= SPARSE_MIN:
            st = replace(st, allocated=self._allocated(entry))
        return st

    def listdir(self, path: str) -> list[Entry]:
        entry = self.lookup(path)
        if entry.kind != NodeKind.DIR:
            raise NotFound(f"{path} is not a folder")
        parts = [p for p in entry.path.split("/") if p]
        if not parts:
            return [self._group_entry(name, g) for name, g in self._layout(fresh=True).items()]
        if entry.tree is None:
            group = self._layout(fresh=True).get(parts[0])
            if group is None:
                return []
            return [self._latest_entry(parts[0], group)] + [
                self._snapshot_entry(parts[0], folder, snap)
                for folder, snap in group.snapshots.items()
            ]
        children = [self._child(entry, node) for node in self._tree(entry.tree).nodes]
        snap = entry.snapshot
        assert snap is not None
        inner = tuple(entry.path.split("/")[3:])
        for child in children:
            self._entries.put((snap.id, *inner, child.name), child)
        return children

    def readlink(self, path: str) -> str:
        entry = self.lookup(path)
        if entry.kind != NodeKind.SYMLINK:
            raise UsageError(f"{path} is not a symbolic link")
        return os.fsdecode(entry.node.link_target)

    def xattrs(self, path: str) -> dict[str, bytes]:
        return {os.fsdecode(k): v for k, v in self.lookup(path).node.xattrs}

    def open(self, path: str) -> OpenFile:
        entry = self.lookup(path)
        if entry.kind != NodeKind.FILE:
            raise UsageError(f"{path} is not a regular file")
        return OpenFile(self, entry)

    def read(self, path: str, offset: int, length: int) -> bytes:
        return self.open(path).read(offset, length)

    # ----------------------------------------------------------------- file data
    def _chunk_offsets(self, entry: Entry) -> list[int]:
        """Cumulative start offsets of a file's chunks (plus its end), from the index alone."""
        content = entry.node.content

        def compute() -> list[int]:
            offsets = [0]
            for chunk_id in content:
                offsets.append(offsets[-1] + self.repo.locate(chunk_id).raw_len)
            sizes = [b - a for a, b in zip(offsets, offsets[1:], strict=False)]
            require_sound_file(entry.node, sizes, entry.path)  # size and hash (issue 12)
            return offsets

        return self._offsets.get_or_load(content, compute)

    def _allocated(self, entry: Entry) -> int | None:
        """Bytes of the file in chunks that are not all zeros, None when unknown (a chunk
        the index lacks: reads say so). A chunk of zeros is known by its id alone, the
        keyed hash of that many zero bytes; a sparse file's holes are such chunks."""

        def compute() -> int:
            offsets = self._chunk_offsets(entry)
            total = 0
            for i, chunk_id in enumerate(entry.node.content):
                size = offsets[i + 1] - offsets[i]
                if chunk_id != self._zero_id(size):
                    total += size
            return total

        try:
            return self._allocation.get_or_load(entry.node.content, compute)
        except CasError:
            return None

    def _zero_id(self, size: int) -> BlobId:
        zero = self._zero_ids.get(size)
        if zero is None:
            zero = self.repo.blob_id(bytes(size))
            if len(self._zero_ids) < 4096:  # a few sizes in practice: the chunker's maximum
                self._zero_ids[size] = zero
        return zero

    def _chunk(self, chunk_id: BlobId) -> bytes:
        return self._chunks.get_or_load(chunk_id, lambda: self.repo.load_blob(chunk_id, Kind.DATA))

    def _read_ahead(self, content: tuple[BlobId, ...], after: int) -> list[Future[bytes]]:
        """Start loading the READ_AHEAD chunks of ``content`` after index ``after`` that are
        not cached (an object store only); errors stay with the read that needs the chunk."""
        ahead = self._ahead
        if ahead is None:
            return []
        wanted = []
        with self._ahead_lock:  # each chunk asked once: a queued one is not in the cache yet
            for chunk_id in content[after + 1 : after + 1 + READ_AHEAD]:
                if chunk_id not in self._queued and chunk_id not in self._chunks:
                    self._queued.add(chunk_id)
                    wanted.append(chunk_id)
        futures = []
        for chunk_id in wanted:
            try:
                futures.append(ahead.submit(self._quiet_chunk, chunk_id))
            except RuntimeError:  # closed meanwhile (an unmount): reads load what they need
                with self._ahead_lock:
                    self._queued.discard(chunk_id)
        return futures

    def _quiet_chunk(self, chunk_id: BlobId) -> bytes:
        try:
            return self._chunk(chunk_id)
        except CasError:
            return b""  # the read that reaches this chunk loads it again and says why
        finally:
            with self._ahead_lock:
                self._queued.discard(chunk_id)

    def close(self) -> None:
        """Stop the read-ahead threads (an object store's)."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.shutdown(wait=False, cancel_futures=True)  # loads ahead are only a guess


class OpenFile:
    """A file opened for reading; reads decrypt only the chunks covering their range."""

    def __init__(self, vfs: Vfs, entry: Entry) -> None:
        self.vfs = vfs
        self.entry = entry
        self._offsets: list[int] | None = None

    def read(self, offset: int, length: int) -> bytes:
        node = self.entry.node
        end = min(offset + length, node.size)
        if offset < 0 or length < 0:
            raise UsageError("negative offset or length")
        if offset >= end:
            return b""
        try:
            if self._offsets is None:
                self._offsets = self.vfs._chunk_offsets(self.entry)
            offsets = self._offsets
            i = bisect_right(offsets, offset) - 1
            parts: list[memoryview] = []
            pos = offset
            while pos < end:
                data = memoryview(self.vfs._chunk(node.content[i]))
                start = pos - offsets[i]
                take = min(end, offsets[i + 1]) - pos
                parts.append(data[start : start + take])
                pos += take
                i += 1
            if i < len(node.content):  # the chunks after the last one this read touched
                self.vfs._read_ahead(node.content, i - 1)
        except CasError as exc:
            # NotFound here means a chunk the tree names is missing: damage, not a bad path.
            raise IntegrityError(f"cannot read {self.entry.path}: {exc}") from None
        return parts[0].tobytes() if len(parts) == 1 else b"".join(parts)
