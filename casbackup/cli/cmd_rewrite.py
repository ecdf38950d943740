from __future__ import annotations

import click

from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import echo_paths, emit_json, human_bytes, plural, reporter_for, warn
from casbackup.repo.repository import Repository


@click.command()
@click.argument("snapshot_refs", nargs=-1, metavar="[SNAPSHOT]...")
@click.option("--exclude", "-e", "excludes", multiple=True, metavar="PATTERN",
              help="Take out paths matching PATTERN, as backup's --exclude (repeatable).")  # fmt: skip
@click.option("--exclude-file", "exclude_files", multiple=True, metavar="FILE",
              help="Read patterns from FILE, one a line (repeatable).")  # fmt: skip
@click.option("--app", help="Only snapshots of this application (and 'latest' is its latest).")
@click.option("--forget", "forget_old", is_flag=True,
              help="Delete each original snapshot once its rewrite is stored.")  # fmt: skip
@click.option("-n", "--dry-run", is_flag=True, help="Say what would be taken out; change nothing.")
@click.pass_context
@with_repository(lock="exclusive")
def rewrite(repo: Repository, ctx: click.Context, snapshot_refs: tuple[str, ...],
            excludes: tuple[str, ...], exclude_files: tuple[str, ...], app: str | None,
            forget_old: bool, dry_run: bool) -> None:  # fmt: skip
    """Take files out of existing snapshots (all, those of --app, or the SNAPSHOTs given):
    a secret or personal data that must not be kept. Each snapshot that held a match gets
    a rewritten copy tagged 'rewritten'; with --forget the original is deleted, and
    'casbackup prune' then deletes the data."""
    from casbackup.archiver.excludes import Excluder, read_exclude_file
    from casbackup.maintenance.rewrite import rewrite_snapshots

    patterns = list(excludes)
    for f in exclude_files:
        patterns.extend(read_exclude_file(f))
    excluder = Excluder(patterns)
    if snapshot_refs:
        chosen = {s.id: s for s in (repo.resolve_snapshot(r, app=app) for r in snapshot_refs)}
        snaps = list(chosen.values())
    else:
        warnings: list[str] = []
        snaps = [s for s in repo.list_snapshots(warnings=warnings) if app is None or s.app == app]
        for w in warnings:
            warn(f"{w}: left as it is")
    opts = global_options(ctx)
    reporter = reporter_for(ctx)
    try:
        result = rewrite_snapshots(
            repo, snaps, excluder, forget_old=forget_old, dry_run=dry_run, reporter=reporter
        )
    finally:
        reporter.done()
    for sid in result.emptied:
        warn(f"snapshot {sid[:8]}: the patterns take out every file it holds: left as it is "
             f"(to remove it, 'casbackup forget {sid[:12]}')")  # fmt: skip
    if opts.json:
        emit_json({
            "message_type": "rewrite", "dry_run": dry_run, "checked": result.checked,
            "emptied": result.emptied,
            "rewritten": [{"snapshot": r.old, "new": r.new, "app": r.app, "time": r.time,
                           "removed": r.removed, "files": r.files, "bytes": r.bytes,
                           "forgotten": r.forgotten} for r in result.rewritten],
        })  # fmt: skip
        return
    for r in result.rewritten:
        new = "" if r.new is None else f" -> {r.new[:8]}"
        app_part = f"{r.app}, " if r.app else ""
        click.echo(
            f"snapshot {r.old[:8]} ({app_part}{r.time[:19]}){new}: "
            f"{plural(r.files, 'file')}, {human_bytes(r.bytes)} taken out"
            + (" (original deleted)" if r.forgotten else "")
        )
        echo_paths(r.removed)
    if dry_run:
        click.echo(f"{len(result.rewritten)} of {plural(result.checked, 'snapshot')} would be "
                   "rewritten (dry run: nothing changed)")  # fmt: skip
        return
    click.echo(f"{len(result.rewritten)} of {plural(result.checked, 'snapshot')} rewritten")
    if result.rewritten and not forget_old:
        click.echo("the original snapshots still hold those files: run again with --forget "
                   f"to delete them, then {_PRUNE}")  # fmt: skip
    elif result.rewritten:
        click.echo(f"to delete the data only they held, run {_PRUNE}")


# A pack that is mostly in use is kept by a plain prune (5% unused allowed): the bytes taken
# out would stay on the storage, which is not what taking them out means.
_PRUNE = "'casbackup prune --max-unused 0' (every pack holding any of it is rewritten)"


COMMANDS = [rewrite]
