"""Which folders are unchanged since the parent snapshot, decided in reader processes.

An unchanged re-backup reads no file: its time is one stat per entry and one parent
tree per folder, compared entry by entry. In one Python thread that kept a single
core busy (about 35 us an entry, most of it decoding the parent's trees) while the
other idled. So the walker hands whole subtrees to the reader processes, which list
and compare them in parallel and answer with the folders whose every entry, to any
depth, would be recorded exactly as the parent recorded it. The walker then keeps
such a folder's node (and so its tree) without listing it again, and walks the rest
itself as before.

The rules are the walker's own (``file_unchanged``, ``stat_matches``), applied to the
parent's nodes as stored (``raw_nodes``, ``_same_meta``) instead of decoded ones: a
verdict here only ever saves work, it never decides differently, and
tests/archiver/test_compare.py checks that the trees come out identical. A change to
what ``node_from_stat`` records must change ``_same_meta`` with it. Anything unusual
(an unreadable folder, a damaged parent tree) simply means "not known to be
unchanged": the walker then meets it and reports it.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from stat import S_IMODE, S_ISDIR, S_ISLNK, S_ISREG
from typing import Any

import blake3

from casbackup.archiver.excludes import Excluder
from casbackup.archiver.metadata import group_name, user_name
from casbackup.archiver.nesting import Level, drive
from casbackup.crypto.envelope import Opener
from casbackup.errors import CasError
from casbackup.repo import delta
from casbackup.repo.ids import Kind
from casbackup.repo.indexcache import IndexCache
from casbackup.repo.pack import open_blob, pack_name
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.tree import (
    Node,
    NodeKind,
    RawNode,
    encode_owner,
    encode_tree,
    kind_of_mode,
    pack_fixed,
    raw_nodes,
)
from casbackup.store.local import LocalBackend

RACE_MARGIN_NS = 2_000_000_000  # coarse file systems store times in 1-2 s steps
_pack_fixed = pack_fixed
_DIR, _FILE = int(NodeKind.DIR), int(NodeKind.FILE)
_DEVICES = (NodeKind.CHARDEV, NodeKind.BLOCKDEV)


def _split_ids(joined: list[bytes]) -> list[bytes]:
    return [part[i : i + 32] for part in joined for i in range(0, len(part), 32)]


def file_unchanged(old: Node, st: os.stat_result, reuse_start_ns: int) -> bool:
    """The change test for a regular file, all but whether its chunks are still indexed.

    Reused when size, mtime, ctime and inode match and neither time is within
    RACE_MARGIN_NS of the parent's start (borg's guard: a file written while the parent
    ran may have been read half-changed and would then look unchanged forever).
    ``reuse_start_ns``: ``race_start_ns(parent)``.
    """
    if old.kind != NodeKind.FILE or not old.content_hash:
        return False
    if (old.size, old.mtime_ns, old.ctime_ns, old.inode) != (
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
    ):
        return False
    return max(st.st_mtime_ns, st.st_ctime_ns) < reuse_start_ns - RACE_MARGIN_NS


def race_start_ns(parent: Snapshot) -> int:
    """When ``parent``'s files were seen, for ``file_unchanged``'s guard (ns since the epoch).

    Its start, or, when its sources were read from file-system snapshots (fssnap/), the
    time the first of those was taken if earlier: a frozen file is what it was then, and
    taking snapshots (lvcreate and a mount per volume) can end seconds before the backup
    starts. Measured from the start, a file rewritten in place in the instant of the
    freeze (the same size and times before and after, within one timestamp tick) looked
    unchanged forever, holding the content from before. The times are untrusted text: one
    that does not parse is passed over; any can only make the guard wider (more re-reads).
    """
    start = parent.start_ns
    for record in parent.fs_snapshots:
        try:
            when = datetime.fromisoformat(record.time)
            if when.utcoffset() is None:
                when = when.replace(tzinfo=UTC)
            taken = (when - _EPOCH) // _MICROSECOND * 1000
        except (TypeError, ValueError, OverflowError):
            continue
        start = min(start, taken)
    return start


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True)
class SubtreeJob:
    """Compare the folder at ``path`` with the parent's tree ``subtree``."""

    path: bytes
    subtree: bytes
    reuse_start_ns: int
    root_dev: int  # for --one-file-system


# Per unchanged folder: (regular files, their bytes, folders including itself).
Counts = tuple[int, int, int]


class SubtreeComparer:
    """Lists a subtree and compares it with the parent's trees (in a reader process)."""

    def __init__(
        self,
        repo_root: str,
        cache: IndexCache,
        opener: Opener,
        id_key: bytes,
        excluder: Excluder,
        one_file_system: bool,
        cancel: Any,
    ) -> None:
        self.packs = LocalBackend(repo_root)  # its own fds: a pread each, no reopening
        self.cache = cache
        self.opener = opener
        self.id_key = id_key
        self.excluder = excluder if excluder else None
        self.one_file_system = one_file_system
        self.cancel = cancel
        self.users: dict[int, bytes] = {}  # uid -> name as a tree stores it
        self.groups: dict[int, bytes] = {}
        # A mount point under --one-file-system is stored as a folder with this tree.
        self.empty_tree = blake3.blake3(encode_tree([]), key=id_key).digest()

    def close(self) -> None:
        self.packs.close()

    def compare(self, job: SubtreeJob) -> dict[bytes, Counts]:
        """The folders at or below ``job.path`` found unchanged, each outermost one only."""
        found: dict[bytes, Counts] = {}
        counts = drive(self._compare(job.path, job.subtree, job, found))
        if counts is not None:
            found[job.path] = counts
        return found

    def _compare(
        self, path: bytes, subtree: bytes, job: SubtreeJob, found: dict[bytes, Counts]
    ) -> Level[Counts | None]:
        """Counts when the folder is unchanged; otherwise None, noting unchanged subfolders.

        Each entry is compared with the parent's node as stored (``raw_nodes``): what
        the walker would encode for it (``node_from_stat``) must be those very bytes.
        A level for ``drive`` (archiver/nesting.py): any depth, no recursion.
        """
        if self.cancel.is_set():
            return None
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
            old_nodes = self._load_tree(subtree)
        except (OSError, CasError):
            return None  # the walker meets it and reports it
        same = True
        kept = 0
        files = size = dirs = 0
        chunks: list[bytes] = [subtree]
        unchanged_dirs: list[tuple[bytes, Counts]] = []
        racy = job.reuse_start_ns - RACE_MARGIN_NS
        for entry in entries:
            child_path = entry.path
            if self.excluder is not None and self.excluder.excluded(os.fsdecode(child_path)):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                same = False
                continue
            if self.excluder is not None and self.excluder.excluded_entry(child_path, st):
                continue
            mode = st.st_mode
            kept += 1
            old = old_nodes.get(entry.name)
            if old is None:
                same = False
                continue
            fixed, user, group, content, content_hash, old_subtree, target, _xattrs = old
            if self.one_file_system and S_ISDIR(mode) and st.st_dev != job.root_dev:
                # A mount point: the walker stores it as an empty folder.
                if (
                    fixed[0] != _DIR
                    or old_subtree != self.empty_tree
                    or not self._same_meta(old, st)
                ):
                    same = False
                else:
                    chunks.append(old_subtree)  # its (empty) tree must still be indexed
                    dirs += 1
                continue
            if S_ISDIR(mode):
                sub = None
                if fixed[0] == _DIR and len(old_subtree) == 32:
                    sub = yield self._compare(child_path, old_subtree, job, found)
                if sub is None:
                    same = False
                    continue
                unchanged_dirs.append((child_path, sub))
                if not self._same_meta(old, st):
                    same = False  # the folder's own entry changed, not its contents
            elif not same:
                continue  # only subfolders can still be found unchanged
            elif S_ISREG(mode):
                # file_unchanged and stat_matches, on the stored bytes.
                if (
                    fixed[0] != _FILE
                    or len(content_hash) != 32
                    or max(st.st_mtime_ns, st.st_ctime_ns) >= racy
                    or not self._same_meta(old, st)
                ):
                    same = False
                    continue
                chunks.append(content)
                files += 1
                size += st.st_size
            else:
                if S_ISLNK(mode):
                    try:
                        if os.readlink(child_path) != target:
                            same = False
                            continue
                    except OSError:
                        same = False
                        continue
                elif target:
                    same = False
                    continue
                if not self._same_meta(old, st):
                    same = False
        if same and kept == len(old_nodes) and self.cache.contains_all(_split_ids(chunks)):
            for _path, (f, b, d) in unchanged_dirs:
                files, size, dirs = files + f, size + b, dirs + d
            return files, size, dirs + 1
        found.update(unchanged_dirs)  # the walker lists this folder but not those
        return None

    def _same_meta(self, old: RawNode, st: os.stat_result) -> bool:
        """Whether ``node_from_stat`` would store the same metadata (``stat_matches``).

        Extended attributes are not read: changing one changes the ctime, which is in
        ``fixed``. (The walker hands out no comparison when the parent's attributes were
        recorded under another ``--no-xattrs`` setting.)
        """
        fixed, user, group, _, _, _, _, _ = old
        mode = st.st_mode
        kind = kind_of_mode(mode) or NodeKind.FILE
        try:
            again = _pack_fixed(
                kind, S_IMODE(mode), st.st_uid, st.st_gid, st.st_mtime_ns, st.st_ctime_ns,
                st.st_size if kind is NodeKind.FILE else 0, st.st_ino, st.st_dev, st.st_nlink,
                st.st_rdev if kind in _DEVICES else 0,
            )  # fmt: skip
        except struct.error:
            return False
        return (
            fixed == again
            and user == self._owner(self.users, st.st_uid, user_name)
            and group == self._owner(self.groups, st.st_gid, group_name)
        )

    def _owner(self, cache: dict[int, bytes], ident: int, lookup: Any) -> bytes:
        name = cache.get(ident)
        if name is None:
            name = cache[ident] = encode_owner(lookup({}, ident))
        return name

    def _locate(self, blob_id: bytes):  # type: ignore[no-untyped-def]
        loc = self.cache.get(blob_id)
        if loc is None:
            raise CasError("a parent tree's base is not indexed")
        return loc

    def _fetch(self, pack: str, offset: int, length: int) -> bytes:
        return self.packs.get(pack_name(pack), offset, length)

    def _load_tree(self, tree_id: bytes) -> dict[bytes, RawNode]:
        loc = self.cache.get(tree_id)
        if loc is None or loc.kind not in (Kind.TREE, Kind.TREE_DELTA):
            raise CasError("parent tree is not indexed")
        if loc.kind == Kind.TREE_DELTA:  # stored as a delta of an older tree: its chain
            chain = delta.located_chain(self._locate, tree_id, loc)
            fetch = self._fetch
            data = delta.resolve_chain(fetch, self.opener, chain, kind=Kind.TREE)
        else:
            envelope = self.packs.get(pack_name(loc.pack), loc.offset, loc.stored_len)
            data = open_blob(self.opener, Kind.TREE, tree_id, loc.pack, envelope, loc.raw_len)
        if blake3.blake3(data, key=self.id_key).digest() != tree_id:
            raise CasError("parent tree does not match its id")
        return raw_nodes(data)
