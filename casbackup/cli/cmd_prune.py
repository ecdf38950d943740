from __future__ import annotations

import re

import click

from casbackup import units
from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import emit_json, human_bytes, plural, reporter_for, warn
from casbackup.maintenance.prune import (
    UNINDEXED_MARGIN_S,
    PruneOptions,
    PrunePlan,
    PruneResult,
    execute_prune,
    plan_prune,
)
from casbackup.plan_docs import prune_plan_doc
from casbackup.repo.repository import Repository


def parse_size(text: str) -> int:
    """``units.parse_size`` as a click option's error."""
    try:
        return units.parse_size(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def parse_share(text: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*%?\s*", text)
    if not m or not 0 <= float(m.group(1)) <= 100:
        raise click.BadParameter(f"{text!r} is not a percentage from 0 to 100 (e.g. 5%)")
    return float(m.group(1)) / 100


def _share_option(ctx: click.Context, param: click.Parameter, value: str) -> float:
    return parse_share(value)


def _size_option(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    return parse_size(value) if value is not None else None


def prune_option_decorators(fn):  # type: ignore[no-untyped-def]
    """--max-unused and --max-repack-size, shared with ``forget --prune``."""
    fn = click.option(
        "--max-repack-size",
        metavar="SIZE",
        callback=_size_option,
        help="Repack at most this many bytes of packs (e.g. 2G).",
    )(fn)
    return click.option("--max-unused", default="5%", show_default=True, metavar="PERCENT",
                        callback=_share_option,
                        help="Repack a pack when more than this share of it is unused.")(fn)  # fmt: skip


def _packs(n: int) -> str:
    """A right-aligned count for the plan's table: '     1 pack ', '    12 packs'."""
    return f"{n:6} {'pack' if n == 1 else 'packs'}"


def freed_range(plan: PrunePlan, pack_size: int) -> tuple[int, int]:
    """(at least, at most) bytes the repository shrinks by.

    The plan's own estimate counts the new headers and index uncompressed (each capped at
    what it replaces), so it is a lower bound, never below zero. At most, everything deleted
    goes and the rewritten data takes no new room.
    """
    upper = plan.bytes_deleted + (
        sum(s for _, s in plan.old_index_files) if plan.rewrite_index else 0
    )
    return plan.bytes_freed(pack_size), upper


def render_plan(plan: PrunePlan, pack_size: int) -> None:
    uses = "uses" if plan.snapshots == 1 else "use"
    click.echo(f"{plural(plan.snapshots, 'snapshot')} {uses} {plural(plan.used_blobs, 'blob')}")
    click.echo(f"{plural(plan.packs_total, 'pack')}, {human_bytes(plan.bytes_total)}:")
    click.echo(
        f"  keep   {_packs(len(plan.keep))} ({human_bytes(plan.unused_bytes_kept)} unused in them)"
    )
    click.echo(
        f"  repack {_packs(len(plan.repack))} ({human_bytes(sum(u.size for u in plan.repack))}, "
        f"rewriting {human_bytes(plan.bytes_rewritten)} in {plural(plan.blobs_rewritten, 'blob')})"
    )
    click.echo(
        f"  delete {_packs(len(plan.delete))} ({human_bytes(sum(u.size for u in plan.delete))}) no longer used"
    )
    if plan.unindexed or plan.unindexed_young:
        click.echo(
            f"  delete {_packs(len(plan.unindexed))} left by interrupted runs "
            f"({human_bytes(sum(s for _, s in plan.unindexed))}); "
            f"{plural(plan.unindexed_young, 'recent one')} kept until "
            f"{_margin()} old"
        )
    if plan.missing_packs:
        warn(
            f"{plural(len(plan.missing_packs), 'pack')} named by the index are missing; no snapshot needs them"
        )
    if plan.duplicate_blobs:
        click.echo(f"{plural(plan.duplicate_blobs, 'blob')} stored twice; one copy of each goes")
    if plan.rewrite_index:
        click.echo(
            f"index: {plural(len(plan.old_index_files), 'file')} replaced by {plan.new_index_files}"
        )
    if plan.temp_files:
        click.echo(f"{plural(len(plan.temp_files), 'stale temp file')}")
    low, high = freed_range(plan, pack_size)
    if human_bytes(low) == human_bytes(high):
        click.echo(f"space to free: {human_bytes(high)}")
    else:
        click.echo(f"space to free: {human_bytes(low)} to {human_bytes(high)}")
    # fmt: skip


def _margin() -> str:
    hours = UNINDEXED_MARGIN_S / 3600
    return "an hour" if hours == 1 else f"{hours:g} hours"


def render_result(result: PruneResult) -> None:
    for w in result.warnings:
        warn(w)
    click.echo(
        f"wrote {plural(len(result.packs_written), 'pack')} ({human_bytes(result.bytes_written)}), deleted "
        f"{plural(result.packs_deleted, 'pack')} ({human_bytes(result.bytes_deleted)}) and "
        f"{plural(result.index_files_deleted, 'index file')}"
    )


def run_prune(ctx: click.Context, repo: Repository, options: PruneOptions, dry_run: bool) -> None:
    """Plan, show, execute: shared with ``forget --prune``."""
    opts = global_options(ctx)
    reporter = reporter_for(ctx)
    try:
        plan = plan_prune(repo, options, reporter)
        reporter.done()
        if not opts.json and not opts.quiet:
            render_plan(plan, repo.config.pack_size)
        result = None
        if not dry_run and not plan.empty:
            result = execute_prune(repo, plan, options, reporter)
    finally:
        reporter.done()
    if opts.json:
        doc = {
            "message_type": "prune",
            "dry_run": dry_run,
            **prune_plan_doc(plan, repo.config.pack_size),
        }
        if result is not None:
            doc["result"] = {**result.__dict__, "packs_written": len(result.packs_written)}
        emit_json(doc)
    elif dry_run:
        click.echo("dry run: nothing was changed")
    elif result is None:
        click.echo("nothing to prune")
    else:
        render_result(result)


@click.command()
@prune_option_decorators
@click.option("-n", "--dry-run", is_flag=True, help="Only show what would be done.")
@click.pass_context
@with_repository(lock="exclusive")
def prune(repo: Repository, ctx: click.Context, max_unused: float, max_repack_size: int | None,
          dry_run: bool) -> None:  # fmt: skip
    """Remove data no snapshot needs; repack partly used packs."""
    options = PruneOptions(max_unused=max_unused, max_repack_size=max_repack_size)
    run_prune(ctx, repo, options, dry_run)


COMMANDS = [prune]
