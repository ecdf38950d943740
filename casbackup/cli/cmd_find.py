from __future__ import annotations

from datetime import datetime

import click

from casbackup.cli.cmd_ls import long_line, node_doc
from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import emit_json, plural, printable, warn
from casbackup.repo.repository import Repository
from casbackup.timezones import in_zone
from casbackup.vfs.find import Finder, FindOptions


@click.command()
@click.argument("pattern")
@click.option("--app", help="Search only this application's snapshots.")
@click.option("--path", "path", default="/", show_default=True, help="Search only below this path.")
@click.option(
    "--newest", type=click.IntRange(min=1), metavar="N", help="Search only the N newest snapshots."
)
@click.pass_context
@with_repository(lock=None)
def find(repo: Repository, ctx: click.Context, pattern: str, app: str | None, path: str,
         newest: int | None) -> None:  # fmt: skip
    """Which snapshots hold a path matching PATTERN (reads no file data).

    PATTERN is matched like an exclude pattern: without '/' against each name
    ('*.conf'), with '/' against the whole path ('/etc/app/*.ini', 'app/**/config').
    """
    opts = global_options(ctx)
    path = path if path.startswith("/") else "/" + path
    finder = Finder(repo, FindOptions(pattern, app=app, path=path, newest=newest))
    current = None
    found = 0
    for match in finder.run():
        found += 1
        snap = match.snapshot
        if opts.json:
            doc = node_doc(match.path, match.node)
            doc.update(snapshot=snap.id, short_id=snap.short_id, time=snap.time, app=snap.app)
            emit_json(doc)
            continue
        if snap.id != current:
            current = snap.id
            when = in_zone(datetime.fromisoformat(snap.time)).strftime("%Y-%m-%d %H:%M:%S")
            what = printable(f"app {snap.app}" if snap.app else f"host {snap.host}")
            click.echo(f"{'' if found == 1 else chr(10)}snapshot {snap.short_id} ({what}, {when}):")
        click.echo("  " + long_line(match.path, match.node))
    for message in finder.stats.warnings:
        warn(message)
    if not opts.json and not opts.quiet:
        stats = finder.stats
        click.echo(
            f"{found} match{'es' if found != 1 else ''} in {stats.snapshots} snapshot"
            f"{'s' if stats.snapshots != 1 else ''} searched ({plural(stats.trees_walked, 'folder')} read, "
            f"{stats.trees_reused} reused from earlier snapshots)",
            err=True,
        )


COMMANDS = [find]
