"""The provider interface, casbackup's snapshot names, and running the external tools.

Every snapshot casbackup takes is named ``casbackup-<app>-<UTC time>-<pid>`` so that leftovers
of a crashed run can be found by name alone and told apart from the user's own snapshots; the
pid says whether the run that took it may still be alive (its snapshot is then left alone).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from casbackup.errors import SnapshotProviderError

NAME_PREFIX = "casbackup-"
# app names may hold '.', '_' and '-' (config/load.py APP_NAME_RE allows more: cleaned below)
_NAME_RE = re.compile(
    r"^casbackup-(?P<app>[A-Za-z0-9._-]*)-(?P<stamp>\d{8}T\d{6}Z)(\.\d+)?-(?P<pid>\d+)$"
)
TOOL_TIMEOUT_S = 300


class NotThatFileSystem(SnapshotProviderError):
    """The source is not on a file system (or volume) of the provider's kind."""


class ToolMissing(SnapshotProviderError):
    """The provider's command-line tool is not installed."""


class ToolFailed(SnapshotProviderError):
    """The tool ran and failed; the message carries its stderr."""


class SnapshotInvalid(SnapshotProviderError):
    """The snapshot became unusable during the backup (an LVM snapshot that filled up)."""


@dataclass(frozen=True)
class Volume:
    """What holds a source: `origin` names it for the tool (a Btrfs subvolume's path, a ZFS
    dataset, an LVM ``vg/lv``); `root` is the folder where its top is mounted now."""

    provider: str
    origin: str
    root: str


@dataclass(frozen=True)
class Frozen:
    """One snapshot taken for a backup.

    `handle` is the provider's name for it (a path, ``dataset@snap`` or ``vg/lv``);
    `read_root` is the folder where the volume's top is seen frozen; `extra` holds what
    removal needs besides the handle (a clone, a mount point).
    """

    volume: Volume
    handle: str
    read_root: str
    time: str  # ISO 8601 UTC, when the snapshot was taken
    extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class Leftover:
    provider: str
    handle: str
    pid: int
    name: str = ""  # the snapshot name (snapshot_name) the handle holds


@dataclass(frozen=True)
class ProviderSettings:
    lvm_snapshot_size: str = "1G"  # lvcreate --size; a percentage like "20%ORIGIN" is --extents


class Provider(Protocol):
    """A kind of file-system snapshot. Methods raise `SnapshotProviderError` subclasses."""

    name: str

    def locate(self, path: str) -> Volume:
        """The volume holding `path`; `NotThatFileSystem` when it is not of this kind."""
        ...

    def supports(self, path: str) -> bool:
        """Whether `locate` would succeed, with no side effects and no exception."""
        ...

    def freeze(self, volume: Volume, snap_name: str, settings: ProviderSettings) -> Frozen:
        """Take a read-only snapshot of `volume` named `snap_name`, readable at `read_root`."""
        ...

    def check(self, frozen: Frozen) -> None:
        """Raise `SnapshotInvalid` if the snapshot can no longer be trusted."""
        ...

    def release(self, frozen: Frozen) -> None:
        """Remove the snapshot (and any mount or clone made for reading it)."""
        ...

    def leftovers(self, paths: tuple[str, ...] | None) -> list[Leftover]:
        """casbackup's snapshots that exist now: near `paths`, or everywhere when None."""
        ...

    def remove(self, leftover: Leftover) -> None:
        """Remove one snapshot found by `leftovers`, with what was made to read it."""
        ...


def snapshot_name(app: str, now: float | None = None, pid: int | None = None, seq: int = 0) -> str:
    """``casbackup-<app>-<UTC time>[.<seq>]-<pid>``: `seq` tells apart the snapshots one run
    takes of several volumes that share a pool, volume group or Btrfs file system."""
    stamp = datetime.fromtimestamp(now if now is not None else time.time(), UTC)
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", app)[:60]
    suffix = f".{seq}" if seq else ""
    return (
        f"{NAME_PREFIX}{clean}-{stamp:%Y%m%dT%H%M%SZ}{suffix}-"
        f"{pid if pid is not None else os.getpid()}"
    )


def parse_name(name: str) -> int | None:
    """The pid of a casbackup snapshot name, or None when the name is not one of ours."""
    m = _NAME_RE.match(name)
    return int(m.group("pid")) if m else None


# Names of the snapshots this process has taken and not yet released (session.py).
_held: set[str] = set()
_held_mutex = threading.Lock()


def hold(name: str) -> None:
    """Record that this process takes (or took) the snapshot ``name``: it is in use."""
    with _held_mutex:
        _held.add(name)


def let_go(name: str) -> None:
    """Record that this process is done with the snapshot ``name``."""
    with _held_mutex:
        _held.discard(name)


def pid_alive(pid: int, name: str = "") -> bool:
    """Whether the casbackup run with this pid may still be running (its snapshot
    ``name`` is in use).

    A pid reused by an unrelated process would keep a leftover forever, so a live process
    counts only when its command line mentions casbackup; and a snapshot with this
    process's own pid that this process did not take is an earlier process's (a
    container's entrypoint, run again after a kill, gets the same pid).
    """
    if pid == os.getpid():
        if not name:
            return True
        with _held_mutex:
            return name in _held
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"casbackup" in f.read()
    except OSError:
        return True  # cannot tell: leave its snapshot alone


def require_tool(tool: str, provider: str) -> str:
    found = shutil.which(tool)
    if found is None:
        raise ToolMissing(f"{provider} snapshots need the '{tool}' command, which is not installed")
    return found


def run_tool(args: list[str], provider: str, *, retries: int = 0, busy: str = "busy") -> str:
    """Run a tool and return its stdout; raise `ToolFailed` with its stderr's first lines.

    `retries` repeats a run whose stderr contains `busy` (zfs-fuse answers "dataset is busy"
    for a moment after a clone was used), waiting a little longer each time.
    """
    exe = require_tool(args[0], provider)
    for attempt in range(retries + 1):
        try:
            done = subprocess.run(
                [exe, *args[1:]], capture_output=True, text=True, timeout=TOOL_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise ToolFailed(f"{' '.join(args)} did not finish in {TOOL_TIMEOUT_S} s") from None
        except OSError as exc:
            raise ToolFailed(f"cannot run {args[0]}: {exc.strerror}") from None
        if done.returncode == 0:
            return done.stdout
        if attempt < retries and busy in done.stderr:
            time.sleep(0.2 * (attempt + 1))
            continue
        err = " ".join(done.stderr.split())[:400] or f"exit status {done.returncode}"
        raise ToolFailed(f"{' '.join(args)} failed: {err}")
    raise AssertionError("unreachable")


def require_root(provider: str) -> None:
    if os.geteuid() != 0:
        raise SnapshotProviderError(f"{provider} snapshots need root; run the backup as root")
