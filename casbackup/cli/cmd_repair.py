from __future__ import annotations

import click

from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import echo_paths, emit_json, plural, reporter_for, warn
from casbackup.repo.repository import Repository
from casbackup.verify.repair import repair_index


@click.group()
def repair() -> None:
    """Repair the repository's index, salvage damaged packs, rewrite damaged snapshots."""


@repair.command(name="index")
@click.option(
    "--read-all-packs", is_flag=True, help="Ignore index files; rebuild from every pack header."
)
@click.pass_context
@with_repository(lock="exclusive")
def repair_index_cmd(repo: Repository, ctx: click.Context, read_all_packs: bool) -> None:
    """Rebuild the index from index files and pack headers (and the local cache from it)."""
    opts = global_options(ctx)
    reporter = reporter_for(ctx)
    try:
        result = repair_index(repo, read_all_packs=read_all_packs, reporter=reporter)
    finally:
        reporter.done()
    if opts.json:
        emit_json({"message_type": "repair", **result.__dict__})
        return
    for fid in result.damaged_index_files:
        warn(f"index file {fid[:12]} was damaged and is replaced")
    for fid in result.unreadable_index_files:
        warn(
            f"index file {fid[:12]} could not be read; it is replaced "
            "(its packs were indexed from their headers)"
        )
    for text in result.packs_unreadable:
        warn(f"pack {text}: its blobs cannot be indexed")
    click.echo(
        f"index rebuilt: {plural(result.blobs, 'blob')} in {plural(result.packs_from_index + result.packs_from_headers, 'pack')} "
        f"({result.packs_from_headers} read from pack headers), {plural(result.index_files_removed, 'old index file')} replaced"
    )


@repair.command(name="packs")
@click.argument("packs", nargs=-1, required=True)
@click.option("--dry-run", "-n", is_flag=True, help="Read and report; change nothing.")
@click.pass_context
@with_repository(lock="exclusive")
def repair_packs_cmd(
    repo: Repository, ctx: click.Context, packs: tuple[str, ...], dry_run: bool
) -> None:
    """Salvage damaged packs (ids as 'check' names them): keep their intact blobs, drop
    the damaged ones from the index so that the next backup stores them again."""
    from casbackup.verify.repair_packs import repair_packs, resolve_packs

    opts = global_options(ctx)
    reporter = reporter_for(ctx)
    try:
        result = repair_packs(
            repo, resolve_packs(repo, list(packs)), dry_run=dry_run, reporter=reporter
        )
    finally:
        reporter.done()
    if opts.json:
        emit_json({
            "message_type": "repair_packs", "dry_run": dry_run,
            "packs": [{"pack": p.pack, "missing": p.missing, "salvaged": p.salvaged,
                       "dropped": [{"blob": b, "why": w} for b, w in p.dropped]}
                      for p in result.packs],
            "packs_written": result.packs_written, "packs_deleted": result.packs_deleted,
            "index_files_replaced": result.index_files_replaced,
        })  # fmt: skip
        return
    for p in result.packs:
        state = "missing" if p.missing else f"{plural(p.salvaged, 'intact blob')} kept"
        click.echo(f"pack {p.pack[:12]}: {state}, {plural(len(p.dropped), 'damaged blob')} dropped")
        for blob, why in p.dropped[:20]:
            click.echo(f"  blob {blob[:16]}: {why}")
        if len(p.dropped) > 20:
            click.echo(f"  ... and {len(p.dropped) - 20} more")
    if dry_run:
        click.echo("dry run: nothing changed")
        return
    click.echo(
        f"{plural(result.packs_deleted, 'damaged pack')} removed, "
        f"{plural(len(result.packs_written), 'new pack')} written"
    )
    if result.dropped:
        click.echo(
            "next: back up the applications 'casbackup check' named; files whose sources "
            "still hold the same data are stored again, and every snapshot that needs them "
            "is whole again ('casbackup check' then names what no source holds any more)"
        )


@repair.command(name="snapshots")
@click.argument("snapshots", nargs=-1)
@click.option(
    "--dry-run", "-n", is_flag=True, help="Report what would be left out; change nothing."
)
@click.pass_context
@with_repository(lock="exclusive")
def repair_snapshots_cmd(
    repo: Repository, ctx: click.Context, snapshots: tuple[str, ...], dry_run: bool
) -> None:
    """Rewrite snapshots (all, or those given) that name data the repository no longer
    has: damaged files are left out, unreadable folders kept empty, tagged 'repaired'."""
    from casbackup.verify.repair_snapshots import repair_snapshots

    opts = global_options(ctx)
    reporter = reporter_for(ctx)
    ids = [repo.resolve_snapshot(s).id for s in snapshots] or None
    try:
        result = repair_snapshots(repo, ids, dry_run=dry_run, reporter=reporter)
    finally:
        reporter.done()
    if opts.json:
        emit_json({
            "message_type": "repair_snapshots", "dry_run": dry_run, "checked": result.checked,
            "repaired": [{"snapshot": r.old, "new": r.new, "app": r.app, "time": r.time,
                          "removed": r.removed} for r in result.repaired],
        })  # fmt: skip
        return
    for r in result.repaired:
        new = "" if r.new is None else f" -> new snapshot {r.new[:8]}"
        app = f"{r.app}, " if r.app else ""
        click.echo(
            f"snapshot {r.old[:8]} ({app}{r.time[:19]}): "
            f"{plural(len(r.removed), 'entry', 'entries')} left out{new}"
        )
        echo_paths(r.removed)
    done = "would be repaired (dry run: nothing changed)" if dry_run else "repaired"
    click.echo(f"{len(result.repaired)} of {plural(result.checked, 'snapshot')} {done}")


COMMANDS = [repair]
