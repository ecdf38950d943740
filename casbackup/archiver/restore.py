"""Restore a snapshot (or one folder or file of it) into a target directory.

Never writes outside the target, whatever the repository says:
- names are validated by the tree decoder (no ``/``, NUL, ``.``, ``..``, no duplicates);
- every file system call is relative to an open directory fd (``dir_fd``) and uses
  ``O_NOFOLLOW``, so a symlink (restored earlier or already in the target) is never
  followed: a directory that turns out to be a symlink is refused with its subtree
  (``--overwrite`` replaces the link itself by a real folder);
- symlinks are created as links, never written through; ``--overwrite`` replaces the
  entry itself (unlink, or the writer's rename), so it cannot write through a hard link
  or symlink either.
The walking thread creates and opens the folders, on an explicit stack (any depth);
regular files are sent (restore_files.py) to writer processes (archiver/writers.py),
which read their chunks per pack (readplan.py), in batches, under a
temporary name in a folder fd that the walking thread opened and passed along, and
given their real name once their content hash matches. A folder's fd stays open, and
its metadata waits, until every batch with files in it is back: creating entries
changes a folder's mtime, and a read-only mode would stop the writers. Folders of ours
that an earlier restore left read-only are made writable first (targetfs.py).
The first name of a hard-link group goes to a writer like any file; its other names
wait and are linked once it is in place (never to a partial file).
An entry that exists without ``--overwrite`` stops the restore, and so does a target
that takes no more data (full, over quota, read-only: writers.TARGET_FULL): nothing more
is written, the rest of the walk only counts the files left out, and one error says how
far it got. Every other failure (a conflict ``--overwrite`` cannot resolve, a damaged
pack, a path the OS refuses) is listed by path in the result and the restore goes on
with the rest.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from casbackup.archiver.excludes import Excluder
from casbackup.archiver.restore_files import (
    FileSender,
    RestoreOptions,
    RestoreResult,
    RestoreStopped,
    TargetFull,
)
from casbackup.archiver.restore_meta import apply_metadata
from casbackup.archiver.restore_state import Batch, Folder, Frame
from casbackup.archiver.targetfs import (
    TargetError,
    apply_nofollow,
    make_writable,
    open_dir,
    put_back_mode,
    raise_fd_limit,
    remove_stale_temps,
)
from casbackup.archiver.writers import TARGET_FULL, discard
from casbackup.errors import CasError, Interrupted, NotFound, RestoreError
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.tree import Node, NodeKind
from casbackup.reporter import NULL_REPORTER, Reporter
from casbackup.units import plural

__all__ = ["RestoreOptions", "RestoreResult", "Restorer", "restore"]

_DIR = NodeKind.DIR
_FILE = NodeKind.FILE


class Restorer(FileSender):
    """The tree side of a restore: walks the snapshot, makes folders, links, special
    files, and hands regular files to FileSender (restore_files.py)."""

    def __init__(
        self,
        repo: Repository,
        snapshot: Snapshot,
        options: RestoreOptions,
        reporter: Reporter = NULL_REPORTER,
    ) -> None:
        super().__init__(repo, options, reporter)
        self.snapshot = snapshot
        self.exact_acls = options.xattrs and snapshot.xattrs
        self.includer = Excluder(list(options.includes), kind="include")
        self.excluder = Excluder(list(options.excludes))
        self._filtered = bool(self.includer) or bool(self.excluder)  # else every entry is taken
        self._open: dict[int, Folder] = {}  # id -> folder with an open fd (closed on failure)
        self._files_wanted = 0  # names of regular files the walk met that are to be restored
        self._counting = False  # the target took no more: the walk only counts what is left
        self._included = False  # an --include pattern matched something
        # With several --include patterns, those that matched nothing yet (each warned of)
        self._unmatched = (
            {
                p: Excluder([p], kind="include")
                for p in self.includer.patterns
                if not p.lstrip().startswith("!")
            }
            if len(self.includer.patterns) > 1
            else {}
        )

    def run(self) -> RestoreResult:
        opts = self.options
        raise_fd_limit()  # a folder fd per level of the walk's path
        node = self.repo.find_node(self.snapshot.root, opts.subpath)
        prefix = os.fsencode(opts.subpath.rstrip("/")) if opts.subpath not in ("", "/") else b""
        created = not os.path.lexists(opts.target)
        try:
            os.makedirs(opts.target, exist_ok=True)
            root_fd = os.open(opts.target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            saved = None if opts.dry_run else make_writable(root_fd, os.fstat(root_fd))
        except OSError as exc:
            raise RestoreError(f"cannot use target {opts.target}: {exc.strerror}") from None
        self._root_fd = root_fd
        if not created and not opts.dry_run:
            remove_stale_temps(root_fd)  # what restores killed outright left (a resume)
        root = Folder(root_fd, None, b"", saved)
        self._start_writers()
        finished = False
        full: TargetFull | None = None
        try:
            if node is None or node.kind == NodeKind.DIR:
                tree = self.snapshot.root if node is None else node.subtree
                assert tree is not None
                top = Frame(iter(()), prefix, b"", None, True, False, root, None)
                self._walk(top, self.repo.load_tree(tree))
            else:
                parent = prefix.rsplit(b"/", 1)[0]
                top = Frame(iter(()), parent, b"", None, True, False, root, None)
                self._walk(top, [node])
            if not self._counting:
                self._flush()
            self._drain()
            finished = True
        except TargetFull as exc:
            full = exc
        except KeyboardInterrupt:
            raise Interrupted("restore interrupted; the target holds a partial restore") from None
        finally:
            self._stop_writers(abort=not finished)
            self._close_open_dirs()  # only now: no writer can use their fds any more
            put_back_mode(root_fd, saved)
            os.close(root_fd)
        if full is not None:
            done = self.result.files + self.result.links
            failed = len(self.result.errors)
            before = (
                f"; before that, {plural(failed, 'entry', 'entries')} could not be restored"
                if failed
                else ""
            )
            raise RestoreStopped(
                f"restore stopped: the target {opts.target} takes no more data ({full}): "
                f"{done:,} of {self._files_wanted:,} files restored, "
                f"{self._files_wanted - done:,} not restored; nothing partial is left "
                f"under a real name{before}",
                self.result,
            )
        if self.includer and not self._included:
            if created:
                try:
                    os.rmdir(opts.target)  # made for this restore, and nothing went in it
                except OSError:
                    pass
            where = f"{opts.subpath} in the snapshot" if prefix else "the snapshot"
            raise NotFound(f"nothing in {where} matches --include {' '.join(opts.includes)}")
        for pattern in self._unmatched:
            self.result.warnings.append(f"--include {pattern} matched nothing")
        self._report_progress(force=True)
        return self.result

    # ------------------------------------------------------------------ filters
    def _wanted(self, snap_path: bytes, is_dir: bool) -> tuple[bool, bool]:
        """(restore this entry itself, descend into it)."""
        text = os.fsdecode(snap_path)
        if self.excluder and self.excluder.excluded(text):
            return False, False
        if not self.includer:
            return True, True
        if self.includer.excluded(text):  # an include pattern matches: take everything below too
            self._included = True
            return True, True
        return False, is_dir

    def _match_each(self, snap_path: bytes) -> None:
        """Note the --include patterns that match this entry (to warn of those that never do)."""
        text = os.fsdecode(snap_path)
        for pattern, one in list(self._unmatched.items()):
            if one.excluded(text):
                del self._unmatched[pattern]

    # ------------------------------------------------------------------ walking
    def _walk(self, top: Frame, nodes: Iterable[Node]) -> None:
        """Restore ``nodes`` into ``top``'s folder and everything below them, depth first,
        on an explicit stack: a tree thousands of folders deep needs no recursion."""
        top.children = iter(nodes)
        stack = [top]
        while stack:
            frame = stack[-1]
            child = next(frame.children, None)
            try:
                if child is None:
                    stack.pop()
                    if frame is not top:
                        self._leave(frame)
                    continue
                sub = self._restore_node(child, frame)
            except TargetFull:
                self._counting = True  # run() raises it once the files left are counted
                continue
            if sub is not None:
                stack.append(sub)

    def _restore_node(self, node: Node, frame: Frame) -> Frame | None:
        """Restore one entry of ``frame``'s folder; a folder comes back as the frame to walk."""
        # Once per entry of the snapshot: the common case (no filters, a file in a folder
        # made already) takes no call beyond _restore_file.
        name = node.name
        kind = node.kind
        snap_path = frame.snap_path + b"/" + name
        rel_path = frame.rel_path + b"/" + name if frame.rel_path else name
        if frame.forced or not self._filtered:
            take = descend = True
        else:
            take, descend = self._wanted(snap_path, kind == _DIR)
        if self._unmatched and take:
            self._match_each(snap_path)
        # Folders not counted: those above a user's own sources (/home) are root's in every
        # snapshot, and a note on each restore of one's own files would be noise.
        if take and node.uid != self._me and not self.owners and kind != _DIR:
            self.result.others_owned += 1  # only this (walk) thread writes it
        if kind == _DIR:
            return self._enter_dir(node, snap_path, rel_path, frame, take) if descend else None
        if not take:
            return None
        if self.options.dry_run:
            self._count(node)
            return None
        if kind == _FILE:
            self._files_wanted += 1
        if self._counting:
            return None
        folder = frame.dir
        if folder is None:
            folder = self._dir_of(frame)
            if folder is None:
                return None  # the folder could not be made: reported, and its entries skipped
        if kind == _FILE:
            self._restore_file(node, rel_path, folder)
            return None
        fd = folder.fd
        if node.kind == NodeKind.SYMLINK:
            made = self._make(
                node, rel_path, fd, lambda: os.symlink(node.link_target, node.name, dir_fd=fd)
            )
        elif node.kind == NodeKind.FIFO:
            made = self._make(node, rel_path, fd, lambda: os.mkfifo(node.name, 0o600, dir_fd=fd))
        elif node.kind in (NodeKind.CHARDEV, NodeKind.BLOCKDEV):
            if not self.owners:
                self._warn(rel_path, "device node skipped (needs root)")
                return None
            kind_bits = stat.S_IFCHR if node.kind == NodeKind.CHARDEV else stat.S_IFBLK
            made = self._make(
                node,
                rel_path,
                fd,
                lambda: os.mknod(node.name, kind_bits | 0o600, node.rdev, dir_fd=fd),
            )
        else:
            self._warn(rel_path, f"{node.kind.name.lower()} not restored")
            return None
        if made:
            self._apply_meta_nofollow(node, rel_path, fd)
        return None

    def _enter_dir(
        self, node: Node, snap_path: bytes, rel_path: bytes, parent: Frame, take: bool
    ) -> Frame | None:
        assert node.subtree is not None
        frame = Frame(iter(()), snap_path, rel_path, node, take,
                       take and bool(self.includer), None, parent)  # fmt: skip
        if take and not self.options.dry_run and not self._counting:
            try:
                if self._dir_of(frame) is None:
                    return None  # reported; nothing below it can be restored
            except TargetFull:
                self._counting = True  # the walk goes on, counting the files left out
        try:
            frame.children = iter(self.repo.load_tree(node.subtree))
        except CasError as exc:
            # A damaged listing loses this folder only; the rest of the snapshot is restored.
            self._fail(rel_path, f"directory listing unreadable: {exc}")
        return frame

    def _dir_of(self, frame: Frame) -> Folder | None:
        """The frame's folder in the target, created on first use (with the folders above
        it that do not exist yet); None when the OS refused one (reported by path)."""
        missing = []
        up: Frame | None = frame
        while up is not None and up.dir is None:
            missing.append(up)
            up = up.parent
        for pending in reversed(missing):
            assert pending.parent is not None and pending.parent.dir is not None
            assert pending.node is not None
            parent = pending.parent.dir
            try:
                fd, saved, created = open_dir(
                    pending.node.name, parent.fd, replace=self.options.overwrite
                )
            except TargetError as exc:
                if exc.errno in TARGET_FULL:
                    self.stop(TargetFull(os.strerror(exc.errno)))
                    raise TargetFull(os.strerror(exc.errno)) from None
                self._fail(pending.rel_path, str(exc))
                # Skip the rest of every folder that was to hold it: nothing fits there.
                for skipped in missing:
                    skipped.children = iter(())
                return None
            if not created:  # a folder made just now holds nothing of an earlier restore
                remove_stale_temps(fd)
            # A folder made just now in one without a default ACL has none either.
            folder = Folder(fd, pending.node, pending.rel_path, saved, created=created,
                            inherits=None if parent.inherits or not created else False)  # fmt: skip
            with self._lock:
                self._open[id(folder)] = folder
            pending.dir = folder
        return frame.dir

    def _leave(self, frame: Frame) -> None:
        """The walk is done with ``frame``: finish its folder now, or when its last batch is back."""
        if self._counting:
            return  # its folder is closed, without metadata, once the writers stopped
        folder = frame.dir
        if folder is None:
            if frame.take and frame.node is not None and self.options.dry_run:
                with self._lock:
                    self.result.dirs += 1
            return
        with self._lock:
            folder.walked = True
            last = folder.batches == 0
        if last:
            self._finish_dir(folder)
        self._raise_failure()

    def _finish_dir(self, folder: Folder) -> None:
        """All of a folder's entries exist: apply its metadata and close it."""
        if folder.node is None:
            return  # the target itself: run() closes it, and its metadata is the user's
        with self._lock:
            if self._open.pop(id(folder), None) is None:
                return  # closed already, after a failure
        node = folder.node
        for problem in apply_metadata(folder.fd, node.uid, node.gid, node.mode, node.mtime_ns,
                                      owners=self.owners, xattrs=self._xattrs(node),
                                      exact_acls=self.exact_acls):  # fmt: skip
            self._warn(folder.rel_path, problem)
        os.close(folder.fd)
        with self._lock:
            self.result.dirs += 1

    def _close_open_dirs(self) -> None:
        """After the writers stopped: remove the temporary files of batches whose outcome
        never came back; on a failure, close what is left open (no metadata: the restore
        is partial) and put back the modes of folders made writable."""
        with self._lock:
            lost, self._outstanding = list(self._outstanding), set()
        for done in lost:
            for slot, _name, job in done.items:
                discard(done.dirs[slot].fd, job.temp)
        with self._lock:
            left, self._open = list(self._open.values()), {}
        for folder in left:
            put_back_mode(folder.fd, folder.saved_mode)
            os.close(folder.fd)
        self._batch = Batch()

    # ------------------------------------------------------------------ metadata
    def _apply_meta_nofollow(self, node: Node, rel_path: bytes, dir_fd: int) -> None:
        problems = apply_nofollow(node, dir_fd, owners=self.owners, xattrs=self._xattrs(node),
                                  exact_acls=self.exact_acls)  # fmt: skip
        for problem in problems:
            self._warn(rel_path, problem)
        with self._lock:
            if node.kind == NodeKind.SYMLINK:
                self.result.symlinks += 1
            elif node.kind == NodeKind.FILE:
                self.result.files += 1
            else:
                self.result.specials += 1


def restore(
    repo: Repository,
    snapshot: Snapshot,
    options: RestoreOptions,
    reporter: Reporter = NULL_REPORTER,
) -> RestoreResult:
    """Restore ``options.subpath`` of ``snapshot`` into ``options.target``.

    Entries that cannot be restored (a conflict in the target that --overwrite cannot
    resolve, a damaged pack, a full disk, a path the OS refuses) are listed by path in
    ``result.errors`` and the restore goes on with the rest; metadata that could not be
    applied (owners, modes, times, extended attributes) is listed in ``result.warnings``.
    Raises RestoreError when an entry exists in the target and ``overwrite`` is off,
    Interrupted on Ctrl-C, CasError for a snapshot that cannot be read at all.
    """
    return Restorer(repo, snapshot, options, reporter).run()
