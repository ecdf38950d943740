"""``casbackup copy``: copy snapshots from another repository into this one."""

from __future__ import annotations

import os

import click

from casbackup.access import PasswordSource, passphrase_from, password_origin
from casbackup.cli.context import open_backend, said_where, waiting_for_lock, with_repository
from casbackup.cli.render import emit_json, warn
from casbackup.errors import CasError, RepositoryNotFound, UsageError, WrongPassword
from casbackup.maintenance.copy import CopyOptions, copy_snapshots
from casbackup.repo.repository import Repository
from casbackup.units import human_bytes, plural


def source_password(password_file: str | None, password_command: str | None) -> bytes:
    """The source's passphrase: --from-password-file, --from-password-command, or
    CASBACKUP_FROM_PASSWORD; never this repository's passphrase by accident."""
    if password_file or password_command:
        return passphrase_from(password_file, password_command)
    env = os.environ.get("CASBACKUP_FROM_PASSWORD")
    if not env:  # set but empty counts as not set, as CASBACKUP_PASSWORD
        raise UsageError(
            "no passphrase for --from-repo: use --from-password-file, --from-password-command "
            "or CASBACKUP_FROM_PASSWORD"
        )
    return os.fsencode(env)  # the bytes as set, as CASBACKUP_PASSWORD


def open_source(
    location: str,
    password_file: str | None,
    password_command: str | None,
    settings: dict[str, str] | None = None,
) -> Repository:
    """Open the repository to copy from (one-line errors as for -r; ``settings``: the
    config's S3 keys, used when it is an s3: location)."""
    password = source_password(password_file, password_command)
    backend = open_backend(location, settings)
    if not backend.exists("config"):
        backend.close()
        raise RepositoryNotFound(f"no repository at {location} (the --from-repo)")
    try:
        return Repository.open(backend, password)
    except WrongPassword as exc:
        backend.close()
        origin = (
            password_origin(PasswordSource(password_file, password_command))
            if password_file or password_command
            else "the variable CASBACKUP_FROM_PASSWORD"
        )
        raise WrongPassword(said_where(str(exc), origin, f" for --from-repo {location}")) from None
    except CasError:
        backend.close()
        raise


@click.command()
@click.option("--from-repo", required=True, help="Repository to copy from.")
@click.option(
    "--from-password-file",
    metavar="FILE",
    help="Its passphrase from FILE (or the passphrase itself in CASBACKUP_FROM_PASSWORD).",
)
@click.option(
    "--from-password-command", metavar="CMD", help="Its passphrase from a command's output."
)
@click.option("--app", help="Only snapshots of this application.")
@click.option(
    "--tag", "tags", multiple=True, help="Only snapshots with this tag (repeatable: all)."
)
@click.argument("snapshots", nargs=-1)
@with_repository(lock="shared", writes=True)
def copy(repo: Repository, from_repo: str, from_password_file: str | None,
         from_password_command: str | None, app: str | None, tags: tuple[str, ...],
         snapshots: tuple[str, ...]) -> None:  # fmt: skip
    """Copy snapshots from another repository into this one (all, or those given)."""
    opts = click.get_current_context().find_root().obj
    src = open_source(from_repo, from_password_file, from_password_command, opts.s3_settings)
    wait_s = opts.retry_lock_s
    try:
        with src.locked(command="copy (source)", wait_s=wait_s,
                        on_wait=lambda why: waiting_for_lock(f"source: {why}", wait_s)):  # fmt: skip
            result = copy_snapshots(src, repo, CopyOptions(tuple(snapshots), app, tuple(tags)))
    except CasError:
        # The source's own loud warnings (packs its index names are missing, a rollback)
        # say why the copy failed; the destination's are printed by with_repository.
        for message in src.alerts:
            warn(f"source: {message}")
        raise
    finally:
        src.close()
    for line in result.warnings:
        warn(line)
    if click.get_current_context().find_root().obj.json:
        emit_json({"message_type": "summary", "copied": [{"from": s, "to": d} for s, d in result.copied],
                   "skipped": result.skipped, "blobs_sent": result.blobs_sent,
                   "deltas_sent": result.deltas_sent,
                   "bytes_sent": result.bytes_sent, "bytes_stored": result.bytes_stored,
                   "shared_ids": result.shared_ids})  # fmt: skip
        return
    for s, d in result.copied:
        click.echo(f"copied snapshot {s[:8]} as {d[:8]}")
    for s in result.skipped:
        click.echo(f"snapshot {s[:8]} was copied before: skipped")
    click.echo(
        f"{len(result.copied)} copied, {len(result.skipped)} skipped; "
        f"{plural(result.blobs_sent, 'blob')} "
        f"({human_bytes(result.bytes_sent)}) sent, {human_bytes(result.bytes_stored)} stored"
        + (f" ({plural(result.deltas_sent, 'chunk')} as deltas)" if result.deltas_sent else "")
    )


COMMANDS = [copy]
