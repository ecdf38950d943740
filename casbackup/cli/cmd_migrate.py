"""`casbackup migrate`: upgrade a repository to the format this casbackup writes."""

from __future__ import annotations

import click

from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import emit_json, warn
from casbackup.maintenance.migrate import migrate, plan_migration
from casbackup.repo.repository import Repository


@click.command(name="migrate")
@click.option("--dry-run", is_flag=True, help="Say what would change; change nothing.")
@click.option(
    "--accept-settings", is_flag=True,
    help="A version 1 repository whose config differs from the defaults: those settings are "
    "yours (--dry-run names them); they become authenticated.",
)  # fmt: skip
@click.pass_context
@with_repository(lock=None)  # migrate takes its own exclusive lock
def migrate_cmd(repo: Repository, ctx: click.Context, dry_run: bool, accept_settings: bool) -> None:
    """Upgrade the repository's format (older casbackup versions cannot open it afterwards)."""
    plan = plan_migration(repo) if dry_run else migrate(repo, accept_unusual=accept_settings)
    opts = global_options(ctx)
    if opts.json:
        emit_json({"message_type": "migrate", "from_version": plan.from_version,
                   "to_version": plan.to_version, "changed": plan.needed and not dry_run,
                   "unusual": list(plan.unusual)})  # fmt: skip
        return
    for note in plan.unusual:
        when = "would be authenticated" if dry_run else "now authenticated"
        warn(f"{note}: {when} as this repository's setting; check it is yours")
    if not plan.needed:
        click.echo(f"repository is already at format version {plan.from_version}")
    elif dry_run:
        click.echo(f"would upgrade the repository from format version {plan.from_version} "
                   f"to {plan.to_version}")  # fmt: skip
    else:
        click.echo(f"upgraded the repository from format version {plan.from_version} "
                   f"to {plan.to_version}")  # fmt: skip


COMMANDS = [migrate_cmd]
