"""What every command shares: global options, the passphrase, opening and locking the repository."""

from __future__ import annotations

import functools
import getpass
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from casbackup import access
from casbackup.errors import RepositoryNotFound, UsageError
from casbackup.repo.repository import Repository
from casbackup.store.base import Backend

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
    return access.open_backend(location)


def read_password(opts: GlobalOptions, *, confirm: bool = False) -> bytes:
    """The passphrase from, in order: --password-file, --password-command, the environment, a prompt."""
    source = access.PasswordSource(opts.password_file, opts.password_command, opts.password_env)
    password = access.read_password(source)
    if password is not None:
        return password
    if sys.stdin.isatty():
        first = getpass.getpass("enter passphrase for repository: ")
        if confirm and getpass.getpass("enter the passphrase again: ") != first:
            raise UsageError("the passphrases do not match")
        return first.encode()
    raise UsageError(
        "no passphrase: set CASBACKUP_PASSWORD, CASBACKUP_PASSWORD_FILE, or use --password-file/--password-command"
    )


def open_repository(opts: GlobalOptions, app: str | None = None) -> Repository:
    from casbackup.cli.config_support import apply_config_defaults

    apply_config_defaults(opts, app)  # the config's [repository] fills in what was not given
    backend = open_backend(opts.repo)
    if not backend.exists("config"):
        raise RepositoryNotFound(
            f"no repository at {opts.repo} (run 'casbackup init' to create one)"
        )
    backend.close()
    return access.open_repository(opts.repo, read_password(opts))


def with_repository(*, lock: str | None = "shared") -> Callable[[F], F]:
    """Open (and lock) the repository for a command, and always close it (borg's @with_repository)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        @click.pass_context
        def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
            opts = global_options(ctx)
            # A command's --app picks that application's own repository, if the config gives
            # it one (as `casbackup serve` does).
            app = kwargs.get("app") if isinstance(kwargs.get("app"), str) else None
            repo = open_repository(opts, app)
            try:
                if lock is None:
                    return ctx.invoke(fn, repo, *args, **kwargs)
                with repo.locked(exclusive=lock == "exclusive", command=ctx.command_path):
                    return ctx.invoke(fn, repo, *args, **kwargs)
            finally:
                repo.close()

        return wrapper  # type: ignore[return-value]

    return decorate


split_snapshot_path = access.split_snapshot_path
