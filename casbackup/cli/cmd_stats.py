from __future__ import annotations

from dataclasses import asdict

import click

from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import emit_json, human_bytes, plural, reporter_for, warn
from casbackup.errors import NotFound
from casbackup.maintenance.stats import Stats, repository_stats, snapshot_stats
from casbackup.repo.repository import Repository
from casbackup.repo.snapshotstore import no_snapshot_of


@click.command()
@click.argument("snapshot", required=False)
@click.option(
    "--app", help="All snapshots of this application; with 'latest', its latest snapshot."
)
@click.pass_context
@with_repository(lock="shared", reads_only=True)
def stats(repo: Repository, ctx: click.Context, snapshot: str | None, app: str | None) -> None:
    """Sizes, deduplication and compression of a snapshot, an application or the repository."""
    opts = global_options(ctx)
    warnings: list[str] = []
    if snapshot or app:
        if snapshot:  # 'latest' with --app is that application's latest, as everywhere
            snaps = [repo.resolve_snapshot(snapshot, app=app)]
            scope = f"snapshot {snaps[0].short_id}"
        else:
            every = repo.list_snapshots(warnings=warnings)
            snaps = [s for s in every if s.app == app]
            if not snaps:
                raise NotFound(no_snapshot_of(str(app), every))
            scope = f"application {app} ({plural(len(snaps), 'snapshot')})"
        reporter = reporter_for(ctx)
        try:
            result = snapshot_stats(repo, snaps, reporter)
        finally:
            reporter.done()
    else:
        result = repository_stats(repo, warnings)
        scope = "repository"
    for w in warnings:
        warn(w)
    if opts.json:
        emit_json({"message_type": "stats", "scope": scope, **asdict(result),
                   "dedup_ratio": round(result.dedup_ratio, 3),
                   "compression_ratio": round(result.compression_ratio, 3)})  # fmt: skip
        return
    render(scope, result)


def render(scope: str, s: Stats) -> None:
    click.echo(f"Stats of the {scope}:")
    rows = [
        ("Snapshots", str(s.snapshots)),
        ("Files", str(s.files)),
        ("Logical size", human_bytes(s.logical_bytes)),
        ("Unique size", f"{human_bytes(s.unique_bytes)} in {plural(s.chunks, 'chunk')}"
                        + (f" ({s.delta_chunks} stored as deltas)" if s.delta_chunks else "")),
        ("Stored size", f"{human_bytes(s.stored_bytes)} (+ {human_bytes(s.tree_stored_bytes)} in {plural(s.trees, 'tree')})"
                        + (f", with {plural(s.bases, 'delta base')} of older snapshots" if s.bases else "")),
        ("Dedup ratio", f"{s.dedup_ratio:.2f}x"),
        ("Compression ratio", f"{s.compression_ratio:.2f}x"),
        ("Packs", str(s.packs)),
    ]  # fmt: skip
    if s.repository_bytes is not None:
        rows.append(("Repository size", human_bytes(s.repository_bytes)))
    for label, value in rows:
        click.echo(f"  {label + ':':<19}{value}")


COMMANDS = [stats]
