"""What every command shares: global options, the passphrase, opening and locking the repository."""

from __future__ import annotations

import functools
import getpass
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from casbackup.cli.render import warn
from casbackup.engines.base import SECRET_MAX
from casbackup.engines.process import SECRET_PREFIX, StderrDrain
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
    if location.startswith("s3:"):
        from casbackup.store.retry import RetryingBackend, retry_settings
        from casbackup.store.s3 import S3Backend

        # Retries live in one wrapper (store/retry.py); the LMDB index cache stays local.
        tuning = retry_settings()
        return RetryingBackend(
            S3Backend(location),
            attempts=int(tuning.get("attempts", 7)),
            base=tuning.get("base", 0.25),
        )
    if location.startswith(("sftp:", "rest:")):
        raise UsageError(
            f"storage {location.split(':', 1)[0]!r} is not available in this build; "
            "use a local path or s3:"
        )
    from casbackup.store.local import LocalBackend

    return LocalBackend(location)


def _read_secret_file(path: str) -> bytes:
    try:
        # Not O_NONBLOCK: ``--password-file <(pass show x)`` is a pipe that must be waited for.
        with open(path, "rb") as f:
            data = f.read(SECRET_MAX + 1)
    except OSError as exc:
        raise UsageError(f"cannot read password file {path}: {exc.strerror}") from None
    if len(data) > SECRET_MAX:
        raise UsageError(
            f"password file {path} holds more than {SECRET_MAX // 1024} KiB: not a passphrase"
        )
    return data.rstrip(b"\r\n")


def password_command_env() -> dict[str, str]:
    """Our environment without casbackup's own variables: the password command must not
    see CASBACKUP_PASSWORD (or any other CASBACKUP_* secret) it is there to replace."""
    return {k: v for k, v in os.environ.items() if not k.startswith(SECRET_PREFIX)}


def _run_password_command(command: str) -> bytes:
    """Run ``command`` split into words as a shell would (shlex), but never by a shell:
    no expansion, redirection or second command. Its output is capped at SECRET_MAX."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise UsageError(f"password command cannot be split into words: {exc}") from None
    if not argv:
        raise UsageError("password command is empty")
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=password_command_env(),
        )
    except OSError as exc:
        raise UsageError(f"password command {argv[0]!r} failed to start: {exc.strerror}") from None
    drain = StderrDrain(proc.stderr)  # type: ignore[arg-type]
    expired = threading.Event()

    def expire() -> None:  # a command that hangs fails; it never stalls us
        expired.set()
        proc.kill()

    timer = threading.Timer(60, expire)
    timer.start()
    try:
        assert proc.stdout is not None
        out = proc.stdout.read(SECRET_MAX + 1)
        if len(out) > SECRET_MAX:
            raise UsageError(
                f"password command printed more than {SECRET_MAX // 1024} KiB: not a passphrase"
            )
        returncode = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.wait()
    err = drain.text()
    if expired.is_set():
        raise UsageError("password command did not finish within 60 seconds")
    if returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise UsageError(f"password command exited with {returncode}: {detail[0]}")
    return out.rstrip(b"\r\n")


def read_password(opts: GlobalOptions, *, confirm: bool = False) -> bytes:
    """The passphrase from, in order: --password-file, --password-command, the environment, a prompt.

    Files and command output are capped at SECRET_MAX bytes; the command runs without a
    shell and without casbackup's own environment variables (``password_command_env``).
    Raises UsageError (one line) when the chosen source fails.
    """
    if opts.password_file:
        return _read_secret_file(opts.password_file)
    if opts.password_command:
        return _run_password_command(opts.password_command)
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


def with_repository(*, lock: str | None = "shared", writes: bool = False) -> Callable[[F], F]:
    """Open (and lock) the repository for a command, and always close it (borg's @with_repository).

    ``writes``: the command stores new objects, so it stops at once on a repository this
    program may only read (a version 1 format: ``casbackup migrate``)."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        @click.pass_context
        def wrapper(ctx: click.Context, *args: Any, **kwargs: Any) -> Any:
            opts = global_options(ctx)
            repo = open_repository(opts)
            try:
                if writes:
                    repo.require_writable()
                if lock is None:
                    return ctx.invoke(fn, repo, *args, **kwargs)
                with repo.locked(exclusive=lock == "exclusive", command=ctx.command_path):
                    return ctx.invoke(fn, repo, *args, **kwargs)
            finally:
                for message in repo.alerts:  # rollback and tampering warnings: always shown
                    click.echo(f"warning: {message}", err=True)
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
