from __future__ import annotations

import click

from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import emit_json, printable
from casbackup.maintenance.tags import TagChange, change_tags
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import split_tag_args
from casbackup.units import plural


@click.command()
@click.argument("snapshot_refs", nargs=-1, metavar="SNAPSHOT...")
@click.option(
    "--add", "add", multiple=True, metavar="TAG", help="Add TAG (repeatable; a,b adds both)."
)
@click.option("--remove", "remove", multiple=True, metavar="TAG", help="Remove TAG (repeatable).")
@click.option(
    "--set", "set_to", multiple=True, metavar="TAG",
    help="Replace every tag with these (repeatable; --set '' removes them all).",
)  # fmt: skip
@click.option("--app", help="With 'latest': the application's latest snapshot.")
@click.option("-n", "--dry-run", is_flag=True, help="Only show what would change.")
@click.pass_context
@with_repository(lock="exclusive")
def tag(repo: Repository, ctx: click.Context, snapshot_refs: tuple[str, ...], add: tuple[str, ...],
        remove: tuple[str, ...], set_to: tuple[str, ...], app: str | None, dry_run: bool) -> None:  # fmt: skip
    """Change the tags of SNAPSHOTs (ids, unique prefixes, or 'latest' with --app).

    A tag in an application's `retention.keep_tags` (or `forget --keep-tag`) keeps the
    snapshot whatever the other rules say: `casbackup tag --add release ID` pins it. Each
    changed snapshot gets a new id (its record is rewritten); its old id still finds it, and
    its verification state stays."""
    change = TagChange(add=split_tag_args(add), remove=split_tag_args(remove),
                       set_to=split_tag_args(set_to) if set_to else None)  # fmt: skip
    result = change_tags(repo, snapshot_refs, change, app=app, dry_run=dry_run)
    if global_options(ctx).json:
        emit_json({
            "message_type": "tag", "dry_run": dry_run,
            "changed": [{"old_id": old.id, "new_id": new.id, "tags": list(new.tags)}
                        for old, new in result.changed],
            "unchanged": [s.id for s in result.unchanged],
            "leftovers_removed": result.leftovers_removed,
        })  # fmt: skip
        return
    for old_id in result.leftovers_removed:
        click.echo(f"removed left-over record {old_id[:8]} of an interrupted tag change")
    for old, new in result.changed:
        tags = ", ".join(printable(t) for t in new.tags) or "(none)"
        if dry_run:
            click.echo(f"would change {old.short_id}: tags {tags}")
        else:
            click.echo(f"{old.short_id} -> {new.short_id}: tags {tags}")
    for snap in result.unchanged:
        click.echo(f"{snap.short_id}: tags unchanged")
    verb = "would change" if dry_run else "changed"
    click.echo(f"{verb} {plural(len(result.changed), 'snapshot')}")


COMMANDS = [tag]
