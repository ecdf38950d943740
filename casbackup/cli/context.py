"""What every command shares: global options, the passphrase, opening and locking the repository."""

from __future__ import annotations

import functools
import getpass
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from casbackup.cli.render import warn
from casbackup.errors import CasError, RepositoryNotFound, UsageError, WrongPassword
from casbackup.repo.repository import Repository
from casbackup.store.base import Backend, skipped_warnings

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class GlobalOptions:
    repo: str | None
    password_file: str | None
    password_command: str | None
    json: bool
    quiet: bool
    progress: bool
    config: str | None = None
    password_env: str | None = None  # a variable named by the config file's [repository]


def global_options(ctx: click.Context) -> GlobalOptions:
    obj = ctx.find_root().obj
    assert isinstance(obj, GlobalOptions)
    return obj


def open_backend(location: str | None) -> Backend:
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


def read_password(opts: GlobalOptions, *, confirm: bool = False) -> bytes:
    """The passphrase from, in order: --password-file, --password-command, the environment, a prompt."""
    if opts.password_file:
        try:
            with open(opts.password_file, "rb") as f:
                return f.read().rstrip(b"\r\n")
        except OSError as exc:
            raise UsageError(
                f"cannot read password file {opts.password_file}: {exc.strerror}"
            ) from None
    if opts.password_command:
        try:
            out = subprocess.run(
                opts.password_command, shell=True, capture_output=True, check=False, timeout=60
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UsageError(f"password command failed: {exc}") from None
        if out.returncode != 0:
            detail = out.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise UsageError(f"password command exited with {out.returncode}: {detail[0]}")
        return out.stdout.rstrip(b"\r\n")
    env = os.environ.get("CASBACKUP_PASSWORD")
    if env is not None:
        return env.encode()
    if opts.password_env:
        named = os.environ.get(opts.password_env)
        if named is None:
            raise UsageError(
                f"the config's repository.password_env names {opts.password_env}, which is not set"
            )
        return named.encode()
    if sys.stdin.isatty():
        first = getpass.getpass("enter passphrase for repository: ")
        if confirm and getpass.getpass("enter the passphrase again: ") != first:
            raise UsageError("the passphrases do not match")
        return first.encode()
    raise UsageError(
        "no passphrase: set CASBACKUP_PASSWORD, CASBACKUP_PASSWORD_FILE, or use --password-file/--password-command"
    )


def open_repository(opts: GlobalOptions) -> Repository:
    from casbackup.cli.config_support import apply_config_defaults

    apply_config_defaults(opts)  # the config's [repository] fills in what was not given
    backend = open_backend(opts.repo)
    if not backend.exists("config"):
        raise RepositoryNotFound(
            f"no repository at {opts.repo} (run 'casbackup init' to create one)"
        )
    password = read_password(opts)
    try:
        return Repository.open(backend, password)
    except WrongPassword:
        raise
    except CasError:
        backend.close()
        raise


def with_repository(*, lock: str | None = "shared") -> Callable[[F], F]:
    """Open (and lock) the repository for a command, and always close it (borg's @with_repository)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        @click.pass_context
        def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
            opts = global_options(ctx)
            repo = open_repository(opts)
            try:
                if lock is None:
                    return ctx.invoke(fn, repo, *args, **kwargs)
                with repo.locked(exclusive=lock == "exclusive", command=ctx.command_path):
                    return ctx.invoke(fn, repo, *args, **kwargs)
            finally:
                # Odd entries (symlinks, FIFOs, unknown names) the listings skipped: said
                # once per run, so a planted entry is noticed without failing the command.
                for line in skipped_warnings(repo.backend):
                    warn(line)
                repo.close()

        return wrapper  # type: ignore[return-value]

    return decorate


def split_snapshot_path(ref: str) -> tuple[str, str]:
    """``SNAPSHOT[:PATH]`` -> (snapshot ref, absolute path in the snapshot)."""
    snap, sep, path = ref.partition(":")
    if not snap:
        raise UsageError(f"{ref!r}: give a snapshot id, prefix or 'latest' before the ':'")
    if not sep or not path:
        return snap, "/"
    return snap, path if path.startswith("/") else "/" + path
