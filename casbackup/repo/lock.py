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

A lock judged stale may still have a live owner: a backup paused (SIGSTOP, a laptop
asleep, a VM suspended) past STALE_AFTER, or whose refreshes failed, or a client whose
clock runs behind. A prune that removed such a lock may have deleted what the owner
deduplicated against, so the owner must notice before it commits anything:
- a refresh writes the new lock file, then checks that the old one is still there
  before deleting it, so the owner's lock files cover its whole run without a gap, and a
  gap (its file deleted by someone else) marks the lock ``lost``;
- ``Lock.confirm`` (before every index file and snapshot a writer commits, and before
  prune deletes anything) raises LockError when the lock is lost or its file is gone;
- an exclusive lock proceeds only once a listing shows no other lock but stale ones it
  deleted itself: it lists again after removing stale locks (a refresh that raced the
  removal shows up as a new, live lock), and a stale lock it cannot delete stops it.
Since lock names are random and never reused, a lock file still present was never
deleted, and an exclusive holder that went ahead deleted every lock it listed.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from casbackup import liveness
from casbackup.errors import CasError, LockError, NotFound, RepositoryBusy, StorageError
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
        # Why this lock can no longer be trusted (its file was deleted by someone else while
        # this process held it), or None; ``confirm`` raises LockError with it.
        self.lost: str | None = None
        # When this lock's file was last written: (time.time(), time.monotonic()).
        self._renewed = (time.time(), time.monotonic())
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
            self._renewed = (time.time(), time.monotonic())
            written = True
            self._exclude_others()
            self._thread = quiet_thread(self._refresh_loop, name="lock-refresh")
            self._thread.start()
            held = getattr(self._repo, "held_locks", None)
            if held is not None:
                held.append(self)  # confirmed before the repository commits (confirm_locks)
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

    # Listings an exclusive lock makes before it gives up on locks that keep changing.
    ROUNDS = 5

    def _exclude_others(self) -> None:
        """List the other locks: raise LockError on a live one that conflicts; an exclusive
        lock deletes the stale ones and lists again until a listing shows none left (a
        lock refreshed while it was being removed is then seen as the live lock it is)."""
        for _round in range(self.ROUNDS):
            changed = False
            for info in list_locks(self._repo):
                if info.name == self.name:
                    continue
                if info.is_stale():
                    # Ignored by a shared lock; an exclusive one clears it away, so a killed
                    # backup's lock does not stay until someone runs 'casbackup unlock'.
                    if self.exclusive:
                        if self._remove_stale(info.name):
                            self.removed.append(info.describe())
                        changed = True
                    continue
                if self.exclusive or info.exclusive:
                    # A mount holds its lock until it is unmounted: it never finishes.
                    until = (
                        f"unmount it (fusermount3 -u MOUNTPOINT on {info.host})"
                        if info.command.rsplit(" ", 1)[-1] == "mount"
                        else "wait for it to finish"
                    )
                    raise RepositoryBusy(
                        f"repository is locked: {info.describe()}; "
                        f"{until}, or run 'casbackup unlock' if it is gone"
                    )
            if not changed:
                return
        raise RepositoryBusy(
            "repository locks kept changing while this exclusive lock was taken; try again"
        )

    def _renew(self) -> None:
        """Replace this lock's file by a new one (caller holds ``_mutex``). The old file
        is deleted only after the new one is stored and the old one is seen still there:
        the files cover the run without a gap. An old file already gone was deleted by
        someone else (it looked stale): the lock is ``lost``, for good, and renewed still
        (a mount or the service's reads go on: from now on nothing is pruned under them).
        Raises CasError when the store fails (the old file stays in force)."""
        old = self.name
        if old is None:
            return
        self._check_age()
        new = self._write()
        self._renewed = (time.time(), time.monotonic())
        try:
            still = self._repo.backend.exists(old)
        except BaseException:
            self._delete(new)
            raise
        self.name = new
        if not still:
            self.lost = self.lost or _lost_message()
            with _held_mutex:
                _held.discard(old)
            return
        self._delete(old)

    def _check_age(self) -> None:
        """An exclusive lock left unrenewed nearly as long as STALE_AFTER (its process
        paused, its refreshes failing) may have looked stale to others, and a shared lock
        ignores a stale lock without removing it: a backup may have run meanwhile and
        used what this prune means to delete. Then the lock is ``lost``. (A shared lock
        needs no such rule: an exclusive one removes the stale locks it passes over.)"""
        if not self.exclusive or self.lost is not None:
            return
        wall, mono = self._renewed
        unrenewed = max(time.time() - wall, time.monotonic() - mono)
        if unrenewed > STALE_AFTER * 5 / 6:
            self.lost = (
                f"this process's exclusive repository lock went unrenewed for {unrenewed:.0f}s "
                "(paused, or its refreshes failed): others may have taken it for stale and "
                "gone on without it, so what it planned may no longer hold"
            )

    def confirm(self, *, renew: bool = True) -> None:
        """Make sure this lock has been held without a break since it was taken, and
        renew it (unless not ``renew``): called before a writer commits (an index file, a
        snapshot) and before prune deletes. Raises LockError when its file was deleted by
        someone else (it may have been taken for stale, and a prune may have run
        meanwhile), CasError when the store cannot tell."""
        with self._mutex:
            if self.name is None:
                raise LockError("the repository lock was released; nothing more is stored")
            self._check_age()
            if self.lost is None and not self._repo.backend.exists(self.name):
                self.lost = _lost_message()
            if self.lost is None and renew:
                try:
                    self._renew()  # fresh for the next STALE_AFTER seconds
                except CasError:
                    pass  # the file is there: held still, and the refresh thread retries
            if self.lost is not None:
                raise LockError(f"{self.lost}; nothing more was committed: run it again")

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_EVERY):
            with self._mutex:
                if self.name is None:
                    return
                try:
                    self._renew()
                except CasError:
                    continue

    def _remove_stale(self, name: str) -> bool:
        """Delete a stale lock's file: True when deleted, False when already gone (its
        owner released or renewed it: the next listing shows which). Raises LockError
        when it cannot be deleted: going ahead would leave a lock whose owner may be alive
        and would never learn that it was passed over."""
        try:
            self._repo.backend.delete(name)
        except NotFound:
            return False
        except CasError as exc:
            raise LockError(
                f"could not remove the stale lock {name}: {exc}; remove it by hand once its "
                "owner is known to be stopped"
            ) from exc
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
        held = getattr(self._repo, "held_locks", None)
        if held is not None and self in held:
            held.remove(self)
        if name:
            self._delete(name)

    def __enter__(self) -> Lock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


LOCK_RETRY_MAX_S = 30.0  # the longest pause between two tries of a waiting lock


def acquire_waiting(
    repo,  # Repository
    *,
    exclusive: bool,
    command: str,
    wait_s: float = 0.0,
    on_wait: Callable[[str], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Lock:
    """Take a lock as ``Lock.acquire`` does; while another live process holds a conflicting
    one (``RepositoryBusy``: a prune from cron beside the service's backup, a second
    service's forget), try again, 1 s after the first refusal and then twice as long each
    time (at most ``LOCK_RETRY_MAX_S``), until ``wait_s`` seconds have passed: then the last
    refusal is raised, with how long it waited. ``on_wait(reason)`` hears the first
    refusal (one line, for a log). Any other error (a stale lock that cannot be removed,
    a storage failure) is raised at once; an interrupt during a pause ends the wait."""
    deadline = clock() + max(0.0, wait_s)
    pause = 1.0
    told = False
    while True:
        try:
            return Lock(repo, exclusive, command).acquire()
        except RepositoryBusy as exc:
            left = deadline - clock()
            if left <= 0:
                if told:
                    from casbackup.units import format_run_time

                    waited = format_run_time(wait_s)
                    raise RepositoryBusy(f"{exc} (waited {waited} for it)") from None
                raise
            if not told and on_wait is not None:
                on_wait(str(exc))
            told = True
            sleep(min(pause, left))
            pause = min(pause * 2, LOCK_RETRY_MAX_S)


def _lost_message() -> str:
    return (
        "this process's repository lock was removed by another client while it ran (it "
        f"looked stale: not refreshed for {STALE_AFTER / 60:g} minutes, e.g. the process was "
        "paused or its clock is behind, or 'casbackup unlock --remove-all' was run), so a "
        "prune may have deleted data this run relies on"
    )


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
        except (CasError, ValueError, KeyError, TypeError) as exc:
            # Unreadable lock: an exclusive lock of unknown owner, as old as its file. A
            # holder renews its lock by writing it again, so a file left unwritten past
            # STALE_AFTER is stale like any other (one another user's killed command left,
            # 0600 and theirs, was otherwise "0s old" and in the way for ever).
            try:
                written = repo.backend.modified(name)
            except CasError:
                written = time.time()
            why = f": {exc}" if isinstance(exc, StorageError) else ""  # permission denied
            locks.append(LockInfo(name, "?", 0, "?", written, True, f"unreadable lock file{why}"))
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
