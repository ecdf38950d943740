from __future__ import annotations

import click

from casbackup.cli.context import with_repository
from casbackup.cli.render import warn
from casbackup.errors import CasError, NotFound
from casbackup.repo.lock import list_locks
from casbackup.repo.repository import Repository


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
            except CasError as exc:  # replaced meanwhile by something that is not a lock
                warn(f"could not remove {info.name}: {exc}")
        else:
            click.echo(f"kept live {info.describe()}")
    click.echo(f"{removed} locks removed")


COMMANDS = [unlock]
