from __future__ import annotations

import click

from casbackup.cli.context import with_repository
from casbackup.errors import NotFound
from casbackup.repo.lock import list_locks
from casbackup.repo.repository import Repository
from casbackup.units import plural


@click.command()
@click.option(
    "--remove-all", is_flag=True, help="Remove every lock, including live ones (dangerous)."
)
@with_repository(lock=None)
def unlock(repo: Repository, remove_all: bool) -> None:
    """Remove stale locks (dead processes on this host, or not refreshed for 30 minutes)."""
    removed = 0
    for info in list_locks(repo):
        if remove_all or info.is_stale():
            try:
                repo.backend.delete(info.name)
                removed += 1
                click.echo(f"removed {info.describe()}")
            except NotFound:
                pass
        else:
            click.echo(f"kept live {info.describe()}")
    click.echo(f"{plural(removed, 'lock')} removed")


COMMANDS = [unlock]
