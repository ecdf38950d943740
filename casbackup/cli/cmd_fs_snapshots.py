"""`casbackup fs-snapshots list|cleanup`: casbackup's file-system snapshots on this machine."""

from __future__ import annotations

import os

import click

from casbackup.cli.context import global_options
from casbackup.cli.render import emit_json, emit_json_err, plural, printable, warn
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


def _warn(ctx: click.Context, message: str) -> None:
    if global_options(ctx).json:
        emit_json_err({"message_type": "warning", "message": message})
    else:
        warn(message)


@fs_snapshots.command(name="list")
@_PROVIDER
@click.pass_context
def list_cmd(ctx: click.Context, providers: tuple[str, ...]) -> None:
    """List casbackup's file-system snapshots and whether their backup is still running."""
    rows: list[dict[str, object]] = []
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
            _warn(ctx, str(exc))
            continue
        for left in found:
            state = "running" if pid_alive(left.pid, left.name) else "leftover"
            rows.append({"provider": left.provider, "snapshot": left.handle, "state": state})
    if global_options(ctx).json:
        emit_json({"message_type": "fs_snapshots", "snapshots": rows})
        return
    for row in rows:
        click.echo(f"{row['provider']}\t{printable(row['snapshot'])}\t{row['state']}")


@fs_snapshots.command(name="cleanup")
@_PROVIDER
@click.option("--dry-run", "-n", is_flag=True, help="Only say what would be removed.")
@click.pass_context
def cleanup_cmd(ctx: click.Context, providers: tuple[str, ...], dry_run: bool) -> None:
    """Remove the snapshots that crashed or killed backups left behind (found by name)."""
    if os.geteuid() != 0 and not dry_run:
        # Nothing could be removed: without this the user read "0 snapshots removed".
        raise SnapshotProviderError("removing file-system snapshots needs root; run it as root")
    done = cleanup(providers or PROVIDERS, None, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    # A provider named on the command line must answer; the others are looked at in passing.
    errors = done.errors + (done.unavailable if providers else [])
    for message in (done.unavailable if not providers else []) + errors[1:]:
        _warn(ctx, message)
    if global_options(ctx).json:
        emit_json({"message_type": "fs_snapshots_cleanup", "dry_run": dry_run,
                   "removed": [left.handle for left in done.removed],
                   "kept": [left.handle for left in done.alive]})  # fmt: skip
        if errors:
            raise SnapshotProviderError(errors[0])
        return
    for left in done.removed:
        click.echo(f"{verb} {left.provider} snapshot {left.handle}")
    for left in done.alive:
        click.echo(f"kept {left.provider} snapshot {left.handle}: its backup (pid {left.pid}) runs")
    if errors:
        raise SnapshotProviderError(errors[0])
    count = plural(len(done.removed), "snapshot")
    click.echo(f"would remove {count}" if dry_run else f"{count} removed")


COMMANDS = [fs_snapshots]
