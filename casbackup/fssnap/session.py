"""Freezing an application's sources for the length of its backup, and cleaning up.

`frozen_sources` is the context manager a backup runs inside: on entry it removes
casbackup's leftovers from crashed runs (when `auto_cleanup`), refuses to go beyond
`max_snapshots`, and takes one read-only snapshot per volume that holds a source; it yields
where to read each source from; on exit (success, failure, Ctrl-C) it removes every snapshot
it took. A run killed outright leaves its snapshots behind under casbackup's names, and the
next run (or `casbackup fs-snapshots cleanup`) removes them.
"""

from __future__ import annotations

import fcntl
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace

from casbackup.errors import NotFound, SnapshotProviderError, UsageError
from casbackup.fssnap.base import (
    Frozen,
    Leftover,
    NotThatFileSystem,
    Provider,
    ProviderSettings,
    ToolMissing,
    Volume,
    hold,
    let_go,
    pid_alive,
    require_root,
    snapshot_name,
)
from casbackup.fssnap.btrfs import SNAP_DIR
from casbackup.fssnap.lvm import MOUNT_ROOT
from casbackup.fssnap.mounts import Mount, mounts

PROVIDERS = ("btrfs", "zfs", "lvm")
CHOICES = (*PROVIDERS, "auto", "none")
# casbackup's own mounts (LVM snapshots, zfs-fuse clones) and the lock that makes checking
# max_snapshots and taking the snapshots one step among concurrent backups.
RUN_DIR = MOUNT_ROOT
LOCK_NAME = ".lock"
# File systems that hold no data worth a backup (kernel views, memory): mounted inside a
# source, they are left out quietly, as a snapshot of the source's volume leaves them out.
VIRTUAL_FS = frozenset({
    "proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "ramfs", "cgroup", "cgroup2",
    "securityfs", "debugfs", "tracefs", "pstore", "bpf", "mqueue", "hugetlbfs", "configfs",
    "fusectl", "autofs", "binfmt_misc", "efivarfs", "rpc_pipefs", "nsfs", "selinuxfs",
})  # fmt: skip


@dataclass(frozen=True)
class FsSnapshotPlan:
    """What the config asks for one application (config `[snapshots]` + app `snapshot`)."""

    provider: str  # btrfs | zfs | lvm | auto
    auto_cleanup: bool = True
    max_snapshots: int = 5  # casbackup's snapshots per provider that may exist at once
    settings: ProviderSettings = field(default_factory=ProviderSettings)


@dataclass(frozen=True)
class FrozenSource:
    source: str  # the original absolute path
    read_path: str  # where it is read from while the snapshot exists
    provider: str
    origin: str  # the subvolume, dataset or logical volume
    time: str  # ISO 8601 UTC


@dataclass
class FrozenSources:
    sources: list[FrozenSource] = field(default_factory=list)
    excludes: list[str] = field(default_factory=list)  # casbackup's own snapshot folders
    snapshots: list[tuple[Provider, Frozen]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # held by this process (base.hold)

    @property
    def read_from(self) -> tuple[tuple[str, str], ...]:
        return tuple((s.source, s.read_path) for s in self.sources)

    def check(self) -> None:
        """Raise `SnapshotInvalid` if any snapshot failed (an LVM snapshot that filled up)."""
        for provider, frozen in self.snapshots:
            provider.check(frozen)


def get_provider(name: str) -> Provider:
    """The provider named ``name``, through the plugin registry (casbackup.plugins: the
    built-in btrfs, zfs and lvm register as ``casbackup.snapshot_providers`` entry points).
    Raises UsageError for an unknown name, or a plugin that is off or fails to load."""
    from casbackup import plugins

    if not plugins.has("snapshot_provider", name):
        raise UsageError(
            f"unknown snapshot provider {name!r}: expected one of {', '.join(CHOICES)}"
        )
    return plugins.load("snapshot_provider", name)()  # type: ignore[no-any-return]


@dataclass
class CleanupResult:
    removed: list[Leftover] = field(default_factory=list)
    alive: list[Leftover] = field(default_factory=list)  # their backup still runs: kept
    errors: list[str] = field(default_factory=list)  # removals that failed
    unavailable: list[str] = field(default_factory=list)  # providers that could not list


def cleanup(
    providers: tuple[str, ...] = PROVIDERS,
    paths: tuple[str, ...] | None = None,
    *,
    dry_run: bool = False,
) -> CleanupResult:
    """Remove casbackup's snapshots whose run is gone (its pid is not alive).

    Only names casbackup gives (base.snapshot_name) are touched. A provider whose tool is
    missing has nothing of ours to remove and is skipped; one whose tool fails to list
    (zfs-fuse's daemon not running) is reported in `unavailable`.
    """
    result = CleanupResult()
    for name in providers:
        provider = get_provider(name)
        try:
            found = provider.leftovers(paths)
        except ToolMissing:
            continue
        except SnapshotProviderError as exc:
            result.unavailable.append(str(exc))
            continue
        for left in found:
            if pid_alive(left.pid, left.name):
                result.alive.append(left)
                continue
            try:
                if not dry_run:
                    provider.remove(left)
                result.removed.append(left)
            except SnapshotProviderError as exc:
                result.errors.append(str(exc))
    return result


@contextmanager
def frozen_sources(
    app: str,
    sources: tuple[str, ...],
    plan: FsSnapshotPlan,
    log: Callable[[str], None],
    warn: Callable[[str], None] | None = None,
    *,
    left_out: Callable[[str], bool] | None = None,
) -> Iterator[FrozenSources]:
    """Snapshot what holds each source; yield where to read it; remove the snapshots after.

    Raises `NotThatFileSystem` when a source is not on the named provider's kind of file
    system (with "auto", such a source is read live and `log` says so), `ToolMissing`,
    `ToolFailed` (with the tool's stderr), or `SnapshotProviderError` when `max_snapshots`
    would be exceeded or the user is not root. Nothing taken is left behind on any error.
    `log` gets each step; `warn` (default: `log`) a snapshot that could not be removed.

    A snapshot of a volume holds nothing of the other file systems mounted inside it, so
    a source holding such a mount is refused (`SnapshotProviderError`) unless the mount is
    a virtual file system (proc, tmpfs...) or left out by the backup anyway: `left_out(path)`
    says so (the application's excludes, --one-file-system).
    """
    warn = warn or log
    names = PROVIDERS if plan.provider == "auto" else (plan.provider,)
    providers = {n: get_provider(n) for n in names}
    # A source inside another one is read as part of it (archiver/walk.py): from that one's
    # snapshot, or live with it. A snapshot of its own would be taken for nothing, and its
    # record would claim a frozen read that never happened; it is recorded with the one it
    # is read with (_add_nested).
    given = tuple(os.path.abspath(s) for s in sources)
    for path in given:  # as the backup says it, but before any snapshot is taken for nothing
        if not os.path.lexists(path):
            raise NotFound(f"source {path} does not exist")
    paths = tuple(p for p in given if not any(_strictly_inside(p, q) for q in given))
    volumes: dict[str, Volume] = {}
    for path in paths:
        if os.path.islink(path):
            # Stored as the link itself (read live: a link is one atomic read); what it
            # points to is a source of its own when the backup wants it (with_link_targets),
            # and frozen as such. Located through the link, it was read from the snapshot
            # as if it were that folder: a folder instead of the link.
            continue
        volume = _locate(path, plan.provider, providers, log)
        if volume is not None:
            volumes[path] = volume
    _check_nested_mounts(volumes, left_out or (lambda _path: False), log)
    used = sorted({v.provider for v in volumes.values()})
    state = FrozenSources()
    taken: dict[tuple[str, str], Frozen] = {}
    now = time.time()
    try:
        # One backup at a time counts casbackup's snapshots and takes its own: two that
        # start together must not both find room under max_snapshots.
        with _limit_lock() if volumes else nullcontext():
            if plan.auto_cleanup and used:
                done = cleanup(tuple(used), tuple(volumes))
                for left in done.removed:
                    log(f"removed leftover {left.provider} snapshot {left.handle} of a stopped run")
                for message in done.errors + done.unavailable:
                    warn(f"could not remove a leftover snapshot: {message}")
            _check_limit(volumes, providers, plan.max_snapshots)
            _freeze_all(app, volumes, providers, plan, state, taken, now, log)
        _add_nested(given, state)
        yield state
    finally:
        _release(state, log, warn)


def _freeze_all(
    app: str,
    volumes: dict[str, Volume],
    providers: dict[str, Provider],
    plan: FsSnapshotPlan,
    state: FrozenSources,
    taken: dict[tuple[str, str], Frozen],
    now: float,
    log: Callable[[str], None],
) -> None:
    for path, volume in volumes.items():
        key = (volume.provider, volume.origin)
        frozen = taken.get(key)
        if frozen is None:
            provider = providers[volume.provider]
            name = snapshot_name(app, now, seq=len(taken))
            hold(name)  # before it exists: a cleanup in another thread must not take it
            state.names.append(name)
            frozen = provider.freeze(volume, name, plan.settings)
            taken[key] = frozen
            state.snapshots.append((provider, frozen))
            log(f"{volume.provider} snapshot of {volume.origin} taken: {frozen.handle}")
        rel = os.path.relpath(os.path.realpath(path), volume.root)
        read_path = os.path.normpath(os.path.join(frozen.read_root, rel))
        state.sources.append(
            FrozenSource(path, read_path, volume.provider, volume.origin, frozen.time)
        )
        if volume.provider == "btrfs":
            snap_dir = os.path.dirname(frozen.handle)
            if snap_dir == path or snap_dir.startswith(path.rstrip("/") + "/"):
                state.excludes.append(snap_dir)


def _locate(
    path: str, wanted: str, providers: dict[str, Provider], log: Callable[[str], None]
) -> Volume | None:
    # Root first: without it the tools answer "Permission denied" in their own words, or
    # (lvs) as if the source were on no logical volume at all.
    if wanted != "auto":
        require_root(wanted)
        return providers[wanted].locate(path)
    for provider in providers.values():
        if provider.supports(path):
            require_root(provider.name)
            return provider.locate(path)
    if os.geteuid() != 0 and "lvm" in providers:
        # lvs answers only root: whether an LVM volume holds the source cannot be known
        log(f"no file-system snapshot for {path}: its file system supports none that can be "
            "found without root (LVM needs it to be asked); reading it live")  # fmt: skip
        return None
    log(f"no file-system snapshot for {path}: its file system supports none; reading it live")
    return None


def _check_nested_mounts(
    volumes: dict[str, Volume],
    left_out: Callable[[str], bool],
    log: Callable[[str], None],
) -> None:
    """Refuse a frozen source that holds another file system's mount: the snapshot shows
    an empty folder there, and the backup would store it empty without a word."""
    if not volumes:
        return
    table = mounts()
    for path, volume in volumes.items():
        real = os.path.realpath(path)
        skipped: list[str] = []
        for mount in _mounts_inside(real, table):
            point = mount.mount_point
            if _ours(point) or _left_out(real, path, point, left_out):
                continue
            if mount.fstype in VIRTUAL_FS:
                skipped.append(f"{point} ({mount.fstype})")
                continue
            raise SnapshotProviderError(
                f"{path} holds {point}, where another file system ({mount.fstype} "
                f"{mount.source}) is mounted: a snapshot of {volume.origin} does not hold "
                "its files; make it a source of another application, exclude it, or set "
                'snapshot = "none"'
            )
        if skipped:
            log(f"not in the snapshot of {path}, so not backed up: {', '.join(skipped)}")


def _add_nested(given: tuple[str, ...], state: FrozenSources) -> None:
    """Record a source inside a frozen one as read from that one's snapshot (it is)."""
    tops = list(state.sources)
    for path in given:
        for top in tops:
            if _strictly_inside(path, top.source):
                read = os.path.join(top.read_path, os.path.relpath(path, top.source))
                state.sources.append(replace(top, source=path, read_path=read))
                break


def _strictly_inside(path: str, folder: str) -> bool:
    return path != folder and path.startswith(folder.rstrip("/") + "/")


def _mounts_inside(real: str, table: list[Mount]) -> list[Mount]:
    prefix = real.rstrip("/") + "/"
    seen: dict[str, Mount] = {}
    for mount in table:
        if mount.mount_point.startswith(prefix):
            seen[mount.mount_point] = mount  # the last one mounted there is what shows
    # a mount under another one inside the source is that one's business
    return [m for p, m in sorted(seen.items()) if not any(
        p.startswith(q.rstrip("/") + "/") for q in seen if q != p)]  # fmt: skip


def _ours(point: str) -> bool:
    """casbackup's own mounts and folders (an LVM or zfs-fuse read mount, a Btrfs snapshot
    folder) and OpenZFS's snapshot automounts: never something to back up."""
    parts = point.split("/")
    return (
        point == RUN_DIR or point.startswith(RUN_DIR + "/") or SNAP_DIR in parts
        or ".zfs" in parts
    )  # fmt: skip


def _left_out(real: str, path: str, point: str, left_out: Callable[[str], bool]) -> bool:
    """Whether the walk leaves `point` out anyway: it, or a folder between the source and
    it, is excluded (asked by the original path, which excludes are written against)."""
    rel = os.path.relpath(point, real)
    current = path.rstrip("/") or "/"
    for part in rel.split("/"):
        current = os.path.join(current, part)
        if left_out(current):
            return True
    return False


@contextmanager
def _limit_lock() -> Iterator[None]:
    os.makedirs(RUN_DIR, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(RUN_DIR, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _check_limit(volumes: dict[str, Volume], providers: dict[str, Provider], limit: int) -> None:
    needed: dict[str, set[str]] = {}
    for volume in volumes.values():
        needed.setdefault(volume.provider, set()).add(volume.origin)
    for name, origins in needed.items():
        existing = len(providers[name].leftovers(tuple(volumes)))
        if existing + len(origins) > limit:
            raise SnapshotProviderError(
                f"{name}: taking {len(origins)} snapshot(s) would make {existing + len(origins)} "
                f"of casbackup's, over max_snapshots = {limit}; remove some with "
                "'casbackup fs-snapshots cleanup' or raise the limit"
            )


@contextmanager
def _stops_deferred() -> Iterator[None]:
    """Ctrl-C, SIGTERM and SIGHUP wait until the snapshots are removed (a second Ctrl-C of
    an impatient user landed inside the removal and left a snapshot behind), then take
    effect as they would have. Removal takes a fraction of a second; SIGKILL still works."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def note(signum: int, _frame: object) -> None:
        got.append(signum)

    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        # None: set outside Python, left alone; ignored (nohup's SIGHUP, the SIGINT of a
        # shell's 'cmd &') stays ignored, here and in the snapshot tools we run meanwhile.
        if signal.getsignal(signum) not in (None, signal.SIG_IGN):
            previous[signum] = signal.signal(signum, note)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if got:
        signal.raise_signal(got[0])


def _release(state: FrozenSources, log: Callable[[str], None], warn: Callable[[str], None]) -> None:
    # Newest first: an LVM mount is unmounted before its volume goes, a clone before its origin.
    failures = []
    with _stops_deferred():
        for provider, frozen in reversed(state.snapshots):
            try:
                provider.release(frozen)
                log(f"{provider.name} snapshot {frozen.handle} removed")
            except SnapshotProviderError as exc:
                failures.append(str(exc))
    for name in state.names:
        let_go(name)  # removed, or left for 'fs-snapshots cleanup' to remove
    for message in failures:
        warn(
            f"a file-system snapshot could not be removed ({message}); "
            "'casbackup fs-snapshots cleanup' removes it"
        )


__all__ = ["NotThatFileSystem", "SNAP_DIR", "cleanup", "frozen_sources", "get_provider"]
