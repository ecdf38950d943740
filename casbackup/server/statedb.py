"""The service's own state: one SQLite file in the state directory, schema versioned.

What lives here: users, API token hashes, browser sessions, job history (progress, log lines,
results; old finished jobs are deleted: history.py), the audit log and the scheduler's last
fire times. Nothing here is needed to restore
data: the repository stays the only source of truth for backups, so losing this file loses
accounts and history, never backups.

The schema version is SQLite's ``PRAGMA user_version``; ``MIGRATIONS[i]`` takes the schema from
version ``i`` to ``i + 1`` inside one transaction, so a crash mid-migration leaves the old schema.
A file written by a newer casbackup (a version beyond the list) is refused rather than guessed at.
The file is opened in WAL mode with a busy timeout: the CLI (`casbackup user add`) and a running
service may write to it at the same time.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from casbackup.errors import ConfigError, LockError, StorageError, UnsupportedFormat

STATE_FILE = "state.sqlite3"
# OperationalError texts of a file that cannot be written (SQLITE_FULL, _IOERR, _READONLY)
_STORAGE_FAILURES = ("database or disk is full", "disk I/O error", "readonly database")


class StateWriteError(StorageError, sqlite3.OperationalError):
    """The state database cannot be written (its disk full, an I/O error, read-only): a
    StorageError (exit 25; the service answers 503) that names the file, and still an
    sqlite3.Error, which the code that keeps a job's end for later catches (jobs, notices)."""


MIGRATIONS: list[str] = [
    # 0 -> 1: accounts, sessions, jobs, audit, scheduler
    """
    CREATE TABLE users (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
        apps TEXT,                       -- JSON list of application names; NULL = all
        password_hash TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY,             -- public part of the token (looked up, not secret)
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        secret_hash BLOB NOT NULL,       -- SHA-256 of the secret part; the secret is never stored
        apps TEXT,                       -- JSON list; NULL = the user's applications
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked_at REAL,
        last_used_at REAL
    );
    CREATE TABLE sessions (
        id_hash BLOB PRIMARY KEY,        -- SHA-256 of the cookie value
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        csrf TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        address TEXT
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        app TEXT,
        repo TEXT NOT NULL,              -- which repository (its key in the service's registry)
        params TEXT NOT NULL,            -- JSON, never secrets
        state TEXT NOT NULL,
        created_by TEXT,
        created_by_user INTEGER,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        progress TEXT,                   -- JSON of the last Progress
        result TEXT,                     -- JSON
        error TEXT,
        exit_code INTEGER,
        snapshot_id TEXT,
        trigger TEXT NOT NULL DEFAULT 'api'
    );
    CREATE INDEX jobs_state ON jobs(state);
    CREATE INDEX jobs_app ON jobs(app);
    CREATE TABLE job_log (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        time REAL NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL
    );
    CREATE INDEX job_log_job ON job_log(job_id);
    CREATE TABLE audit (
        id INTEGER PRIMARY KEY,
        time REAL NOT NULL,
        actor TEXT,                      -- user name, 'token:ID' detail in actor_kind
        actor_kind TEXT,                 -- session | token | proxy | anonymous | cli | scheduler
        address TEXT,
        method TEXT,
        path TEXT,
        action TEXT NOT NULL,
        app TEXT,
        status INTEGER,
        outcome TEXT NOT NULL,           -- success | failure | denied
        detail TEXT
    );
    CREATE INDEX audit_time ON audit(time);
    CREATE TABLE schedule_state (
        key TEXT PRIMARY KEY,            -- 'backup:<app>', 'verify:<repo>', 'check:<repo>'
        last_fire REAL,                  -- the scheduled time (UTC epoch) last started
        last_job INTEGER
    );
    """,
    # 1 -> 2: a failure notification owed to a backup's application (jobs.py): kept until it
    # is delivered, so that a backup the service's stop cut short is told at the next start
    # when no notifier could be reached during the stop.
    """
    ALTER TABLE jobs ADD COLUMN notice TEXT;
    """,
]


class InstanceLock:
    """An exclusive ``flock`` on ``serve.lock`` in the state folder, held by the one running
    service. The kernel drops it when the process ends, however it ends (kill -9 included),
    so it is never stale. The file records the holder's pid, for the message."""

    NAME = "serve.lock"

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: str | os.PathLike[str]) -> InstanceLock:
        import fcntl

        path = Path(state_dir) / cls.NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot open {path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 20, 0).decode("ascii", "replace").strip()
            os.close(fd)
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise LockError(
                f"another casbackup serve{who} uses the state folder {state_dir}: stop it "
                "first, or give this one its own --state-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


class StateDB:
    """A thread-safe handle on the state database.

    One connection, serialised by a lock: the service's writes are small and rare (job
    progress a few times a second at most), so a pool would only add ways to deadlock.
    """

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.dir = Path(state_dir)
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(
                f"cannot create the state directory {self.dir}: {exc.strerror}"
            ) from None
        self.path = self.dir / STATE_FILE
        try:
            self._conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
            # The file holds password and token hashes: readable by the service's user only.
            os.chmod(self.path, 0o600)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA busy_timeout=30000")
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"cannot open the state database {self.path}: {exc}") from None
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self.migrate()

    @property
    def version(self) -> int:
        with self._lock:
            return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> int:
        """Bring the schema to the newest version; returns the version it started from."""
        with self._lock:
            start = self.version
            if start > len(MIGRATIONS):
                raise UnsupportedFormat(
                    f"the state database {self.path} has schema version {start}; this casbackup "
                    f"knows up to {len(MIGRATIONS)}: upgrade casbackup"
                )
            for version in range(start, len(MIGRATIONS)):
                # executescript commits first, so run the statements one by one inside BEGIN.
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _statements(MIGRATIONS[version]):
                        self._conn.execute(statement)
                    self._conn.execute(f"PRAGMA user_version={version + 1}")
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            return start

    @contextmanager
    def _storage_errors(self) -> Iterator[None]:
        """SQLite's "disk full", I/O and read-only failures as StateWriteError naming this
        file, instead of a bare OperationalError (a 500 without a word of what to do)."""
        try:
            yield
        except sqlite3.OperationalError as exc:
            if not any(s in str(exc) for s in _STORAGE_FAILURES):
                raise
            raise StateWriteError(
                f"the state database {self.path} cannot be written ({exc}): free space on its "
                "disk, or check its permissions"
            ) from None

    def execute(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> sqlite3.Cursor:
        """Run one statement; raises StateWriteError when the file cannot be written."""
        with self._lock, self._storage_errors():
            return self._conn.execute(sql, params)

    def query(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> list[sqlite3.Row]:
        with self._lock, self._storage_errors():
            return self._conn.execute(sql, params).fetchall()

    def one(self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()) -> sqlite3.Row | None:
        with self._lock, self._storage_errors():
            return self._conn.execute(sql, params).fetchone()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any error); StateWriteError as ``execute``."""
        with self._lock, self._storage_errors():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _statements(script: str) -> Iterator[str]:
    """Split a migration script on ';' at line ends (no statement here contains one inside)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    for part in "\n".join(lines).split(";"):
        if part.strip():
            yield part.strip()


def default_state_dir() -> str:
    """``$CASBACKUP_STATE_DIR``, else ``$XDG_STATE_HOME/casbackup`` (``~/.local/state/casbackup``).

    The systemd unit in examples/ passes ``--state-dir /var/lib/casbackup``.
    """
    env = os.environ.get("CASBACKUP_STATE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "casbackup")
