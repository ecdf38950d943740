from __future__ import annotations

import click

from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import emit_json, plural, reporter_for, warn
from casbackup.repo.repository import Repository
from casbackup.verify.repair import repair_index


@click.group()
def repair() -> None:
    """Repair the repository's index."""


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


COMMANDS = [repair]
