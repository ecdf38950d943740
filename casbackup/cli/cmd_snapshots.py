from __future__ import annotations

import sys
from datetime import datetime

import click
from rich.console import Console
from rich.table import Table

from casbackup.catalog import snapshot_doc
from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import cell, emit_json, human_bytes, plural, warn
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot, split_tag_args
from casbackup.repo.snapshotstore import no_snapshot_of
from casbackup.timezones import in_zone
from casbackup.verify.records import list_records, state_label


@click.command()
@click.option("--app", help="Only snapshots of this application.")
@click.option(
    "--tag", "tags", multiple=True, help="Only snapshots with this tag (repeatable, a,b: both)."
)
@click.option("--latest", type=int, default=0, help="Only the N newest per group.")
@click.pass_context
@with_repository(lock=None)
def snapshots(
    repo: Repository, ctx: click.Context, app: str | None, tags: tuple[str, ...], latest: int
) -> None:
    """List snapshots."""
    opts = global_options(ctx)
    warnings: list[str] = []
    every = repo.list_snapshots(warnings=warnings)
    snaps = [s for s in every if (app is None or s.app == app)]
    if app is not None and not snaps:  # a mistyped --app must not read as "never backed up"
        warnings.append(no_snapshot_of(app, every))
    if tags:
        wanted = set(split_tag_args(tags))
        snaps = [s for s in snaps if wanted <= set(s.tags)]
    if latest:
        by_group: dict[tuple[str, ...], list[Snapshot]] = {}
        for s in snaps:
            by_group.setdefault(s.group_key(), []).append(s)
        snaps = sorted(
            (x for g in by_group.values() for x in g[-latest:]), key=lambda s: s.start_ns
        )
    records = list_records(repo)
    verified = records.latest_by_snapshot()
    for w in warnings + records.warnings:
        warn(w)
    if opts.json:
        emit_json([snapshot_doc(s, verified.get(s.identity)) for s in snaps])
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in (
        "ID",
        "Time",
        "App",
        "Type",
        "Parent",
        "Size",
        "Files",
        "Verified",
        "Tags",
        "Paths",
    ):
        table.add_column(
            col, justify="right" if col in ("Size", "Files") else "left", no_wrap=col != "Paths"
        )
    for s in snaps:
        when = in_zone(datetime.fromisoformat(s.time)).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row(
            s.short_id, when, cell(s.app or "-"), cell(s.type + (" (partial)" if s.summary.errors else "")), cell(s.parent[:8] if s.parent else "-"),
            human_bytes(s.protected_bytes), str(s.summary.files_total), state_label(verified.get(s.identity)),
            cell(",".join(s.tags)), "\n".join(cell(p) for p in s.paths),
        )  # fmt: skip
    Console(soft_wrap=True, width=None if sys.stdout.isatty() else 250).print(table)
    click.echo(f"{plural(len(snaps), 'snapshot')}")


COMMANDS = [snapshots]
