"""The journal of a recovery in progress: how a rerun knows what an interrupted one left.

A recovery that is killed (SIGKILL, a power cut) half-way leaves part of its files and
databases in the target. Without a record, a rerun could not tell them from a user's data
and refused the target as not empty: the operator had to find and delete the pieces by hand
on the worst day. So, once the re-check has passed and before the first byte is written,
`recover` writes ``<target>/.casbackup-recovery-journal.json`` (app, snapshot, every folder
and file it is about to write); it adds each database just before its load begins, takes it
out again when the load failed and left it as it was (the engines' restores are atomic: a
database the load refused, or never reached, is not the recovery's to replace), and removes
the journal only when the recovery succeeded. A rerun of the same application from the
same snapshot onto that target takes those parts as its own and restores them again,
replacing what is there; a rerun from another snapshot is refused, naming the one the
journal holds (mixing two snapshots' files in one folder would be a state no backup ever
had).

The journal is in the target, on this machine: whoever can write it can write the target's
data anyway. It is read as data all the same: anything malformed is no journal.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from casbackup.errors import RecoveryError
from casbackup.recovery.layout import is_in_place
from casbackup.recovery.report import write_atomically
from casbackup.repo.indexcache import cache_root, private_dirs
from casbackup.repo.localstate import state_root

JOURNAL_NAME = ".casbackup-recovery-journal.json"
IN_PLACE_JOURNAL = "recover-in-place.json"
JOURNAL_VERSION = 1


@dataclass(frozen=True)
class Journal:
    app: str
    snapshot: str  # the snapshot's identity (its first id, kept through tag changes)
    started: str  # ISO 8601 UTC
    files: tuple[str, ...]  # absolute target paths of the file items
    databases: tuple[str, ...]  # DatabaseItem.where of each database
    # Of those, the parts restored or loaded whole and without error, each with the start
    # time of the run that did it: a rerun leaves them as they are (the application may
    # have been started on them meanwhile).
    done: tuple[tuple[str, str], ...] = ()

    def encode(self) -> bytes:
        doc = {"version": JOURNAL_VERSION, "app": self.app, "snapshot": self.snapshot,
               "started": self.started, "files": list(self.files),
               "databases": list(self.databases),
               "done": [{"part": part, "by": by} for part, by in self.done]}  # fmt: skip
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    def done_by(self, part: str) -> str:
        """The start time of the run that finished `part` ("" when none did)."""
        return next((by for p, by in self.done if p == part), "")


def journal_path(target: str) -> str:
    """Where the journal of a recovery into ``target`` is: in the target; in place (the
    target ``/``), in this user's state folder (``<state root>/recover-in-place.json``),
    since an ordinary user cannot write ``/`` and root's ``/`` is no place for it."""
    if is_in_place(target):
        return os.path.join(state_root(), IN_PLACE_JOURNAL)
    return os.path.join(target, JOURNAL_NAME)


def read_journal(target: str) -> Journal | None:
    """The journal an interrupted recovery left in `target`; None when there is none or it
    cannot be read as one (never raises)."""
    try:
        with open(journal_path(target), "rb") as f:
            doc = json.loads(f.read(1 << 20))
        if not isinstance(doc, dict) or doc.get("version") != JOURNAL_VERSION:
            return None
        app, snapshot, started = doc["app"], doc["snapshot"], doc["started"]
        files, databases = doc["files"], doc["databases"]
        if not isinstance(files, list) or not isinstance(databases, list):
            return None
        if not all(isinstance(t, str) for t in (app, snapshot, started, *files, *databases)):
            return None
        done = doc.get("done", [])  # journals before it: nothing is known to be done
        if not isinstance(done, list) or not all(
            isinstance(d, dict) and isinstance(d.get("part"), str) and isinstance(d.get("by"), str)
            for d in done
        ):
            return None
        parts = (*files, *databases)
        finished = tuple((d["part"], d["by"]) for d in done if d["part"] in parts)
        return Journal(app, snapshot, started, tuple(files), tuple(databases), finished)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_journal(target: str, journal: Journal) -> None:
    """Write the journal (atomically, 0600), making the target folder (in place: the
    state folder, 0700). Raises OSError."""
    if is_in_place(target):
        os.makedirs(os.path.dirname(journal_path(target)), mode=0o700, exist_ok=True)
    else:
        os.makedirs(target, exist_ok=True)
    write_atomically(journal_path(target), journal.encode())


def remove_journal(target: str) -> None:
    try:
        os.unlink(journal_path(target))
    except FileNotFoundError:
        pass


class JournalWriter:
    """The journal of the recovery running now, rewritten as databases become its own.

    `start()` writes it (raises OSError); `own(where)` adds a database just before its load
    begins, `disown(where)` takes it out when the load left it as it was. Those two return
    a warning when the journal cannot be rewritten (a full target), else None: the load
    goes on, and a rerun after an interruption then refuses that database as not empty
    rather than replacing it.
    """

    def __init__(self, target: str, journal: Journal) -> None:
        self.target, self.journal = target, journal

    def start(self) -> None:
        write_journal(self.target, self.journal)

    def own(self, where: str) -> str | None:
        if where in self.journal.databases:
            return None
        return self._write(replace(self.journal, databases=(*self.journal.databases, where)))

    def finished(self, part: str, by: str) -> str | None:
        """Record that `part` (a file item's target, a database's where) was restored
        whole and without error by the run started at `by`."""
        if self.journal.done_by(part):
            return None
        return self._write(replace(self.journal, done=(*self.journal.done, (part, by))))

    def disown(self, where: str) -> str | None:
        if where not in self.journal.databases:
            return None
        kept = tuple(d for d in self.journal.databases if d != where)
        return self._write(replace(self.journal, databases=kept))

    def _write(self, journal: Journal) -> str | None:
        try:
            write_atomically(journal_path(self.target), journal.encode())
        except OSError as exc:
            return f"the recovery journal {journal_path(self.target)} cannot be updated: {exc.strerror or exc}"
        self.journal = journal
        return None


@contextlib.contextmanager
def target_lock(target: str) -> Iterator[str | None]:
    """Hold the lock of recoveries into ``target`` (an absolute path) for the duration.

    Two recoveries started into one target (a second terminal, a job while one runs) both
    planned on an empty target, then each restored over the other: both failed, half of
    each in the target, one report lost. The lock is an flock on a file of this user's
    private cache folder named by the target's real path (nothing is written in or beside
    the target, which a refused recovery must leave as it was); a recovery as another user
    does not see it. Raises RecoveryError when another process holds it. Yields a warning
    when no lock could be taken (a cache folder that cannot be written), else None: the
    recovery goes on without it.
    """
    busy = f"another recovery into {target} is running"
    with _held(os.path.realpath(target), busy, f"into {target}") as note:
        yield note


@contextlib.contextmanager
def database_locks(wheres: Iterable[str]) -> Iterator[list[str]]:
    """Hold the lock of recoveries loading into each database of ``wheres`` (their
    DatabaseItem.where) for the duration; yields the warnings of locks that could not be
    taken. Two recoveries of one application into two targets, both told to load into one
    database, both found it absent, then the slower one failed half-way with the server's
    'database already exists' after restoring every file. Raises RecoveryError (before
    anything is restored) when another process is loading into one of them."""
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        for where in sorted(set(wheres)):  # one order: two recoveries never wait in a ring
            note = stack.enter_context(
                _held(where, f"another recovery is loading database {where}", f"into {where}")
            )
            if note:
                notes.append(note)
        yield notes


@contextlib.contextmanager
def _held(key: str, busy: str, what: str) -> Iterator[str | None]:
    """An flock on ``<cache>/recover-locks/<hash of key>.lock``; RecoveryError naming
    ``busy`` (and the holder's pid) when another process holds it; yields a warning (about
    a second recovery ``what``) when none could be taken, else None."""
    name = hashlib.sha256(os.fsencode(key)).hexdigest()[:32]
    folder = os.path.join(cache_root(), "recover-locks")
    path = os.path.join(folder, name + ".lock")
    try:
        private_dirs(folder)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        fd, note = -1, f"no lock against a second recovery {what}: {path}: {exc.strerror or exc}"
    try:
        if fd >= 0:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                raise RecoveryError(
                    f"nothing was changed: {busy}"
                    + (f" (process {pid})" if pid.isdigit() else "")
                    + ": wait for it to end, or stop it and run this again"
                ) from None
            with contextlib.suppress(OSError):  # who holds it: for the message only
                os.ftruncate(fd, 0)
                os.pwrite(fd, str(os.getpid()).encode(), 0)
            note = None
        yield note
    finally:
        if fd >= 0:
            os.close(fd)
