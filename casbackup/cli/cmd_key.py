from __future__ import annotations

import contextlib
import os
import sys

import click

from casbackup.access import PasswordSource, password_origin, read_secret_file
from casbackup.cli.context import GlobalOptions, ask_secret, global_options, with_repository
from casbackup.cli.render import emit_json, printable, warn
from casbackup.crypto.keyfile import WEAK_KDF, KdfParams
from casbackup.errors import UsageError
from casbackup.maintenance.keys import add_key, change_password, list_keys, remove_key
from casbackup.repo.repository import Repository


def read_new_password(path: str | None) -> bytes:
    """--new-password-file, then CASBACKUP_NEW_PASSWORD, then a prompt asked twice."""
    if path:
        password = read_secret_file(path)  # capped: /dev/zero is refused, not read whole
    elif os.environ.get("CASBACKUP_NEW_PASSWORD"):  # set but empty counts as not set
        password = os.fsencode(os.environ["CASBACKUP_NEW_PASSWORD"])  # the bytes as set
    elif sys.stdin.isatty():
        first = ask_secret("enter the new passphrase: ")
        if ask_secret("enter the new passphrase again: ") != first:
            raise UsageError("the passphrases do not match")
        password = first
    else:
        raise UsageError("no new passphrase: use --new-password-file or set CASBACKUP_NEW_PASSWORD")
    if not password:
        raise UsageError("an empty passphrase is not allowed")
    return password


new_password_option = click.option(
    "--new-password-file", metavar="FILE", help="Read the new passphrase from FILE."
)
test_kdf_option = click.option("--insecure-test-kdf", is_flag=True, hidden=True)


@click.group()
def key() -> None:
    """Manage the passphrases (key files) that open the repository."""


@key.command(name="list")
@click.pass_context
@with_repository(lock=None)
def key_list(repo: Repository, ctx: click.Context) -> None:
    """List the key files; * marks the one in use."""
    keys = list_keys(repo)
    if global_options(ctx).json:
        emit_json([
            {"id": k.id, "current": k.current, "created": k.info.created if k.info else None,
             "host": k.info.host if k.info else None, "user": k.info.user if k.info else None,
             "kdf_memory_kib": k.info.kdf.memory_kib if k.info else None,
             "kdf_iterations": k.info.kdf.iterations if k.info else None,
             "kdf_lanes": k.info.kdf.lanes if k.info else None,
             "over_limit": k.over_limit, "problem": k.problem or None}
            for k in keys
        ])  # fmt: skip
        return
    for k in keys:
        mark = "*" if k.current else " "
        if k.info is None:
            click.echo(printable(f"{mark} {k.id[:8]}  unreadable: {k.problem}"))
            continue
        created = _shown(k.info.created[:19].replace("T", " "))
        who = _shown(f"{k.info.user}@{k.info.host}")
        cost = k.info.kdf.describe() + (" (over the limit: never tried)" if k.over_limit else "")
        click.echo(f"{mark} {k.id[:8]}  {created}  {who}  {cost}")


def _shown(text: str, limit: int = 80) -> str:
    """Key files are plaintext anyone with storage access can write: their user, host and
    date never reach the terminal as raw control characters (or at any length)."""
    safe = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return safe + ("..." if len(text) > limit else "")


@key.command(name="add")
@new_password_option
@test_kdf_option
@click.pass_context
@with_repository(lock="shared")
def key_add(repo: Repository, ctx: click.Context, new_password_file: str | None, insecure_test_kdf: bool) -> None:  # fmt: skip
    """Add a passphrase."""
    kid = add_key(
        repo, read_new_password(new_password_file), WEAK_KDF if insecure_test_kdf else KdfParams()
    )
    _done(ctx, {"added": kid}, f"added key {kid[:8]}")  # fmt: skip


@key.command(name="remove")
@click.argument("key_id")
@click.option("--force", is_flag=True, help="Also remove the key in use.")
@click.pass_context
@with_repository(lock="exclusive")
def key_remove(repo: Repository, ctx: click.Context, key_id: str, force: bool) -> None:
    """Remove the key KEY_ID (an id or unique prefix)."""
    kid = remove_key(repo, key_id, force=force)
    _done(ctx, {"removed": kid}, f"removed key {kid[:8]}")


@key.command(name="passwd")
@new_password_option
@test_kdf_option
@click.pass_context
@with_repository(lock="exclusive")
def key_passwd(repo: Repository, ctx: click.Context, new_password_file: str | None, insecure_test_kdf: bool) -> None:  # fmt: skip
    """Change the passphrase in use (adds a new key, then removes the current one)."""
    kdf = WEAK_KDF if insecure_test_kdf else KdfParams()
    new, old = change_password(repo, read_new_password(new_password_file), kdf)
    _done(
        ctx,
        {"added": new, "removed": old},
        f"passphrase changed: key {old[:8]} replaced by {new[:8]}",
    )
    stale = _stale_source(global_options(ctx), new_password_file)
    if stale is not None:
        # The old passphrase's source is not ours to rewrite (a file, a secret store, a
        # variable), yet every later command, and the service's scheduled backups, read it
        # and would now fail with "wrong passphrase": the user has to hear where it is.
        warn(
            f"the old passphrase came from {stale}, which still gives it: put the new one "
            "there, and wherever else this repository's passphrase is kept (other machines, "
            "the config 'casbackup serve' reads), or every command that uses it fails with "
            "'wrong passphrase'"
        )


def _stale_source(opts: GlobalOptions, new_password_file: str | None) -> str | None:
    """Where the passphrase just replaced came from, when that source still gives it;
    None when it was typed at a prompt, or is the very file the new one was read from."""
    source = PasswordSource(opts.password_file, opts.password_command, opts.password_env)
    if source.file and new_password_file:
        with contextlib.suppress(OSError):
            if os.path.samefile(source.file, new_password_file):
                return None  # the new passphrase was read from it too: nothing to update
    return password_origin(source)


def _done(ctx: click.Context, doc: dict[str, str], text: str) -> None:
    if global_options(ctx).json:
        emit_json({"message_type": "key", **doc})
    else:
        click.echo(text)


COMMANDS = [key]
