from __future__ import annotations

import click

from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import emit_json, printable, warn
from casbackup.errors import CasError, NotFound
from casbackup.repo.lock import list_locks
from casbackup.repo.repository import Repository
from casbackup.units import plural


@click.command()
@click.option(
    "--remove-all", is_flag=True, help="Remove every lock, including live ones (dangerous)."
)
@click.pass_context
@with_repository(lock=None)
def unlock(repo: Repository, ctx: click.Context, remove_all: bool) -> None:
    """Remove stale locks (dead processes on this host, or not refreshed for 30 minutes)."""
    json_mode = global_options(ctx).json
    removed: list[str] = []
    kept: list[str] = []
    for info in list_locks(repo):
        if remove_all or info.is_stale():
            try:
                repo.backend.delete(info.name)
                removed.append(info.describe())
                if not json_mode:
                    click.echo(f"removed {printable(info.describe())}")
            except NotFound:
                pass
            except CasError as exc:  # replaced meanwhile by something that is not a lock
                warn(f"could not remove {info.name}: {exc}")
        else:
            kept.append(info.describe())
            if not json_mode:
                click.echo(f"kept live {printable(info.describe())}")
    if json_mode:
        emit_json({"message_type": "unlock", "removed": removed, "kept": kept})
    else:
        click.echo(f"{plural(len(removed), 'lock')} removed")


COMMANDS = [unlock]
