from __future__ import annotations

import click

from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import emit_json, plural, reporter_for, warn
from casbackup.repo.repository import Repository
from casbackup.verify.repair import repair_index


@click.group()
def repair() -> None:
    """Repair the repository's index, or salvage damaged packs."""


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


COMMANDS = [repair]
