"""The walk of a backup: folders listed in order, files compared with the parent.

Runs on the caller's thread (stat is cheap and ordered). A file whose size, mtime,
ctime and inode match the parent's node (outside the race guard's margin, see
archiver/compare.py) is kept unread when its chunks are still indexed; the others go
to the readers (archiver/reading.py). Folders wait in post-order in a bounded queue
until their files are read, then their trees are written, or the parent's tree is
reused as it is when every entry is the parent's own node. Subfolders of a parent
snapshot's tree are handed to the readers to compare whole (archiver/compare.py).
"""

from __future__ import annotations

import operator
import os
import stat
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from casbackup.archiver.compare import Counts, SubtreeJob, file_unchanged
from casbackup.archiver.later import Later
from casbackup.archiver.metadata import Xattrs, node_from_stat, read_xattrs, stat_matches
from casbackup.archiver.nesting import Level, drive
from casbackup.errors import CasError, NotFound
from casbackup.repo.ids import BlobId
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import DatabaseRecord, Snapshot
from casbackup.repo.tree import Node, NodeKind

if TYPE_CHECKING:
    from casbackup.archiver.backup_options import BackupOptions, Counters
    from casbackup.archiver.excludes import Excluder
    from casbackup.archiver.workers import ReaderPool
    from casbackup.reporter import Progress

MAX_PENDING_DIRS = 4096  # folders waiting for their files; bounds memory


class Walker:
    """The walk and change detection of ``Backup`` (archiver/backup.py), as a mixin:
    the state below is set up by ``Backup.__init__`` and ``Backup.run``."""

    repo: Repository
    options: BackupOptions
    counters: Counters
    excluder: Excluder
    _progress: Progress
    _count_lock: threading.Lock
    _pending_dirs: deque[PendingDir]
    _uid_names: dict[int, str]
    _gid_names: dict[int, str]
    _ready: threading.Condition
    _pool: ReaderPool | None
    _read_from: dict[bytes, bytes]
    _reuse: Snapshot | None
    _reuse_start_ns: int
    _keep_meta: bool
    _compare_subtrees: bool
    _verdicts: dict[bytes, Counts]
    _compares: dict[bytes, Later[dict[bytes, Counts]]]
    _split: set[bytes]
    _covered: int
    _depth: int
    _root_dev: int | None  # the device of / when / itself is a source, else None
    # Entries the parent snapshot could not record whole (an attribute that could not be
    # read), by path, and every folder above them (backup_options.troubled_paths).
    _troubled: frozenset[bytes]
    _troubled_dirs: frozenset[bytes]

    # ------------------------------------------------------------------ roots
    def _archive_roots(
        self, paths: tuple[str, ...], reference: Snapshot | None, dbs: list[DatabaseRecord]
    ) -> BlobId:
        """Build the tree from / down to each source, then the sources themselves."""
        # Nested dict of path components; a leaf (None) is a source to archive in full.
        layout: dict[bytes, Any] = {}
        for p in sorted(paths):
            parts = [x for x in os.fsencode(p).split(b"/") if x]
            node = layout
            for part in parts[:-1]:
                child = node.setdefault(part, {})
                if child is None:
                    break  # an ancestor is already a source: nested paths are covered
                node = child
            else:
                if parts:
                    node[parts[-1]] = None
                else:
                    layout = self._whole_root()  # "/": every other path is inside it
                    break
        ref_root = reference.root if reference is not None else None
        reuse_root = self._reuse.root if self._reuse is not None else None
        nodes = drive(self._build_layout(b"", layout, ref_root, reuse_root))
        if self.options.streams:
            nodes.append(self._archive_streams(dbs))
            nodes.sort(key=lambda n: n.name)
        return self._save_tree(nodes, ref_root)

    def _build_layout(
        self,
        prefix: bytes,
        layout: dict[bytes, Any],
        ref_tree: BlobId | None,
        reuse_tree: BlobId | None,
    ) -> Level[list[Node]]:
        """The nodes of the folders from / down to the sources (a level for ``drive``)."""
        ref_nodes = self._load_children(ref_tree)
        reuse_nodes = self._load_children(reuse_tree) if reuse_tree != ref_tree else ref_nodes
        nodes: list[Node] = []
        for name in sorted(layout):
            path = prefix + b"/" + name
            sub = layout[name]
            try:
                st = os.lstat(path)
            except OSError as exc:
                # Gone since Backup.run looked (or a folder above it made unsearchable): the
                # sources at and below it are left out, the others stored (a partial backup).
                self._error(path, exc)
                continue
            if (sub is None and self._root_dev is not None and stat.S_ISDIR(st.st_mode)
                    and self._mount_point(st, self._root_dev)):  # fmt: skip
                nodes.append(self._mount_point_node(path, name, st, reuse_nodes.get(name)))
                continue  # "/" under -x: its /proc, /sys, /dev, /run as empty folders
            if sub is None:
                # Read from a file-system snapshot when there is one; names stay the source's.
                read = self._read_from.get(path, path)
                if read != path:
                    try:
                        st = os.lstat(read)
                    except OSError as exc:
                        raise NotFound(
                            f"cannot read source {os.fsdecode(path)} from its file-system "
                            f"snapshot {os.fsdecode(read)}: {exc.strerror}"
                        ) from None
                root_dev = st.st_dev if self._root_dev is None else self._root_dev
                node = yield self._archive_entry(
                    read, name, st, ref_nodes.get(name), reuse_nodes.get(name), root_dev
                )
                if isinstance(node, Later):
                    self._finish_dirs(keep=0)
                    if self._pending_dirs:  # an invariant, checked so a bug fails, never hangs
                        raise RuntimeError("internal error: a folder was left unfinished")
                    node = node.result()
                if node is not None:
                    nodes.append(node)
                continue
            ref_child, reuse_child = ref_nodes.get(name), reuse_nodes.get(name)
            children = yield self._build_layout(
                path, sub,
                ref_child.subtree if ref_child else None,
                reuse_child.subtree if reuse_child else None,
            )  # fmt: skip
            base = ref_child.subtree if ref_child else None
            nodes.append(self._dir_node(path, name, st, self._save_tree(children, base)))
        return nodes

    def _whole_root(self) -> dict[bytes, Any]:
        """``backup /``: the entries of / as the sources (after excludes), all judged by the
        file system of / itself, so that under --one-file-system the mount points among and
        below them are kept as empty folders (a restored system needs its /proc to boot)."""
        try:
            with os.scandir(b"/") as it:
                entries = sorted(it, key=lambda e: e.name)
            self._root_dev = os.lstat(b"/").st_dev
        except OSError as exc:
            raise NotFound(f"cannot read source /: {exc.strerror}") from None
        return {entry.name: None for entry, _ in self._stat_entries(entries)}

    def _load_children(self, tree: BlobId | None) -> dict[bytes, Node]:
        if tree is None:
            return {}
        try:
            return {n.name: n for n in self.repo.load_tree(tree)}
        except CasError as exc:
            # A damaged parent tree only costs re-reading; never fail the backup for it.
            self._notice(f"parent tree unreadable, re-reading its files: {exc}")
            return {}

    def _save_tree(self, nodes: list[Node], base: BlobId | None = None) -> BlobId:
        """Store a folder's tree; ``base``: the parent snapshot's tree of the same folder
        (a large tree is stored as a delta of it, repo/snapshotstore.py)."""
        if self.options.dry_run:
            return self.repo.blob_id(_encode(nodes))
        return self.repo.save_tree(nodes, base)

    def _dir_node(
        self,
        path: bytes,
        name: bytes,
        st: os.stat_result,
        subtree: BlobId,
        old: Node | None = None,
    ) -> Node:
        if old is not None and old.subtree == subtree and self._same_meta(old, st, path):
            return old  # lets the folder above reuse its tree too
        return node_from_stat(name, st, self._uid_names, self._gid_names, subtree=subtree,
                              xattrs=self._xattrs(path))  # fmt: skip

    def _meta(self, path: bytes, name: bytes, st: os.stat_result) -> Node:
        return node_from_stat(name, st, self._uid_names, self._gid_names,
                              xattrs=self._xattrs(path))  # fmt: skip

    def _same_meta(self, old: Node, st: os.stat_result, path: bytes) -> bool:
        """Whether the parent's node for the entry at ``path`` can stand as it is
        (``stat_matches``): not when the parent could not record it whole."""
        return (
            self._keep_meta
            and path not in self._troubled
            and stat_matches(old, st, self._uid_names, self._gid_names)
        )

    def _xattrs(self, path: bytes) -> Xattrs:
        """The entry's extended attributes (ACLs, capabilities), unless --no-xattrs;
        each one that cannot be read is reported and left out."""
        if not self.options.xattrs:
            return ()
        pairs, problems = read_xattrs(path)
        for problem in problems:
            self._problem(f"{os.fsdecode(path)}: {problem}")
        return pairs

    def _mount_point(self, st: os.stat_result, root_dev: int) -> bool:
        """A folder on another file system than its source's, under --one-file-system."""
        return self.options.one_file_system and st.st_dev != root_dev

    # ------------------------------------------------------------------ walking
    def _archive_entry(
        self,
        path: bytes,
        name: bytes,
        st: os.stat_result,
        ref: Node | None,
        reuse: Node | None,
        root_dev: int,
    ) -> Level[Node | Later[Node | None] | None]:
        """One entry (a level for ``drive``: a folder's walk goes on below it)."""
        if stat.S_ISDIR(st.st_mode):
            return (yield self._archive_dir(path, name, st, ref, reuse, root_dev))
        return self._archive_leaf(path, name, st, ref, reuse)

    def _archive_leaf(
        self,
        path: bytes,
        name: bytes,
        st: os.stat_result,
        ref: Node | None,
        reuse: Node | None,
    ) -> Node | Later[Node | None] | None:
        """Anything but a folder: a file is handed to the readers, the rest recorded here."""
        if self._cancelled.is_set():
            raise KeyboardInterrupt
        mode = st.st_mode
        if stat.S_ISREG(mode):
            return self._archive_file(path, name, st, ref, reuse)
        target = b""
        if stat.S_ISLNK(mode):
            try:
                target = os.readlink(path)
            except OSError as exc:
                self._error(path, exc)
                return None
        if reuse is not None and reuse.link_target == target and self._same_meta(reuse, st, path):
            return reuse
        return node_from_stat(name, st, self._uid_names, self._gid_names, link_target=target,
                              xattrs=self._xattrs(path))  # fmt: skip

    def _mount_point_node(
        self, path: bytes, name: bytes, st: os.stat_result, old: Node | None
    ) -> Node:
        """A mount point under --one-file-system: an empty folder with the metadata seen
        there, so that a restored system has its /proc, /sys, /dev, /run to mount on."""
        with self._count_lock:
            self.counters.dirs += 1
        old = old if old is not None and old.kind == NodeKind.DIR else None
        return self._dir_node(path, name, st, self._save_tree([]), old)

    def _archive_dir(
        self,
        path: bytes,
        name: bytes,
        st: os.stat_result,
        ref: Node | None,
        reuse: Node | None,
        root_dev: int,
    ) -> Level[Later[Node | None] | None]:
        """A folder: its entries, each subfolder as a level below (see archiver/nesting.py)."""
        if self._cancelled.is_set():
            raise KeyboardInterrupt
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            self._error(path, exc)
            return None
        ref_nodes = self._load_children(ref.subtree) if ref is not None and ref.subtree else {}
        if reuse is ref:
            reuse_nodes = ref_nodes
        else:
            reuse_nodes = (
                self._load_children(reuse.subtree) if reuse is not None and reuse.subtree else {}
            )
        listed = self._stat_entries(entries)
        self._start_compares(path, listed, reuse_nodes, root_dev)
        children: list[Node | Later[Node | None]] = []
        kept: list[tuple[int, bytes, os.stat_result, Node | None]] = []
        self._depth += 1
        try:
            for entry, child_st in listed:
                child_path, child_name = entry.path, entry.name
                mode = child_st.st_mode
                child_reuse = reuse_nodes.get(child_name)
                child: Node | Later[Node | None] | None
                if not stat.S_ISDIR(mode):
                    if (
                        child_reuse is not None
                        and stat.S_ISREG(mode)
                        and self._unchanged_meta(child_reuse, child_st)
                    ):
                        # Unchanged: keep the parent's content unread. Whether its chunks are
                        # all still indexed is asked once for the whole folder, below.
                        kept.append(
                            (len(children), child_path, child_st, ref_nodes.get(child_name))
                        )
                        children.append(
                            self._kept_file(child_path, child_name, child_st, child_reuse)
                        )
                        continue
                    child = self._archive_leaf(
                        child_path, child_name, child_st, ref_nodes.get(child_name), child_reuse
                    )
                elif self._mount_point(child_st, root_dev):
                    child = self._mount_point_node(child_path, child_name, child_st, child_reuse)
                else:
                    answered = False  # a reader compared this folder: what is unchanged is known
                    if child_reuse is not None:
                        answered, same = self._compared(child_path, child_st, child_reuse)
                        if same is not None:
                            children.append(same)
                            continue
                    self._covered += answered
                    try:
                        child = yield self._archive_dir(
                            child_path, child_name, child_st, ref_nodes.get(child_name),
                            child_reuse, root_dev,
                        )  # fmt: skip
                    finally:
                        self._covered -= answered
                if child is not None:
                    children.append(child)
        finally:
            self._depth -= 1
        if kept:
            self._confirm_kept(kept, children)
        # Finishing this folder's tree waits for its files; do it later (in post-order,
        # from a queue) so the walker never stalls while workers drain, and workers never
        # starve while the walker waits at the end of each small folder.
        done: Later[Node | None] = Later(self._ready)
        old = list(reuse_nodes.values()) if reuse is not None else None
        self._pending_dirs.append(PendingDir(done, path, name, st, children, reuse, old))
        self._finish_dirs(keep=MAX_PENDING_DIRS)
        return done

    def _stat_entries(
        self, entries: list[os.DirEntry[bytes]], *, quiet: bool = False
    ) -> list[tuple[os.DirEntry[bytes], os.stat_result]]:
        """The entries to archive with their lstat, after excludes (mount points stay:
        the walk stores them as empty folders under --one-file-system).

        ``quiet``: a look ahead; errors are reported when the walk itself gets there.
        """
        excluder = self.excluder if self.excluder else None
        listed = []
        for entry in entries:
            if excluder is not None and excluder.excluded(os.fsdecode(entry.path)):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                if not quiet:
                    self._error(entry.path, exc)
                continue
            if excluder is not None and excluder.excluded_entry(entry.path, st):
                continue
            listed.append((entry, st))
        return listed

    def _start_compares(
        self,
        path: bytes,
        listed: list[tuple[os.DirEntry[bytes], os.stat_result]],
        reuse_nodes: dict[bytes, Node],
        root_dev: int,
    ) -> None:
        """Hand this folder's subfolders to the readers to compare with the parent's trees.

        Not below a folder a reader already answered for (the answer covers every depth).
        At the top of a source, the folders handed out are first split into their own
        subfolders (a few levels down) until there are enough to keep every reader busy:
        handing out a source's three top folders would leave readers idle behind the
        biggest one.
        """
        if not self._compare_subtrees or self._covered or not reuse_nodes:
            return
        if path in self._split:
            return  # its subfolders were handed out (or split) already
        subdirs = [
            (entry.path, old)
            for entry, st in listed
            if stat.S_ISDIR(st.st_mode)
            and not self._mount_point(st, root_dev)
            and (old := reuse_nodes.get(entry.name)) is not None
            and entry.path not in self._compares
        ]
        if self._depth == 0:
            subdirs = self._split_frontier(subdirs, root_dev)
        assert self._pool is not None
        for child_path, old in subdirs:
            if old.kind != NodeKind.DIR or old.subtree is None:
                continue
            later: Later[dict[bytes, Counts]] = Later(self._ready)
            job = SubtreeJob(child_path, old.subtree, self._reuse_start_ns, root_dev)
            self._pool.compare(job, _settle(later))
            self._compares[child_path] = later

    def _split_frontier(
        self, frontier: list[tuple[bytes, Node]], root_dev: int
    ) -> list[tuple[bytes, Node]]:
        """Replace folders by their subfolders until there are 8 per reader (or 3 levels);
        the walker lists the folders split here itself (they are few)."""
        want = 8 * max(1, self.options.workers)
        for _ in range(3):
            if len(frontier) >= want:
                break
            deeper: list[tuple[bytes, Node]] = []
            split = False
            for path, old in frontier:
                below = self._subfolders(path, old, root_dev)
                if below is None:
                    deeper.append((path, old))  # a leaf, or unreadable: hand it out whole
                else:
                    deeper.extend(below)
                    self._split.add(path)
                    split = True
            if not split:
                break
            frontier = deeper
        return frontier

    def _subfolders(self, path: bytes, old: Node, root_dev: int) -> list[tuple[bytes, Node]] | None:
        """``path``'s subfolders that the parent has too, as the walker will list them;
        None when it has none (or cannot be listed): then it is handed out whole."""
        if old.kind != NodeKind.DIR or old.subtree is None:
            return None
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
            olds = {n.name: n for n in self.repo.load_tree(old.subtree)}
        except (OSError, CasError):
            return None
        out = [
            (entry.path, sub)
            for entry, st in self._stat_entries(entries, quiet=True)
            if stat.S_ISDIR(st.st_mode)
            and not self._mount_point(st, root_dev)
            and (sub := olds.get(entry.name)) is not None
        ]
        return out or None

    def _compared(self, path: bytes, st: os.stat_result, old: Node) -> tuple[bool, Node | None]:
        """(whether a reader answered for the folder, its node when found unchanged)."""
        later = self._compares.pop(path, None)
        if later is not None:
            self._verdicts.update(later.result())
        counts = self._verdicts.pop(path, None)
        if path in self._troubled_dirs:
            # The comparer does not know what the parent could not record (it trusts
            # ctime for attributes): the walk records those entries again itself.
            return False, None
        if counts is None or old.subtree is None:
            return later is not None, None
        self._count_kept(*counts)
        return True, self._dir_node(path, path.rsplit(b"/", 1)[-1], st, old.subtree, old)

    def _count_kept(self, files: int, size: int, dirs: int = 0) -> None:
        """Count files (and folders) kept from the parent without reading them."""
        with self._count_lock:
            c = self.counters
            c.files_unchanged += files
            c.files_total += files
            c.bytes_total += size
            c.dirs += dirs
        self._progress.files_done += files
        self._progress.bytes_done += size  # processed, though not read

    def _kept_file(self, path: bytes, name: bytes, st: os.stat_result, old: Node) -> Node:
        """The node of a file kept from the parent: the parent's own object when nothing
        about the file changed, so its folder's tree can be reused as it is."""
        if self._same_meta(old, st, path):
            return old
        return node_from_stat(name, st, self._uid_names, self._gid_names, old.content,
                              old.content_hash, xattrs=self._xattrs(path))  # fmt: skip

    def _confirm_kept(
        self,
        kept: list[tuple[int, bytes, os.stat_result, Node | None]],
        children: list[Node | Later[Node | None]],
    ) -> None:
        """Count the folder's kept files, or read those whose chunks are gone from the index."""
        nodes = [children[i] for i, _, _, _ in kept]
        if not self.repo.has_blobs([c for n in nodes for c in n.content]):  # type: ignore[union-attr]
            for (i, path, st, ref), node in zip(kept, nodes, strict=True):
                if not self.repo.has_blobs(node.content):  # type: ignore[union-attr]
                    # A chunk was lost (repaired away): read the file again.
                    children[i] = self._archive_file(path, node.name, st, ref, None)  # type: ignore[union-attr]
            kept = [k for k, n in zip(kept, nodes, strict=True) if children[k[0]] is n]
        self._count_kept(len(kept), sum(st.st_size for _, _, st, _ in kept))

    def _finish_dirs(self, *, keep: int) -> None:
        """Write the trees of queued folders whose entries are all ready, oldest first.

        Children are queued before their parents (post-order), so when a folder is
        finished every sub-folder it holds has been finished already. Waits only while
        more than ``keep`` folders are queued (``keep=0`` finishes everything).
        """
        self._send_batch()  # nothing may wait on files that were never handed out
        while self._pending_dirs:
            pending = self._pending_dirs[0]
            block = len(self._pending_dirs) > keep
            if not block and not all(c.done() for c in pending.children if isinstance(c, Later)):
                return
            self._pending_dirs.popleft()
            try:
                pending.done.set_result(self._finish_dir(pending))
            except BaseException as exc:
                pending.done.set_exception(exc)
                raise

    def _finish_dir(self, pending: PendingDir) -> Node:
        nodes = []
        for child in pending.children:
            result = child.result() if isinstance(child, Later) else child
            if result is not None:
                nodes.append(result)
        with self._count_lock:
            self.counters.dirs += 1
        old, old_nodes = pending.reuse, pending.reuse_nodes
        if (
            old is not None
            and old.subtree is not None
            and old_nodes is not None
            and len(nodes) == len(old_nodes)
            and all(map(operator.is_, nodes, old_nodes))
            and (self.options.dry_run or self.repo.has_blobs((old.subtree,)))
        ):
            # Every entry is the parent's own node: this folder's tree is the parent's,
            # byte for byte. Skip encoding, hashing and looking it up again.
            return self._dir_node(pending.path, pending.name, pending.st, old.subtree, old)
        tree = self._save_tree(nodes, old.subtree if old is not None else None)
        return self._dir_node(pending.path, pending.name, pending.st, tree, old)

    def _unchanged(self, old: Node, st: os.stat_result) -> bool:
        return self._unchanged_meta(old, st) and self.repo.has_blobs(old.content)

    def _unchanged_meta(self, old: Node, st: os.stat_result) -> bool:
        return file_unchanged(old, st, self._reuse_start_ns)


@dataclass
class PendingDir:
    """A folder whose entries are listed, waiting for its files to be read."""

    done: Later[Node | None]
    path: bytes
    name: bytes
    st: os.stat_result
    children: list[Node | Later[Node | None]]
    reuse: Node | None  # the folder in the snapshot files are reused from
    reuse_nodes: list[Node] | None  # that folder's entries, in order


def _settle(later: Later[Any]) -> Callable[[Any, BaseException | None], None]:
    """A reader callback that resolves ``later`` with the result or the error."""

    def done(result: Any, error: BaseException | None) -> None:
        if error is not None:
            later.set_exception(error)
        else:
            later.set_result(result)

    return done


def _encode(nodes: list[Node]) -> bytes:
    from casbackup.repo.tree import encode_tree

    return encode_tree(nodes)
