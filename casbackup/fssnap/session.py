"""Freezing an application's sources for the length of its backup, and cleaning up.

`frozen_sources` is the context manager a backup runs inside: on entry it removes
casbackup's leftovers from crashed runs (when `auto_cleanup`), refuses to go beyond
`max_snapshots`, and takes one read-only snapshot per volume that holds a source; it yields
where to read each source from; on exit (success, failure, Ctrl-C) it removes every snapshot
it took. A run killed outright leaves its snapshots behind under casbackup's names, and the
next run (or `casbackup fs-snapshots cleanup`) removes them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from casbackup.errors import SnapshotProviderError, UsageError
from casbackup.fssnap.base import (
    Frozen,
    Leftover,
    NotThatFileSystem,
    Provider,
    ProviderSettings,
    ToolMissing,
    Volume,
    pid_alive,
    snapshot_name,
)
from casbackup.fssnap.btrfs import SNAP_DIR

PROVIDERS = ("btrfs", "zfs", "lvm")
CHOICES = (*PROVIDERS, "auto", "none")


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
            if pid_alive(left.pid):
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
) -> Iterator[FrozenSources]:
    """Snapshot what holds each source; yield where to read it; remove the snapshots after.

    Raises `NotThatFileSystem` when a source is not on the named provider's kind of file
    system (with "auto", such a source is read live and `log` says so), `ToolMissing`,
    `ToolFailed` (with the tool's stderr), or `SnapshotProviderError` when `max_snapshots`
    would be exceeded or the user is not root. Nothing taken is left behind on any error.
    `log` gets each step; `warn` (default: `log`) a snapshot that could not be removed.
    """
    warn = warn or log
    names = PROVIDERS if plan.provider == "auto" else (plan.provider,)
    providers = {n: get_provider(n) for n in names}
    paths = tuple(os.path.abspath(s) for s in sources)
    volumes: dict[str, Volume] = {}
    for path in paths:
        volume = _locate(path, plan.provider, providers, log)
        if volume is not None:
            volumes[path] = volume
    used = sorted({v.provider for v in volumes.values()})
    if plan.auto_cleanup and used:
        done = cleanup(tuple(used), tuple(volumes))
        for left in done.removed:
            log(f"removed leftover {left.provider} snapshot {left.handle} of a stopped run")
        for message in done.errors + done.unavailable:
            warn(f"could not remove a leftover snapshot: {message}")
    _check_limit(volumes, providers, plan.max_snapshots)
    state = FrozenSources()
    taken: dict[tuple[str, str], Frozen] = {}
    now = time.time()
    try:
        for path, volume in volumes.items():
            key = (volume.provider, volume.origin)
            frozen = taken.get(key)
            if frozen is None:
                provider = providers[volume.provider]
                name = snapshot_name(app, now, seq=len(taken))
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
        yield state
    finally:
        _release(state, log, warn)


def _locate(
    path: str, wanted: str, providers: dict[str, Provider], log: Callable[[str], None]
) -> Volume | None:
    if wanted != "auto":
        return providers[wanted].locate(path)
    for provider in providers.values():
        if provider.supports(path):
            return provider.locate(path)
    log(f"no file-system snapshot for {path}: its file system supports none; reading it live")
    return None


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


def _release(state: FrozenSources, log: Callable[[str], None], warn: Callable[[str], None]) -> None:
    # Newest first: an LVM mount is unmounted before its volume goes, a clone before its origin.
    failures = []
    for provider, frozen in reversed(state.snapshots):
        try:
            provider.release(frozen)
            log(f"{provider.name} snapshot {frozen.handle} removed")
        except SnapshotProviderError as exc:
            failures.append(str(exc))
    for message in failures:
        warn(
            f"a file-system snapshot could not be removed ({message}); "
            "'casbackup fs-snapshots cleanup' removes it"
        )


__all__ = ["NotThatFileSystem", "SNAP_DIR", "cleanup", "frozen_sources", "get_provider"]
