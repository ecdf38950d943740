"""`casbackup fs-snapshots list|cleanup`: casbackup's file-system snapshots on this machine."""

from __future__ import annotations

import click

from casbackup.cli.render import warn
from casbackup.errors import SnapshotProviderError
from casbackup.fssnap.base import ToolMissing, pid_alive
from casbackup.fssnap.session import PROVIDERS, cleanup, get_provider

_PROVIDER = click.option(
    "--provider", "providers", multiple=True, type=click.Choice(PROVIDERS),
    help="Only this provider (repeatable) [default: every provider whose tool is installed].",
)  # fmt: skip


@click.group(name="fs-snapshots")
def fs_snapshots() -> None:
    """File-system snapshots (Btrfs, ZFS, LVM) that casbackup took for backups."""


@fs_snapshots.command(name="list")
@_PROVIDER
def list_cmd(providers: tuple[str, ...]) -> None:
    """List casbackup's file-system snapshots and whether their backup is still running."""
    for name in providers or PROVIDERS:
        try:
            found = get_provider(name).leftovers(None)
        except ToolMissing:
            if providers:
                raise
            continue
        except SnapshotProviderError as exc:
            if providers:
                raise
            warn(str(exc))
            continue
        for left in found:
            state = "running" if pid_alive(left.pid) else "leftover"
            click.echo(f"{left.provider}\t{left.handle}\t{state}")


@fs_snapshots.command(name="cleanup")
@_PROVIDER
@click.option("--dry-run", "-n", is_flag=True, help="Only say what would be removed.")
def cleanup_cmd(providers: tuple[str, ...], dry_run: bool) -> None:
    """Remove the snapshots that crashed or killed backups left behind (found by name)."""
    done = cleanup(providers or PROVIDERS, None, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    for left in done.removed:
        click.echo(f"{verb} {left.provider} snapshot {left.handle}")
    for left in done.alive:
        click.echo(f"kept {left.provider} snapshot {left.handle}: its backup (pid {left.pid}) runs")
    # A provider named on the command line must answer; the others are looked at in passing.
    errors = done.errors + (done.unavailable if providers else [])
    for message in (done.unavailable if not providers else []) + errors[1:]:
        warn(message)
    if errors:
        raise SnapshotProviderError(errors[0])
    click.echo(f"{len(done.removed)} snapshot(s) {verb}")


COMMANDS = [fs_snapshots]
