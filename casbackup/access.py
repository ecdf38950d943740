"""Opening a repository from a location and a password source: what the CLI and the service share.

The CLI (``cli/context.py``) and the web service (``server/repos.py``) both call these, so that
"where is the repository and how do I get its passphrase" has one answer. Nothing here prompts
or prints: a prompt is the CLI's business, and happens only when ``read_password`` returns None.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

from casbackup.errors import CasError, RepositoryNotFound, UsageError
from casbackup.repo.repository import Repository
from casbackup.store.base import Backend


@dataclass(frozen=True)
class PasswordSource:
    """Where a passphrase comes from, in the CLI's order of precedence.

    ``file`` and ``command`` come from options or the config; ``env_name`` names a variable
    (the config's ``password_env``); ``CASBACKUP_PASSWORD`` is always consulted after file and
    command and before ``env_name``.
    """

    file: str | None = None
    command: str | None = None
    env_name: str | None = None

    @property
    def given(self) -> bool:
        return bool(self.file or self.command or self.env_name)


def open_backend(location: str | None) -> Backend:
    """The storage backend for a repository location. Raises UsageError for unknown kinds."""
    if not location:
        raise UsageError(
            "no repository given: use -r/--repo, set CASBACKUP_REPO, "
            "or set [repository] location in the config file"
        )
    if location.startswith(("s3:", "sftp:", "rest:")):
        raise UsageError(
            f"storage {location.split(':', 1)[0]!r} is not available in this build; use a local path"
        )
    from casbackup.store.local import LocalBackend

    return LocalBackend(location)


def read_password(source: PasswordSource) -> bytes | None:
    """The passphrase from the source, or None when no source gives one (the caller may prompt).

    Raises UsageError when a named source fails (unreadable file, failing command, unset variable).
    """
    if source.file:
        try:
            with open(source.file, "rb") as f:
                return f.read().rstrip(b"\r\n")
        except OSError as exc:
            raise UsageError(f"cannot read password file {source.file}: {exc.strerror}") from None
    if source.command:
        try:
            out = subprocess.run(
                source.command, shell=True, capture_output=True, check=False, timeout=60,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UsageError(f"password command failed: {exc}") from None
        if out.returncode != 0:
            detail = out.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise UsageError(f"password command exited with {out.returncode}: {detail[0]}")
        return out.stdout.rstrip(b"\r\n")
    env = os.environ.get("CASBACKUP_PASSWORD")
    if env is not None:
        return env.encode()
    if source.env_name:
        named = os.environ.get(source.env_name)
        if named is None:
            raise UsageError(
                f"the config's repository.password_env names {source.env_name}, which is not set"
            )
        return named.encode()
    return None


def open_repository(location: str | None, password: bytes) -> Repository:
    """Open the repository at ``location``. Raises RepositoryNotFound, WrongPassword, ..."""
    backend = open_backend(location)
    if not backend.exists("config"):
        backend.close()
        raise RepositoryNotFound(
            f"no repository at {location} (run 'casbackup init' to create one)"
        )
    try:
        return Repository.open(backend, password)
    except CasError:
        backend.close()
        raise


def split_snapshot_path(ref: str) -> tuple[str, str]:
    """``SNAPSHOT[:PATH]`` -> (snapshot ref, absolute path in the snapshot)."""
    snap, sep, path = ref.partition(":")
    if not snap:
        raise UsageError(f"{ref!r}: give a snapshot id, prefix or 'latest' before the ':'")
    if not sep or not path:
        return snap, "/"
    return snap, path if path.startswith("/") else "/" + path
