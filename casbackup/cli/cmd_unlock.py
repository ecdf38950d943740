from __future__ import annotations

import click

from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import emit_json, printable, warn
from casbackup.maintenance.unlock import remove_stale_locks
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
    result = remove_stale_locks(repo, remove_all=remove_all)
    if global_options(ctx).json:
        emit_json({"message_type": "unlock", "removed": list(result.removed),
                   "kept": list(result.kept), "failed": list(result.failed)})  # fmt: skip
        return
    for described in result.removed:
        click.echo(f"removed {printable(described)}")
    for problem in result.failed:
        warn(problem)
    for described in result.kept:
        click.echo(f"kept live {printable(described)}")
    click.echo(f"{plural(len(result.removed), 'lock')} removed")


COMMANDS = [unlock]
