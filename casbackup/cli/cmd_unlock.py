from __future__ import annotations

import click

from casbackup.cli.context import with_repository
from casbackup.cli.render import warn
from casbackup.maintenance.unlock import remove_stale_locks
from casbackup.repo.repository import Repository


@click.command()
@click.option(
    "--remove-all", is_flag=True, help="Remove every lock, including live ones (dangerous)."
)
@with_repository(lock=None)
def unlock(repo: Repository, remove_all: bool) -> None:
    """Remove stale locks (dead processes on this host, or not refreshed for 30 minutes)."""
    result = remove_stale_locks(repo, remove_all=remove_all)
    for described in result.removed:
        click.echo(f"removed {described}")
    for problem in result.failed:
        warn(problem)
    for described in result.kept:
        click.echo(f"kept live {described}")
    click.echo(f"{len(result.removed)} locks removed")


COMMANDS = [unlock]
