"""What every command shares: global options, the passphrase, opening and locking the repository."""

from __future__ import annotations

import contextlib
import functools
import getpass
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from casbackup import access
from casbackup.access import password_command_env  # noqa: F401  (kept importable from here)
from casbackup.cli.render import printable, warn
from casbackup.errors import (
    StorageError,
    UsageError,
    WrongPassword,
)
from casbackup.repo.repository import Repository
from casbackup.store.base import Backend, skipped_warnings

F = TypeVar("F", bound=Callable[..., Any])
# ctx.meta key: what with_repository's ``prepare`` context manager gave, for the command.
PREPARED = "casbackup.prepared"


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
    s3_settings: dict[str, str] | None = None  # the config's [repository] S3 keys
    retry_lock_s: float = 0.0  # --retry-lock: seconds to keep trying a lock another holds


def global_options(ctx: click.Context) -> GlobalOptions:
    obj = ctx.find_root().obj
    assert isinstance(obj, GlobalOptions)
    return obj


def open_backend(location: str | None, settings: dict[str, str] | None = None) -> Backend:
    return access.open_backend(location, settings)


def ask_secret(prompt: str) -> bytes:
    """What the user types on the terminal (not echoed), as UTF-8 bytes. UsageError when it
    is not UTF-8 (getpass decodes it so): a file or variable gives any bytes."""
    try:
        return getpass.getpass(prompt).encode()
    except UnicodeError:
        raise UsageError(
            "the passphrase typed is not UTF-8 text: give it with --password-file or "
            "CASBACKUP_PASSWORD instead"
        ) from None


def read_password(opts: GlobalOptions, *, confirm: bool = False) -> bytes:
    """The passphrase from, in order: --password-file, --password-command, the environment, a prompt.

    Files and command output are capped at SECRET_MAX bytes; the command runs without a
    shell and without casbackup's own environment variables (``password_command_env``).
    Raises UsageError (one line) when the chosen source fails.
    """
    source = access.PasswordSource(opts.password_file, opts.password_command, opts.password_env)
    given = access.read_password(source)
    if given is not None:
        return given
    if sys.stdin.isatty():
        first = ask_secret("enter passphrase for repository: ")
        if confirm and ask_secret("enter the passphrase again: ") != first:
            raise UsageError("the passphrases do not match")
        return first
    raise UsageError(
        "no passphrase: set CASBACKUP_PASSWORD, CASBACKUP_PASSWORD_FILE, or use --password-file/--password-command"
    )


def open_repository(opts: GlobalOptions, app: str | None = None) -> Repository:
    from casbackup.cli.config_support import apply_config_defaults, require_repository

    repo_given = bool(opts.repo)
    password_given = bool(opts.password_file or opts.password_command or opts.password_env)
    apply_config_defaults(opts, app)  # the config's [repository] fills in what was not given
    require_repository(opts)
    try:
        return access.open_repository(opts.repo, lambda: read_password(opts), opts.s3_settings)
    except WrongPassword as exc:
        source = access.PasswordSource(opts.password_file, opts.password_command, opts.password_env)
        origin = access.password_origin(source)
        if origin is None:
            raise  # typed at the prompt: the user knows which
        from_config = not password_given and source.given and "CASBACKUP_PASSWORD" not in origin
        if from_config and "config" not in origin:
            origin += ", from the config file"
        hint = ""
        if from_config and repo_given:
            # -r named another repository (an off-site copy) and the config's passphrase,
            # meant for its own repository, was used without a word.
            hint = (
                "; for a repository other than the config's, give its passphrase with "
                "--password-file, --password-command or CASBACKUP_PASSWORD"
            )
        raise WrongPassword(said_where(str(exc), origin) + hint) from None


def said_where(message: str, origin: str, prefix: str = "") -> str:
    """A WrongPassword message with which passphrase it was: 'wrong passphrase{prefix}
    ({origin}): ...' (``origin`` as access.password_origin words it)."""
    head = "wrong passphrase"
    rest = message[len(head) :] if message.startswith(head) else f": {message}"
    return f"{head}{prefix} ({origin}){rest}"


def waiting_for_lock(why: str, wait_s: float) -> None:
    """Say once that the command waits for another process's lock (``--retry-lock``)."""
    from casbackup.units import format_run_time

    if not global_options(click.get_current_context()).quiet:
        click.echo(f"{printable(why)}: waiting up to {format_run_time(wait_s)} for it", err=True)


def with_repository(
    *,
    lock: str | None = "shared",
    writes: bool = False,
    reads_only: bool = False,
    prepare: Callable[[dict[str, Any]], contextlib.AbstractContextManager[Any]] | None = None,
) -> Callable[[F], F]:
    """Open (and lock) the repository for a command, and always close it (borg's @with_repository).

    ``lock``: "shared", "exclusive" or None (the command locks itself, or needs none).
    ``writes``: the command stores new objects, so it stops at once on a repository this
    program may only read (a version 1 format: ``casbackup migrate``).
    ``reads_only``: the command never changes the repository.
    ``prepare``: called with the command's parameters before the repository is opened; the
    context manager it returns is held until the command ends (a backup warms its sources'
    metadata meanwhile: the passphrase's key derivation takes a tenth of a second), and
    what it gives is in ``ctx.meta[PREPARED]`` for the command.

    A dry run (the command's ``dry_run`` parameter is True) only reads: it takes a shared lock
    at most (so it runs beside a backup, and a dry prune or forget does not wait for one) and
    is not refused by ``writes``. A command that only reads goes on without a lock where the
    lock cannot be written (a read-only medium, a folder the user may not write), with a
    warning that says so."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        @click.pass_context
        def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
            opts = global_options(ctx)
            # A command's --app picks that application's own repository, if the config gives
            # it one (as `casbackup serve` does).
            app = kwargs.get("app") if isinstance(kwargs.get("app"), str) else None
            dry_run = kwargs.get("dry_run") is True
            with contextlib.ExitStack() as stack:
                if prepare is not None:
                    ctx.meta[PREPARED] = stack.enter_context(prepare(kwargs))
                repo = open_repository(opts, app)
                try:
                    if writes and not dry_run:
                        repo.require_writable()
                    if lock is None:
                        return ctx.invoke(fn, repo, *args, **kwargs)
                    level = "shared" if dry_run else lock
                    with _locked(repo, level, ctx.command_path, reads_only=reads_only or dry_run,
                                 wait_s=opts.retry_lock_s):  # fmt: skip
                        return ctx.invoke(fn, repo, *args, **kwargs)
                finally:
                    for message in repo.alerts:  # rollback and tampering warnings: always shown
                        warn(message)
                    # Odd entries (symlinks, FIFOs, unknown names) the listings skipped: said
                    # once per run, so a planted entry is noticed without failing the command.
                    for line in skipped_warnings(repo.backend):
                        warn(line)
                    repo.close()

        return wrapper  # type: ignore[return-value]

    return decorate


@contextlib.contextmanager
def _locked(
    repo: Repository, level: str, command: str, *, reads_only: bool, wait_s: float = 0.0
) -> Iterator[None]:
    """``repo.locked`` at ``level``; for a command that only reads, no lock where none can be
    written (StorageError: read-only file system, permission denied), with a warning.
    ``wait_s`` (--retry-lock): how long to keep trying while another process holds it."""
    held = None
    try:
        held = repo.lock(exclusive=level == "exclusive", command=command, wait_s=wait_s,
                         on_wait=lambda why: waiting_for_lock(why, wait_s))  # fmt: skip
        for description in held.removed:
            warn(f"removed a stale lock: {description}")
    except StorageError as exc:
        if not reads_only or level == "exclusive":
            raise
        warn(
            f"no lock taken ({exc}): reading without one; a prune running meanwhile "
            "elsewhere could make this command fail"
        )
    try:
        yield
    finally:
        if held is not None:
            held.release()


def split_snapshot_path(ref: str, path_arg: str | None = None) -> tuple[str, str]:
    """``SNAPSHOT[:PATH]``, or ``SNAPSHOT`` and ``PATH`` as two arguments (restic's form:
    ``restic dump latest /etc/hosts``) -> (snapshot ref, absolute path in the snapshot,
    without empty or '.' parts).

    Raises UsageError for an empty snapshot ref or a path given both ways."""
    snap, sep, path = ref.partition(":")
    if not snap:
        raise UsageError(f"{ref!r}: give a snapshot id, prefix or 'latest' before the ':'")
    if path_arg is not None:
        if sep:
            raise UsageError(f"give the path once: {ref} {path_arg} names it twice")
        path, sep = path_arg, ":"
    if not sep or not path:
        return snap, "/"
    # One spelling ('//srv/./x/' is '/srv/x'), as it is shown; a '..' stays, and names
    # nothing (a tree never holds one).
    return snap, "/" + "/".join(p for p in path.split("/") if p and p != ".")
