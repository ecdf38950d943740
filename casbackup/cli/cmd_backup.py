from __future__ import annotations

from dataclasses import asdict

import click

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.archiver.excludes import read_exclude_file
from casbackup.cli.context import with_repository
from casbackup.cli.render import emit_json, human_bytes, reporter_for
from casbackup.errors import PartialBackup, UsageError
from casbackup.repo.repository import Repository


@click.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--app", help="Application name: groups snapshots into a chain.")
@click.option(
    "--type",
    "backup_type",
    type=click.Choice(["full", "incremental", "differential"]),
    default="incremental",
    show_default=True,
)
@click.option("--tag", "tags", multiple=True, help="Tag the snapshot (repeatable).")
@click.option(
    "-e",
    "--exclude",
    "excludes",
    multiple=True,
    help="Exclude paths matching PATTERN (repeatable).",
)
@click.option(
    "--exclude-file",
    "exclude_files",
    multiple=True,
    type=click.Path(),
    help="Read exclude patterns from a file.",
)
@click.option("-x", "--one-file-system", is_flag=True, help="Do not cross file system boundaries.")
@click.option("-n", "--dry-run", is_flag=True, help="Read and chunk everything, store nothing.")
@click.option("--parent", help="Use this snapshot as the parent instead of the latest one.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="File reader threads.",
)
@click.pass_context
@with_repository(lock="shared")
def backup(repo: Repository, ctx: click.Context, paths: tuple[str, ...], app: str | None, backup_type: str,
           tags: tuple[str, ...], excludes: tuple[str, ...], exclude_files: tuple[str, ...], one_file_system: bool,
           dry_run: bool, parent: str | None, workers: int) -> None:  # fmt: skip
    """Back up PATHS into a new snapshot."""
    if not paths:
        raise UsageError("nothing to back up: give one or more paths")
    patterns = list(excludes)
    for f in exclude_files:
        patterns.extend(read_exclude_file(f))
    options = BackupOptions(
        paths=paths, type=backup_type, app=app, tags=tags, excludes=tuple(patterns),
        one_file_system=one_file_system, dry_run=dry_run, parent=parent, workers=workers,
    )  # fmt: skip
    reporter = reporter_for(ctx)
    try:
        result = run_backup(repo, options, reporter)
    finally:
        reporter.done()
    render_backup_result(ctx, result, dry_run)
    if result.warnings:
        raise PartialBackup(
            f"snapshot saved, but {len(result.warnings)} files or folders could not be read"
        )


def render_backup_result(ctx: click.Context, result, dry_run: bool) -> None:  # type: ignore[no-untyped-def]
    from casbackup.cli.context import global_options

    opts = global_options(ctx)
    snap = result.snapshot
    if opts.json:
        doc = {
            "message_type": "summary",
            "dry_run": dry_run,
            "warnings": result.warnings,
            "notes": result.notes,
        }
        if snap is not None:
            doc.update(
                snapshot_id=snap.id,
                type=snap.type,
                parent=snap.parent,
                app=snap.app,
                **asdict(snap.summary),
            )
        emit_json(doc)
        return
    if snap is None:
        click.echo("dry run: nothing was stored")
        return
    s = snap.summary
    if opts.quiet:
        click.echo(snap.id)
        return
    click.echo(
        f"Files:  {s.files_new:>8} new, {s.files_changed:>8} changed, {s.files_unchanged:>8} unchanged"
    )
    click.echo(f"Dirs:   {s.dirs:>8}")
    click.echo(
        f"Added to the repository: {human_bytes(s.bytes_added)} ({human_bytes(s.bytes_stored)} stored)"
    )
    click.echo(
        f"processed {s.files_total} files, {human_bytes(s.bytes_total)} in {s.duration_s:.1f}s (read {human_bytes(s.bytes_read)})"
    )
    parent = f", parent {snap.parent[:8]}" if snap.parent else ""
    click.echo(f"snapshot {snap.short_id} saved ({snap.type}{parent})")


COMMANDS = [backup]
