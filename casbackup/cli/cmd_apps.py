"""`casbackup apps`: each application, its latest snapshot and whether that was verified.

Applications come from the config file when there is one, and from the repository's snapshots
(an application removed from the config still has backups worth seeing).
"""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from casbackup.cli.config_support import load_cli_config
from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import cell, emit_json, plural, warn
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot


def verification_state(repo: Repository, snapshot_id: str) -> str:
    """ "verified", "failed", "not verified", or "unknown" when this build cannot tell."""
    try:
        from casbackup.verify.records import latest_verification  # type: ignore[import-not-found]
    except ImportError:
        return "unknown"
    record = latest_verification(repo, snapshot_id)
    if record is None:
        return "not verified"
    get = record.get if isinstance(record, dict) else lambda k: getattr(record, k, None)
    for key in ("ok", "passed", "success"):
        if isinstance(get(key), bool):
            return "verified" if get(key) else "failed"
    status = get("status") or get("result")
    return str(status) if status else "unknown"


@click.command()
@click.pass_context
@with_repository(lock=None)
def apps(repo: Repository, ctx: click.Context) -> None:
    """List applications with their latest snapshot and its verification state."""
    opts = global_options(ctx)
    config = load_cli_config(opts)
    warnings: list[str] = []
    latest: dict[str, Snapshot] = {}
    counts: dict[str, int] = {}
    for snap in repo.list_snapshots(warnings=warnings):  # oldest first: the last one wins
        if snap.app:
            latest[snap.app] = snap
            counts[snap.app] = counts.get(snap.app, 0) + 1
    for w in warnings:
        warn(w)
    configured = {a.name: a for a in config.applications} if config else {}
    names = list(configured) + sorted(n for n in latest if n not in configured)
    rows: list[dict[str, Any]] = []
    for name in names:
        app, snap = configured.get(name), latest.get(name)
        rows.append({
            "name": name,
            "description": app.description if app else "",
            "in_config": app is not None,
            "databases": [d.name for d in app.databases] if app else
                         [d.name for d in snap.databases] if snap else [],
            "snapshots": counts.get(name, 0),
            "last_snapshot": None if snap is None else {
                "id": snap.id, "short_id": snap.short_id, "time": snap.time, "type": snap.type,
            },
            "verification": verification_state(repo, snap.id) if snap else None,
        })  # fmt: skip
    if opts.json:
        emit_json(rows)
        return
    table = Table(box=None, header_style="bold", pad_edge=False)
    for col in ("App", "Last snapshot", "Time", "Type", "Verified", "Snapshots", "Databases"):
        table.add_column(col, justify="right" if col == "Snapshots" else "left")
    for r in rows:
        last = r["last_snapshot"]
        when = (datetime.fromisoformat(last["time"]).astimezone().strftime("%Y-%m-%d %H:%M:%S")
                if last else "-")  # fmt: skip
        name = r["name"] if r["in_config"] else f"{r['name']} (not in config)"
        table.add_row(
            cell(name), last["short_id"] if last else "never backed up", when,
            cell(last["type"]) if last else "-", cell(r["verification"] or "-"), str(r["snapshots"]),
            cell(", ".join(r["databases"]) or "-"),
        )  # fmt: skip
    Console(soft_wrap=True, width=None if sys.stdout.isatty() else 250).print(table)
    click.echo(f"{plural(len(rows), 'application')}")


COMMANDS = [apps]
