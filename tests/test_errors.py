"""Exit codes: every CasError subclass has a documented, unique code (STYLE.md)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import casbackup
from casbackup import errors
from casbackup.errors import CasError

# A subclass may share its parent's code only where the sharing is the point:
# a format error is a kind of integrity damage, a transient storage error is still
# a storage error to a script that checks the exit code.
ALLOWED_SHARING = {
    "FormatError": "IntegrityError",
    "ConfigTampered": "IntegrityError",  # a changed config is stored data failing authentication
    "MigrationRequired": "UnsupportedFormat",  # a format this program does not write
    "UnverifiedSnapshot": "RecoveryError",  # the refusal to recover from an unverified one
    "TransientStorageError": "StorageError",
    "RepositoryBusy": "LockError",  # could not lock, because another process holds it now
    "ObjectRefused": "StorageError",
    "StateWriteError": "StorageError",  # the service's state database cannot be written  # a damaged (non-regular or oversized) object: storage fault
    "WorkerFailed": "CasError",  # a reader process died: fatal, like any unexpected fault
    "WriterFailed": "CasError",  # a restore writer process died: likewise
    # a restore that stopped because the target takes no more data: some entries not restored
    "TargetFull": "RestoreError",
    "RestoreStopped": "RestoreError",
    # file-system snapshots (fssnap/): one code, "the snapshot provider failed"; the message
    # says which way (not that file system, tool missing or failing, snapshot filled up)
    "NotThatFileSystem": "SnapshotProviderError",
    "ToolMissing": "SnapshotProviderError",
    "ToolFailed": "SnapshotProviderError",
    "SnapshotInvalid": "SnapshotProviderError",
}

# restic's codes, which users' scripts already know.
RESTIC_CODES = {
    "CasError": 1,
    "PartialBackup": 3,
    "RepositoryNotFound": 10,
    "LockError": 11,
    "WrongPassword": 12,
    "Interrupted": 130,
}

# The documented set: restic's codes, 2 for usage/config, casbackup's own 20-39.
DOCUMENTED = {1, 2, 3, 10, 11, 12, 130} | set(range(20, 40))


def _import_all() -> None:
    """Subclasses defined anywhere in the package take part too."""
    for info in pkgutil.walk_packages(casbackup.__path__, "casbackup."):
        if info.name.startswith(("casbackup.server", "casbackup.cli.main")):
            continue
        try:
            importlib.import_module(info.name)
        except ImportError:  # optional dependencies (FUSE, web) may be missing
            pass


def all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(all_subclasses(sub))
    return out


_import_all()
# Private subclasses (a leading underscore, such as pack.py's "read more bytes" signal) are
# caught inside their module and never reach a user; they inherit their parent's code.
PRIVATE = [c for c in all_subclasses(CasError) if c.__name__.startswith("_")]
CLASSES = [CasError, *(c for c in all_subclasses(CasError) if c not in PRIVATE)]


@pytest.mark.parametrize("cls", PRIVATE, ids=lambda c: c.__name__)
def test_private_signals_inherit_their_code(cls: type[CasError]) -> None:
    assert "exit_code" not in vars(cls)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_code_is_documented(cls: type[CasError]) -> None:
    assert isinstance(cls.exit_code, int) and not isinstance(cls.exit_code, bool)
    assert 0 <= cls.exit_code <= 255
    assert cls.exit_code in DOCUMENTED, (
        f"{cls.__name__}: {cls.exit_code} is outside the documented set"
    )
    assert cls.exit_code != 0, "an error never exits 0"


def test_codes_are_unique_except_documented_sharing() -> None:
    owners: dict[int, list[str]] = {}
    for cls in CLASSES:
        if ALLOWED_SHARING.get(cls.__name__) is not None:
            parent = ALLOWED_SHARING[cls.__name__]
            assert parent in [b.__name__ for b in cls.__mro__], (
                f"{cls.__name__} must subclass {parent}"
            )
            assert cls.exit_code == getattr(errors, parent).exit_code
            continue
        owners.setdefault(cls.exit_code, []).append(f"{cls.__module__}.{cls.__name__}")
    shared = {code: names for code, names in owners.items() if len(names) > 1}
    # Usage and config errors are both "you asked wrongly": exit 2 like click itself.
    assert shared == {2: ["casbackup.errors.UsageError", "casbackup.errors.ConfigError"]}


@pytest.mark.parametrize(("name", "code"), sorted(RESTIC_CODES.items()))
def test_restic_codes_hold(name: str, code: int) -> None:
    assert getattr(errors, name).exit_code == code


def test_errors_print_as_one_line_message() -> None:
    for cls in CLASSES:
        try:
            exc = cls("something failed")
        except TypeError:
            continue  # a subclass with required structured fields
        assert str(exc).endswith("something failed") and "\n" not in str(exc)
        assert isinstance(exc, Exception) and not isinstance(exc, (KeyboardInterrupt, SystemExit))
