from __future__ import annotations

import os
from collections import Counter

import click

from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import emit_json, printable
from casbackup.maintenance.diff import ADDED, METADATA, MODIFIED, REMOVED, TYPE, diff_snapshots
from casbackup.repo.repository import Repository

_WORDS = {
    ADDED: "added",
    REMOVED: "removed",
    MODIFIED: "modified",
    METADATA: "metadata",
    TYPE: "type",
}


@click.command()
@click.argument("snapshot1")
@click.argument("snapshot2")
@click.argument("path", required=False, default="/")
@click.option("--app", help="With 'latest': the latest snapshot of this application.")
@click.pass_context
@with_repository(lock="shared", reads_only=True)
def diff(repo: Repository, ctx: click.Context, snapshot1: str, snapshot2: str, path: str,
         app: str | None) -> None:  # fmt: skip
    """Show what changed from SNAPSHOT1 to SNAPSHOT2 (optionally below PATH).

    + added, - removed, M content modified, U metadata only (mode, owner, mtime), T type changed.
    """
    opts = global_options(ctx)
    old = repo.resolve_snapshot(snapshot1, app=app)
    new = repo.resolve_snapshot(snapshot2, app=app)
    if not path.startswith("/"):
        path = "/" + path
    differ, changes = diff_snapshots(repo, old.root, new.root, path)
    counts: Counter[str] = Counter()
    if not opts.json:
        click.echo(f"comparing snapshot {old.short_id} to {new.short_id}:")
    for change in changes:
        counts[change.code] += 1
        slash = "/" if change.is_dir else ""
        if opts.json:  # the name as stored (bytes that are not UTF-8 as surrogate escapes)
            path = os.fsdecode(change.path) + slash
            emit_json({"message_type": "change", "path": path, "modifier": change.code})
        elif not opts.quiet:
            click.echo(f"{change.code}    {printable(change.path)}{slash}")
    summary = {_WORDS[code]: counts[code] for code in _WORDS}
    if opts.json:
        emit_json({"message_type": "statistics", "source_snapshot": old.id, "target_snapshot": new.id,
                   **summary, "trees_read": differ.trees_loaded})  # fmt: skip
    else:
        click.echo(
            f"{summary['added']} added, {summary['removed']} removed, {summary['modified']} modified, "
            f"{summary['metadata']} metadata only, {summary['type']} type changes"
        )


COMMANDS = [diff]
