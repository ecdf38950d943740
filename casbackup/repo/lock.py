"""Repository locks: ``locks/<random hex>``, an envelope (kind LOCK) of JSON.

Shared locks (backup, restore, check) coexist; an exclusive lock (prune, forget,
repair) excludes every other lock. To take a lock a process writes its own lock
file first, then lists the others: if a conflicting live lock exists it deletes
its own and fails, so two racing processes can both fail but never both win.

A lock is stale when it was not refreshed for STALE_AFTER seconds, or when it was
taken on this host by a process that no longer exists (a backup killed with SIGKILL):
it ran in an earlier boot, its pid is gone or now another process's (the lock records
its process's boot, pid namespace and start: casbackup/liveness.py), or it is this
process's own pid while this process does not hold it. A lock of another pid namespace
(a container sharing the host name) counts as another host's.
Stale locks are ignored; an exclusive lock removes them as it is taken (``removed``
says which, for a one-line note), and ``casbackup unlock`` removes them too.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import threading
import time
from dataclasses import dataclass

from casbackup import liveness
from casbackup.errors import CasError, LockError, NotFound, StorageError
from casbackup.repo.ids import Kind
from casbackup.threadsig import quiet_thread

STALE_AFTER = 30 * 60
REFRESH_EVERY = 5 * 60


# Names of the locks this process holds (written and not yet deleted): a lock with this
# process's pid and host that is not among them is an earlier process's.
_held: set[str] = set()
_held_mutex = threading.Lock()


@dataclass(frozen=True)
class LockInfo:
    name: str
    host: str
    pid: int
    user: str
    time: float
    exclusive: bool
    command: str
    # Which process had the pid (boot, pid namespace, start); unknown from older versions.
    who: liveness.ProcessId = liveness.ProcessId(None, None, None)

    def is_stale(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if now - self.time > STALE_AFTER:
            return True
        if self.host != socket.gethostname():
            return False
        with _held_mutex:
            if self.name in _held:
                return False
        ended = liveness.gone(self.pid, self.who)
        if ended is None:
            return False  # another pid namespace: its pid means nothing here
        # This process's own pid, but not a lock it holds: an earlier process's.
        return ended or self.pid == os.getpid()

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        age = int(time.time() - self.time)
        return f"{kind} lock by {self.user}@{self.host} pid {self.pid} ({self.command}), {age}s old"


class Lock:
    """A held lock; refreshed by a background thread until released."""

    def __init__(self, repo, exclusive: bool, command: str) -> None:  # repo: Repository
        self._repo = repo
        self.exclusive = exclusive
        self.command = command
        self.name: str | None = None
        self.removed: list[str] = []  # stale locks this exclusive lock removed (describe())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()

    def _write(self, name: str | None = None) -> str:
        doc: dict[str, object] = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "user": getpass.getuser(),
            "time": time.time(),
            "exclusive": self.exclusive,
            "command": self.command,
        }
        me = liveness.this_process()
        doc.update({k: v for k, v in (("boot", me.boot), ("pidns", me.pidns), ("start", me.start))
                    if v is not None})  # fmt: skip
        name = name or f"locks/{os.urandom(16).hex()}"
        with _held_mutex:
            _held.add(name)  # before it exists: another lock of this process may list it
        try:
            # Create-only where the store offers it (repo_format.md "Object stores").
            self._repo.put_encrypted(name, Kind.LOCK, json.dumps(doc).encode(), create_only=True)
        except BaseException:
            with _held_mutex:
                _held.discard(name)  # an interrupted write's file is deleted by the caller
            raise
        return name

    def acquire(self) -> Lock:
        # Named before it is written: an interrupt (Ctrl-C, SIGTERM) that lands after the
        # write but before this returns still finds and removes the file.
        self.name = f"locks/{os.urandom(16).hex()}"
        written = False
        try:
            self._write(self.name)
            written = True
            for info in list_locks(self._repo):
                if info.name == self.name:
                    continue
                if info.is_stale():
                    # Ignored either way; an exclusive lock also clears it away, so a killed
                    # backup's lock does not stay until someone runs 'casbackup unlock'.
                    if self.exclusive and self._remove_stale(info.name):
                        self.removed.append(info.describe())
                    continue
                if self.exclusive or info.exclusive:
                    # A mount holds its lock until it is unmounted: it never finishes.
                    until = (
                        f"unmount it (fusermount3 -u MOUNTPOINT on {info.host})"
                        if info.command.rsplit(" ", 1)[-1] == "mount"
                        else "wait for it to finish"
                    )
                    raise LockError(
                        f"repository is locked: {info.describe()}; "
                        f"{until}, or run 'casbackup unlock' if it is gone"
                    )
            self._thread = quiet_thread(self._refresh_loop, name="lock-refresh")
            self._thread.start()
        except BaseException as exc:
            self._stop.set()
            # A write that failed with a storage error left nothing of ours under the name
            # (a create-only refusal means the object there is someone else's: never delete
            # it); an interrupt during the write may have left our lock, so it is removed.
            if written or not isinstance(exc, StorageError):
                self._delete(self.name)
            self.name = None
            raise
        return self

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_EVERY):
            with self._mutex:
                if self.name is None:
                    return
                try:
                    new = self._write()
                except CasError:
                    continue
                old, self.name = self.name, new
            self._delete(old)

    def _remove_stale(self, name: str) -> bool:
        try:
            self._repo.backend.delete(name)
        except CasError:  # released meanwhile (NotFound), or not a lock's file: left alone
            return False
        return True

    def _delete(self, name: str) -> None:
        try:
            self._repo.backend.delete(name)
        except (NotFound, CasError):
            pass
        with _held_mutex:
            _held.discard(name)

    def release(self) -> None:
        self._stop.set()
        with self._mutex:
            name, self.name = self.name, None
        if name:
            self._delete(name)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def list_locks(repo) -> list[LockInfo]:
    locks = []
    for name, _size in repo.backend.list("locks/"):
        try:
            doc = json.loads(repo.get_encrypted(name, Kind.LOCK))
            locks.append(
                LockInfo(
                    name, str(doc["host"]), int(doc["pid"]), str(doc["user"]), float(doc["time"]),
                    bool(doc["exclusive"]), str(doc.get("command", "")), _who(doc),
                )
            )  # fmt: skip
        except NotFound:
            continue  # released while we listed
        except (CasError, ValueError, KeyError, TypeError):
            # Unreadable lock: treat as a live exclusive lock of unknown owner; unlock can remove it.
            locks.append(LockInfo(name, "?", 0, "?", time.time(), True, "unreadable lock file"))
    return locks


def _who(doc: dict[str, object]) -> liveness.ProcessId:
    """The lock's process beyond its pid; a part absent (an older version's lock) or of
    the wrong type is unknown."""
    boot, pidns, start = doc.get("boot"), doc.get("pidns"), doc.get("start")
    return liveness.ProcessId(
        boot if isinstance(boot, str) and boot else None,
        pidns if isinstance(pidns, str) and pidns else None,
        start if isinstance(start, int) and not isinstance(start, bool) and start >= 0 else None,
    )
