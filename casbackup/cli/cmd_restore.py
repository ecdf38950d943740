from __future__ import annotations

import os

import click

from casbackup.archiver.restore import RestoreOptions, RestoreStopped
from casbackup.archiver.restore import restore as run_restore
from casbackup.cli.context import global_options, split_snapshot_path, with_repository
from casbackup.cli.render import (
    emit_json,
    error_item,
    human_bytes,
    plural,
    reporter_for,
    warn,
)
from casbackup.errors import RestoreError
from casbackup.repo.repository import Repository

_SHOWN = 50  # warnings and errors printed one by one; --json has them all


@click.command()
@click.argument("ref", metavar="SNAPSHOT[:PATH]")
@click.argument("path_arg", metavar="[PATH]", required=False)
@click.option(
    "-t",
    "--target",
    required=True,
    type=click.Path(file_okay=False),
    help="Folder to restore into.",
)
@click.option("--app", help="With 'latest': the latest snapshot of this application.")
@click.option(
    "-i", "--include", "includes", multiple=True, metavar="PATTERN",
    help="Restore only paths matching PATTERN (repeatable).",
)  # fmt: skip
@click.option(
    "-e", "--exclude", "excludes", multiple=True, metavar="PATTERN",
    help="Skip paths matching PATTERN (repeatable).",
)  # fmt: skip
@click.option("--overwrite", is_flag=True, help="Replace files that exist in the target.")
@click.option("-n", "--dry-run", is_flag=True, help="Show what would be restored.")
@click.option(
    "--no-xattrs", is_flag=True, help="Do not restore extended attributes (ACLs, capabilities)."
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Writer processes (threads for non-local repositories).",
)
@click.pass_context
@with_repository(lock="shared", reads_only=True)
def restore(repo: Repository, ctx: click.Context, ref: str, path_arg: str | None, target: str, app: str | None, includes: tuple[str, ...],
            excludes: tuple[str, ...], overwrite: bool, dry_run: bool, no_xattrs: bool, workers: int) -> None:  # fmt: skip
    """Restore a snapshot, a folder of it or one file (SNAPSHOT:PATH, or SNAPSHOT PATH)
    into TARGET."""
    opts = global_options(ctx)
    snap_ref, path = split_snapshot_path(ref, path_arg)
    snap = repo.resolve_snapshot(snap_ref, app=app)
    options = RestoreOptions(
        target=target, subpath=path, includes=includes, excludes=excludes, overwrite=overwrite,
        workers=workers, dry_run=dry_run, xattrs=not no_xattrs,
    )  # fmt: skip
    if path in ("", "/") and (inside := _source_holding(snap.paths, target)) is not None:
        warn(
            f"the target {target} is inside {inside}, which this snapshot backed up: a whole "
            f"snapshot is restored under its full paths, so the files land in "
            f"{os.path.join(target, inside.lstrip('/'))}/...; to put a folder back where it "
            f"was, restore SNAPSHOT:{inside} --target {inside} (--overwrite replaces what is there)"
        )
    reporter = reporter_for(ctx)
    stopped: RestoreStopped | None = None
    try:
        result = run_restore(repo, snap, options, reporter)
    except RestoreStopped as exc:  # the target took no more: what failed before still shows
        stopped, result = exc, exc.result
    finally:
        reporter.done()
    if opts.json:
        emit_json({
            "message_type": "summary", "snapshot_id": snap.id, "target": target, "files": result.files,
            "symlinks": result.symlinks, "specials": result.specials, "dirs": result.dirs, "hard_links": result.links, "bytes": result.bytes,
            "warnings": result.warnings, "errors": result.errors, "dry_run": dry_run,
            "others_owned": result.others_owned,
            "stopped": stopped.message if stopped else None,
        })  # fmt: skip
    elif stopped is None:  # stopped: the final line has the counts
        # A restore as uid 0 of a user namespace warns for every owner: show the first ones.
        for w in result.warnings[:_SHOWN]:
            warn(w)
        if len(result.warnings) > _SHOWN:
            warn(f"{plural(len(result.warnings) - _SHOWN, 'more warning')} (--json lists them all)")
        if result.others_owned:
            click.echo(
                f"note: {plural(result.others_owned, 'file')} of other users in the snapshot "
                f"{'is' if result.others_owned == 1 else 'are'} yours here: owners are "
                "restored only by a restore run as root",
                err=True,
            )
        verb = "would restore" if dry_run else "restored"
        links = f"{plural(result.symlinks, 'symlink')}, " if result.symlinks else ""
        if result.specials:  # FIFOs, device nodes
            links += f"{plural(result.specials, 'special file')}, "
        click.echo(f"{verb} {plural(result.files, 'file')}, {links}{plural(result.dirs, 'folder')}, {human_bytes(result.bytes)} "
                   f"from snapshot {snap.short_id} to {target}")  # fmt: skip
    if len(result.errors) == 1 and stopped is None:
        raise RestoreError(result.errors[0])  # path: reason, on the one error line
    if result.errors:
        # Each by path (the first ones: all are in --json), then the one-line summary.
        for e in result.errors[:_SHOWN]:
            error_item(e)
        shown = (
            "listed above" if len(result.errors) <= _SHOWN else f"the first {_SHOWN} listed above"
        )
        if stopped is not None:
            raise RestoreError(f"{stopped.message} ({shown})")
        raise RestoreError(
            f"{len(result.errors)} entries could not be restored ({shown}); the rest was restored"
        )
    if stopped is not None:
        raise RestoreError(stopped.message)


def _source_holding(paths: tuple[str, ...], target: str) -> str | None:
    """The snapshot path that ``target`` is (or lies inside), symlinks resolved; else None.
    A newcomer restoring "into the original folder" nests the snapshot inside it."""
    where = os.path.realpath(target)
    for path in paths:
        real = os.path.realpath(path)
        if real == "/":  # a backup of / restores somewhere below / by nature
            continue
        if where == real or where.startswith(real.rstrip("/") + "/"):
            return path
    return None


COMMANDS = [restore]
