"""What a backup is asked to do and what it returns, and which snapshot it builds on.

Plain data (options, result, counters) and the choice of the parent snapshot, shared
by the walk (archiver/walk.py), the reader hand-off (archiver/reading.py) and the
backup itself (archiver/backup.py).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from casbackup.repo.indexcache import cache_root
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import FsSnapshotRecord, Snapshot, check_tags
from casbackup.store.local import LocalBackend

if TYPE_CHECKING:
    from casbackup.fssnap.session import FsSnapshotPlan


class DumpSource(Protocol):
    """A byte stream to store as a file in the snapshot (a database dump)."""

    def readinto(self, buffer: Any) -> int: ...

    def finish(self) -> Any: ...  # returns engines.base.DumpInfo or raises DatabaseError

    def close(self) -> None: ...


@dataclass(frozen=True)
class StreamSpec:
    name: str  # logical database name
    filename: str  # file name under /.databases/
    engine: str
    open: Callable[[], DumpSource]
    # False for a file stored beside a dump whose own record names it (PostgreSQL globals):
    # stored and checked like a dump, but no database record of its own.
    record: bool = True


@dataclass(frozen=True)
class BackupOptions:
    paths: tuple[str, ...]
    type: str = "incremental"
    app: str | None = None
    tags: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    # archiver/excludes.py: folders holding one of these files (NAME or NAME:HEADER) are
    # left out (--exclude-if-present, --exclude-caches), and files over this many bytes (0: no
    # limit; --exclude-larger-than).
    exclude_if_present: tuple[str, ...] = ()
    exclude_larger_than: int = 0
    one_file_system: bool = False
    dry_run: bool = False
    workers: int = 2  # reader processes
    streams: tuple[StreamSpec, ...] = ()
    app_definition: dict[str, Any] | None = None
    parent: str | None = None  # force a parent snapshot id
    xattrs: bool = True  # record extended attributes, ACLs and capabilities (--no-xattrs: off)
    # Database files that ``streams`` dump through their engine (absolute paths): left out
    # of the walk with their -wal, -shm and -journal companions (a live file read while it
    # changes is neither consistent nor needed; the dump restores the database).
    database_files: tuple[str, ...] = ()
    # --delta-files SIZE (archiver/delta_files.py): a changed file of at least this many
    # bytes is stored as deltas of its version in the parent snapshot; 0: off.
    delta_files: int = 0
    # Called once before the walk with whether a parent snapshot's files are reused (True)
    # or every file is read (False): the CLI then stops warming the sources' metadata,
    # which only a walk that compares with a parent waits for (archiver/warm.py).
    on_parent_chosen: Callable[[bool], None] | None = None

    # File-system snapshots (fssnap/): (source, folder to read it from); the tree records
    # the source's own path. `fs_snapshots` goes into the snapshot record; `before_save`
    # runs after everything was read and may raise to fail the backup (a full LVM snapshot).
    read_from: tuple[tuple[str, str], ...] = ()
    fs_snapshots: tuple[FsSnapshotRecord, ...] = ()
    before_save: Callable[[], None] | None = None
    fs_plan: FsSnapshotPlan | None = None  # applied by archiver/application.py

    def __post_init__(self) -> None:
        check_tags(self.tags)  # UsageError: a tag listings and filters could not show


# The files SQLite keeps beside a database while it is open (WAL mode, rollback journal).
DATABASE_COMPANIONS = ("", "-wal", "-shm", "-journal")


@dataclass
class BackupResult:
    """``warnings``: what could not be stored (files, folders, attributes): a partial
    backup (exit 3). ``notes``: what the user should know though everything was stored
    (a file that changed while it was read, database files left to their dumps)."""

    snapshot: Snapshot | None
    parent: Snapshot | None
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Counters:
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    dirs: int = 0
    files_total: int = 0
    bytes_total: int = 0
    bytes_read: int = 0
    errors: int = 0


def choose_parent(
    repo: Repository, options: BackupOptions, notes: list[str] | None = None
) -> tuple[Snapshot | None, Snapshot | None]:
    """Return (reference, reuse_source): the latest of the group, and what files may be
    reused from (either None: no parent).

    A snapshot that cannot be read (damaged, or written with a key or format this client
    cannot read) may be the newest of the group: passed over in silence, the backup
    compared with an older parent and read again everything changed since. Each one is
    appended to ``notes`` (when given) as one line naming it, why, and what was chosen."""
    if options.parent:
        forced = repo.resolve_snapshot(options.parent)
        # A full reads every file whatever its parent: it is what is run to read them again.
        return forced, None if options.type == "full" else forced
    unreadable: list[str] = []
    group = [s for s in repo.list_snapshots(warnings=unreadable) if _same_group(s, options)]
    latest = group[-1] if group else None
    if options.type == "full":
        reference, reuse = latest, None
    elif options.type == "incremental":
        reference, reuse = latest, latest
    else:
        fulls = [s for s in group if s.type == "full"]
        reference = reuse = fulls[-1] if fulls else None
    if notes is not None and options.type != "full":
        chosen = (
            f"files are compared with snapshot {reuse.short_id} instead"
            if reuse is not None
            else "every file is read"
        )
        for line in unreadable:
            notes.append(f"{line}; it may be this backup's newest: {chosen}")
    return reference, reuse


def _same_group(snap: Snapshot, options: BackupOptions) -> bool:
    if options.app is not None:
        return snap.app == options.app
    return (
        snap.app is None
        and snap.host == socket.gethostname()
        and sorted(set(snap.paths)) == sorted(set(options.paths))
    )


def exclude_renames(read_from: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """(read folder, original path) pairs, so excludes match the paths users wrote."""
    return tuple((read, os.path.abspath(source)) for source, read in read_from)


def database_paths(options: BackupOptions) -> frozenset[str]:
    """Every path the walk leaves out for ``options.database_files``: each database file
    and the companions SQLite keeps beside it."""
    return frozenset(
        os.path.abspath(path) + suffix
        for path in options.database_files
        for suffix in DATABASE_COMPANIONS
    )


def own_folders(repo: Repository, sources: Iterable[str]) -> frozenset[str]:
    """The folders every backup leaves out that lie in ``sources``: this repository's
    folder (a local one) and this client's cache, by their absolute and real paths.

    A home backed up into a repository in it stored, every run, the packs the run
    before had written, and the cache's LMDB file changing as it was read. Borg leaves
    both out too. Only those inside a source are returned: an empty set keeps the walk's
    exclusion test off (it costs a call per entry)."""
    root = repo.backend.root if isinstance(repo.backend, LocalBackend) else None
    own = set()
    for folder in (root, cache_root()):
        if folder is not None:
            own.update((os.path.abspath(folder), os.path.realpath(folder)))
    tops = {f(p).rstrip("/") or "/" for p in sources for f in (os.path.abspath, os.path.realpath)}
    return frozenset(
        f for f in own for top in tops if f == top or f.startswith(top.rstrip("/") + "/")
    )


def reachable_sources(paths: tuple[str, ...]) -> tuple[tuple[str, ...], list[tuple[str, str]]]:
    """Split ``paths`` (absolute) into those the walk can start at (their own entry can be
    looked at: a folder of mode 000 can, and is then warned about by the walk) and
    (path, why) for each that cannot: it does not exist, or a folder above it may not be
    searched by this user (it may well exist: "cannot be read", not "does not exist").
    ``why`` is "does not exist" or the system's word ("Permission denied")."""
    ok: list[str] = []
    missing: list[tuple[str, str]] = []
    for path in paths:
        try:
            os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            missing.append((path, "does not exist"))
        except OSError as exc:
            missing.append((path, str(exc.strerror or exc)))
        else:
            ok.append(path)
    return tuple(ok), missing


def with_link_targets(paths: tuple[str, ...]) -> tuple[tuple[str, ...], list[str]]:
    """``paths`` (absolute) plus, for each that is a symlink, the folder or file it resolves
    to when no path already covers it; and one note per symlink source.

    Why: an application's source is often a link (/srv/app -> /data/app). Stored as what it
    is, the snapshot held the link alone: 0 files, exit 0, and recover skipped it. The link
    is still recorded as it is (restore recreates it); what it points to is a source too.
    (restic and borg store only the link of a symlink argument.)"""
    out = list(paths)
    notes = []
    for path in paths:
        if not os.path.islink(path):
            continue
        target = os.path.realpath(path)
        if not os.path.exists(target):
            notes.append(f"source {path} is a symlink to {target}, which does not exist: "
                         "only the link is backed up")  # fmt: skip
            continue
        if not inside(target, tuple(out)):
            out.append(target)
        notes.append(f"source {path} is a symlink to {target}: the link and what it points to "
                     "are backed up")  # fmt: skip
    return tuple(out), notes


def inside(path: str, sources: tuple[str, ...]) -> bool:
    """Whether ``path`` is one of ``sources`` or below one (absolute paths, no I/O)."""
    path = os.path.abspath(path)
    return any(path == s or path.startswith(s.rstrip("/") + "/") for s in sources)


def troubled_paths(errors: Iterable[object]) -> tuple[frozenset[bytes], frozenset[bytes]]:
    """The paths a snapshot's ``errors`` name, and every folder above them.

    An entry whose attribute could not be read is stored without it, and a warning says so
    once; kept from that snapshot as it stands, it stayed incomplete with every later
    backup silent about it. Each error is ``<path>: <what>`` (``Backup._problem``); a path
    may hold ": " itself, so every text before one counts: a wrong one costs reading one
    entry's metadata again, never a wrong record. The errors are untrusted (a repository
    record): anything but text is passed over. A snapshot keeps its first
    MAX_RECORDED_ERRORS (archiver/backup.py) errors: entries past them are not retried.
    """
    paths: set[bytes] = set()
    for message in errors:
        if not isinstance(message, str):
            continue
        end = message.find(": ")
        while end > 0:
            paths.add(os.fsencode(message[:end]))
            end = message.find(": ", end + 2)
    dirs: set[bytes] = set()
    for path in paths:
        while (path := path.rpartition(b"/")[0]) and path not in dirs:
            dirs.add(path)
    return frozenset(paths), frozenset(dirs)
