"""Opening a repository from a location and a password source: what the CLI and the service share.

The CLI (``cli/context.py``) and the web service (``server/repos.py``) both call these, so that
"where is the repository and how do I get its passphrase" has one answer. Nothing here prompts
or prints: a prompt is the CLI's business, and happens only when ``read_password`` returns None.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from casbackup.errors import RepositoryNotFound, UsageError
from casbackup.repo.repository import Repository
from casbackup.store.base import Backend
from casbackup.threadsig import quiet_thread

#: A location scheme as URLs spell them (``s3``, ``my+proto``); ``C`` of ``C:\\`` is not one here.
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{1,31}")


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


def open_backend(location: str | None, settings: dict[str, str] | None = None) -> Backend:
    """The storage backend for a repository location. ``settings``: the config's
    [repository] S3 keys (RepositoryConfig.s3_settings), used by s3: locations only.
    Raises UsageError for unknown kinds and bad settings."""
    if not location:
        raise UsageError(
            "no repository given: use -r/--repo, set CASBACKUP_REPO, "
            "or set [repository] location in the config file"
        )
    from casbackup import plugins

    # Backends are plugins by location scheme; anything else is a local folder.
    scheme, sep, _rest = location.partition(":")
    if sep and _SCHEME.fullmatch(scheme) and scheme != "local" and plugins.has("backend", scheme):
        opener = plugins.load("backend", scheme)
        if scheme not in plugins.BUILTIN["backend"]:
            return _open_plugin_backend(opener, scheme, location, settings or {})
    elif sep and scheme in ("sftp", "rest"):
        raise UsageError(
            f"storage {scheme!r} is not available in this build; use a local path or s3:"
        )
    else:
        opener = plugins.load("backend", "local")
    backend = opener(location, settings or {})
    return backend  # type: ignore[no-any-return]


def _open_plugin_backend(
    opener: Any, scheme: str, location: str, settings: dict[str, str]
) -> Backend:
    """Another package's backend for ``location``, behind ``GuardedBackend``: what its
    opener raises, or returns instead of a backend, is one StorageError line (exit 25)."""
    from casbackup.errors import CasError, StorageError
    from casbackup.store.guard import GuardedBackend

    try:
        inner = opener(location, settings)
    except CasError:
        raise
    except Exception as exc:  # noqa: BLE001 - another package's fault, told in one line
        raise StorageError(
            f"storage plugin {scheme!r} failed to open {location}: {type(exc).__name__}: {exc}"
        ) from None
    return GuardedBackend(inner, scheme)  # type: ignore[return-value]


def canonical_location(location: str) -> str:
    """``location`` spelled one way, to tell whether two configured locations are the same
    repository: a folder by its real path (symlinks, ``./``, ``..`` and trailing slashes
    resolved, as the local backend opens it), an ``s3:`` location with https implied, the
    host in lower case and default ports and trailing slashes dropped. Other schemes (and
    malformed S3 locations, which fail when opened) are returned as given. Touches no
    storage: two spellings that only the storage knows to be one (two mounts of one NFS
    export) are told apart by the repository's id instead (server/repos.py)."""
    scheme, sep, _rest = location.partition(":")
    if not (sep and _SCHEME.fullmatch(scheme)) or scheme == "local":
        return os.path.realpath(location)
    if scheme != "s3":
        return location
    from casbackup.store.s3 import parse_location

    try:
        parsed = parse_location(location)
    except UsageError:
        return location
    proto, _, host = parsed.endpoint.partition("://")
    host = host.lower().removesuffix({"https": ":443", "http": ":80"}.get(proto, "\0"))
    return f"s3:{proto}://{host}/{parsed.bucket}/{parsed.prefix}".rstrip("/")


def read_secret_file(path: str) -> bytes:
    from casbackup.engines.base import SECRET_MAX  # the engines only when a secret is read

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
    from casbackup.engines.process import SECRET_PREFIX

    return {k: v for k, v in os.environ.items() if not k.startswith(SECRET_PREFIX)}


def run_password_command(command: str) -> bytes:
    """Run ``command`` split into words as a shell would (shlex), but never by a shell:
    no expansion, redirection or second command. Its output is capped at SECRET_MAX."""
    from casbackup.engines.base import SECRET_MAX
    from casbackup.engines.process import StderrDrain, read_until_exit

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
    finished = threading.Event()

    def expire() -> None:  # a command that hangs fails; it never stalls us
        if not finished.wait(60):
            expired.set()
            proc.kill()

    # Not a threading.Timer: our threads block the stop signals (threadsig.py), so that a
    # Ctrl-C reaches the main thread reading the command's output.
    timer = quiet_thread(expire, name="password-timeout")
    timer.start()
    try:
        assert proc.stdout is not None
        # Not to end of file: a helper the command leaves running (an agent it started)
        # may hold its standard output open for hours.
        out = read_until_exit(proc, SECRET_MAX + 1)
        if len(out) > SECRET_MAX:
            raise UsageError(
                f"password command printed more than {SECRET_MAX // 1024} KiB: not a passphrase"
            )
        returncode = proc.wait()
    finally:
        finished.set()
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.wait()
    err = drain.text(0 if returncode == 0 else 5.0)
    if expired.is_set():
        raise UsageError("password command did not finish within 60 seconds")
    if returncode != 0:
        detail = err.decode(errors="replace").strip().splitlines()[-1:]
        said = f": {detail[0]}" if detail else " (and wrote nothing on stderr)"
        raise UsageError(f"password command exited with {returncode}{said}")
    return out.rstrip(b"\r\n")


def passphrase_from(file: str | None, command: str | None) -> bytes:
    """A repository passphrase from ``file`` (first) or the output of ``command``, without
    its trailing newline. UsageError when the source fails or gives nothing: no key file
    has an empty passphrase (init and key add refuse one), so an empty file (a secret not
    mounted yet) is the source's fault, never tried and called a wrong passphrase."""
    if file:
        data = read_secret_file(file)
        if not data:
            raise UsageError(f"password file {file} is empty: an empty passphrase is not allowed")
        return data
    if not command:
        raise UsageError("no password file or command given")
    data = run_password_command(command)
    if not data:
        raise UsageError(
            f"password command {command!r} printed nothing: an empty passphrase is not allowed"
        )
    return data


def password_origin(source: PasswordSource) -> str | None:
    """Where ``read_password(source)`` takes the passphrase from, in words for a message
    ("password file /etc/casbackup/repo.pass", "the variable CASBACKUP_PASSWORD"), in the
    same order of precedence; None when no source gives one (it was asked for on the
    terminal). Reads nothing and runs nothing."""
    if source.file:
        return f"password file {source.file}"
    if source.command:
        return f"password command {source.command!r}"
    if os.environ.get("CASBACKUP_PASSWORD"):
        return "the variable CASBACKUP_PASSWORD"
    if source.env_name:
        return f"the variable {source.env_name} (the config's repository.password_env)"
    return None


def read_password(source: PasswordSource) -> bytes | None:
    """The passphrase from the source, or None when no source gives one (the caller may prompt).

    Raises UsageError when a named source fails (unreadable file, failing command, unset variable).
    Files and command output are capped at SECRET_MAX bytes; the command runs without a shell
    and without casbackup's own environment variables (``password_command_env``).
    """
    if source.file or source.command:
        return passphrase_from(source.file, source.command)
    # Set but empty is not set (as restic reads RESTIC_PASSWORD): `CASBACKUP_PASSWORD= cmd`
    # or a blank line in an environment file falls through, never tried as a passphrase.
    env = os.environ.get("CASBACKUP_PASSWORD")
    if env:
        return os.fsencode(env)  # the bytes as set: not UTF-8 is fine, as in a file
    if source.env_name:
        named = os.environ.get(source.env_name)
        if not named:
            state = "not set" if named is None else "empty"
            raise UsageError(
                f"the config's repository.password_env names {source.env_name}, which is {state}"
            )
        return os.fsencode(named)
    return None


def open_repository(
    location: str | None,
    password: bytes | Callable[[], bytes],
    settings: dict[str, str] | None = None,
) -> Repository:
    """Open the repository at ``location`` (``settings`` as for ``open_backend``).

    ``password`` may be a function, called only once the repository is known to exist (the
    CLI's prompt: nobody is asked for a passphrase of a repository that is not there).
    Raises RepositoryNotFound, WrongPassword, ..."""
    backend = open_backend(location, settings)
    try:
        if not backend.exists("config"):
            raise RepositoryNotFound(
                f"no repository at {location} (run 'casbackup init' to create one)"
            )
        return Repository.open(backend, password() if callable(password) else password)
    except BaseException:  # a wrong passphrase, a damaged config, Ctrl-C at the prompt
        backend.close()
        raise
