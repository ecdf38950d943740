"""`casbackup apps`: each application, its latest snapshot and whether that was verified.

Applications come from the config file when there is one, and from the repository's snapshots
(an application removed from the config still has backups worth seeing).
"""

from __future__ import annotations

import sys
from datetime import datetime

import click
from rich.console import Console
from rich.table import Table

from casbackup.catalog import application_rows
from casbackup.cli.config_support import load_cli_config
from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import cell, emit_json, plural, warn
from casbackup.repo.repository import Repository
from casbackup.timezones import in_zone


@click.command()
@click.pass_context
@with_repository(lock=None)
def apps(repo: Repository, ctx: click.Context) -> None:
    """List applications with their latest snapshot and its verification state."""
    opts = global_options(ctx)
    config = load_cli_config(opts)
    warnings: list[str] = []
    rows = application_rows(repo, config, warnings)
    for w in warnings:
        warn(w)
    if opts.json:
        emit_json(rows)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("App", "Last snapshot", "Time", "Type", "Verified", "Snapshots", "Databases"):
        table.add_column(col, justify="right" if col == "Snapshots" else "left")
    for r in rows:
        last = r["last_snapshot"]
        when = (in_zone(datetime.fromisoformat(last["time"])).strftime("%Y-%m-%d %H:%M:%S")
                if last else "-")  # fmt: skip
        # Without a config file every application is "not in config": said of none then.
        name = r["name"] if r["in_config"] or config is None else f"{r['name']} (not in config)"
        table.add_row(
            cell(name), last["short_id"] if last else "never backed up", when,
            cell(last["type"]) if last else "-", cell(r["verification"] or "-"), str(r["snapshots"]),
            cell(", ".join(r["databases"]) or "-"),
        )  # fmt: skip
    Console(soft_wrap=True, width=None if sys.stdout.isatty() else 250).print(table)
    click.echo(f"{plural(len(rows), 'application')}")


COMMANDS = [apps]
