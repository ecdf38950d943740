"""One root error class; each subclass carries the exit code the CLI turns it into.

Exit codes users' scripts already know from restic keep their meaning:
0 ok, 1 fatal, 3 finished but some files could not be read, 10 no repository,
11 could not lock, 12 wrong passphrase, 130 interrupted. casbackup's own codes
live in 2 (usage/config) and 20-39 (see README "Exit codes"). A test walks every
subclass and checks that no two share a code unless they are meant to.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FATAL = 1
EXIT_USAGE = 2
EXIT_PARTIAL = 3
EXIT_NO_REPO = 10
EXIT_LOCKED = 11
EXIT_WRONG_PASSWORD = 12
EXIT_INTERRUPTED = 130


class CasError(Exception):
    """Root of every error casbackup reports to a user.

    The message must say what happened and, where it helps, what to do next.
    It is printed on one line; no traceback reaches the user.
    """

    exit_code: int = EXIT_FATAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def saying(self, message: str) -> CasError:
        """A new error of this one's class (so its exit code) with ``message``: for a caller
        that names what the error hit (a file, a snapshot) without changing an error object
        others may hold too."""
        try:
            return type(self)(message)
        except TypeError:  # a class whose constructor takes structured fields
            err = CasError(message)
            err.exit_code = self.exit_code
            return err


class UsageError(CasError):
    """Bad arguments or options that click itself could not catch."""

    exit_code = EXIT_USAGE


class ConfigError(CasError):
    """A configuration file is missing, malformed or invalid."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | None = None, key: str | None = None) -> None:
        where = ""
        if path:
            where = path
            if key:
                where += f": {key}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.key = key


class RepositoryNotFound(CasError):
    exit_code = EXIT_NO_REPO


class RepositoryExists(CasError):
    exit_code = 20


class UnsupportedFormat(CasError):
    """The repository (or an object in it) has a format version this program does not know."""

    exit_code = 21


class MigrationRequired(UnsupportedFormat):
    """The repository's format is older than this program writes: it may be read, but
    storing anything new needs ``casbackup migrate`` first (repo_format.md "Migration")."""


class WrongPassword(CasError):
    exit_code = EXIT_WRONG_PASSWORD


class LockError(CasError):
    exit_code = EXIT_LOCKED


class RepositoryBusy(LockError):
    """Another live process holds a lock that conflicts with the one asked for (a prune's
    exclusive lock, or a backup's when a prune asks): taking it again later may succeed,
    which a caller that waits for locks does (``repo.lock.acquire_waiting``)."""


class IntegrityError(CasError):
    """Stored data failed authentication, hashing or structural checks."""

    exit_code = 22


class FormatError(IntegrityError):
    """Bytes could not be decoded as the structure they claim to be.

    Every decoder raises only this (or a subclass) on arbitrary input, never
    IndexError/struct.error/UnicodeDecodeError, so callers can report damage precisely.
    """


class ConfigTampered(IntegrityError):
    """The repository config does not carry a valid MAC under the master key (it was changed
    by someone without the key), or it went back to an older, unauthenticated version."""


class NotFound(CasError):
    """A stored object, snapshot or path that was asked for does not exist."""

    exit_code = 23


class AmbiguousId(CasError):
    exit_code = 24


class StorageError(CasError):
    """The storage backend failed (permissions, full disk, I/O error)."""

    exit_code = 25


class TransientStorageError(StorageError):
    """A storage failure that may succeed when retried."""


class RestoreError(CasError):
    """Restoring would overwrite data or escape the target, or some entries could not be
    restored (each listed by path; the rest was)."""

    exit_code = 26


class DatabaseError(CasError):
    """A database dump or load failed (tool missing, non-zero exit, bad credentials)."""

    exit_code = 27


class VerificationFailed(CasError):
    """A snapshot was restored into a sandbox and something did not match."""

    exit_code = 28


class CheckFailed(CasError):
    """`check` found problems in the repository."""

    exit_code = 29


class RecoveryError(CasError):
    exit_code = 30


class UnverifiedSnapshot(RecoveryError):
    """Recovery refused: the snapshot it would use is not verified (and that was not allowed).

    ``reason`` says what was found; the message adds what to do in the command line's words,
    and the web service says it in the API's (``snapshot``, ``allow_unverified``)."""

    def __init__(self, reason: str, snapshot: str) -> None:
        super().__init__(
            f"{reason}. Run 'casbackup verify {snapshot}' first, name a verified one with "
            "--snapshot, or pass --allow-unverified"
        )
        self.reason = reason
        self.snapshot = snapshot


class SnapshotProviderError(CasError):
    exit_code = 31


class MountError(CasError):
    exit_code = 32


class PartialBackup(CasError):
    """A snapshot was written, but some source files could not be read."""

    exit_code = EXIT_PARTIAL


class Interrupted(CasError):
    exit_code = EXIT_INTERRUPTED
