from __future__ import annotations

import re
from datetime import datetime

import click

from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import emit_json, human_bytes, plural, printable, reporter_for, warn
from casbackup.errors import CheckFailed, StorageError
from casbackup.repo.repository import Repository
from casbackup.verify.check import CheckOptions, Subset
from casbackup.verify.check import check as run_check


@click.command()
@click.option("--read-data", is_flag=True, help="Read, decrypt and re-hash every stored byte.")
@click.option(
    "--read-data-subset",
    metavar="N%|n/t|SIZE",
    help="Read only part of the data: a percentage, bucket n of t, or a byte size.",
)
@click.option(
    "--max-duration",
    metavar="DURATION",
    callback=lambda ctx, param, value: parse_seconds(value) if value else None,
    help="Read data for at most DURATION (e.g. 600, 30min, 2h), least recently verified packs first.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Processes reading packs with --read-data (1: least memory, one core).",
)
@click.pass_context
@with_repository(lock="shared", reads_only=True)  # its check-state note is optional
def check(
    repo: Repository,
    ctx: click.Context,
    read_data: bool,
    read_data_subset: str | None,
    max_duration: float | None,
    workers: int,
) -> None:
    """Check the repository's structure and, optionally, its data."""
    opts = global_options(ctx)
    subset = Subset.parse(read_data_subset) if read_data_subset else None
    reporter = reporter_for(ctx)
    options = CheckOptions(
        read_data=read_data or subset is not None or max_duration is not None,
        subset=subset,
        max_duration=max_duration,
        workers=workers,
    )
    try:
        report = run_check(repo, options, reporter)
    finally:
        reporter.done()
    if opts.json:
        emit_json({
            "message_type": "check", "ok": report.ok, "errors": report.errors, "warnings": report.warnings,
            "damaged_packs": sorted(report.damaged_packs), "affected": report.affected,
            "repairable_packs": report.repairable_packs,
            "snapshots": report.snapshots, "trees": report.trees, "blobs": report.blobs, "packs": report.packs,
            "storage_errors": report.storage_errors, "packs_read": report.packs_read, "bytes_read": report.bytes_read,
            "packs_never_verified": report.packs_never_verified, "oldest_verified": report.oldest_verified,
            "alerts": list(repo.alerts),  # rollback warnings (also printed on stderr)
        })  # fmt: skip
    else:
        for w in report.warnings:
            warn(w)
        for e in report.errors:
            click.echo(f"error: {printable(e)}", err=True)
        # Only storage errors: what they cover was not read, not found damaged.
        what = "damaged" if report.damaged else "unreadable"
        for snap_id, paths in report.affected.items():
            click.echo(
                f"snapshot {snap_id[:8]}: {plural(len(paths), f'{what} file or folder', f'{what} files or folders')}:",
                err=True,
            )
            for p in paths[:50]:
                click.echo(f"  {printable(p)}", err=True)
            if len(paths) > 50:
                click.echo(f"  ... and {len(paths) - 50} more", err=True)
        if report.repairable_packs:
            ids = " ".join(p[:12] for p in report.repairable_packs)
            click.echo(
                "to keep the intact blobs of the damaged packs and let the next backup store "
                f"the damaged ones again: casbackup repair packs {ids}",
                err=True,
            )
        elif report.affected and report.damaged:
            click.echo(
                "what these need is not in the repository: a backup stores again what the "
                "sources still hold; then 'casbackup repair snapshots' leaves out the rest "
                "(so that check passes and prune can run)",
                err=True,
            )
        read = (
            f", read {plural(report.packs_read, 'pack')} ({human_bytes(report.bytes_read)})"
            if report.packs_read
            else ""
        )
        click.echo(
            f"checked {plural(report.snapshots, 'snapshot')}, {plural(report.trees, 'tree')}, {plural(report.blobs, 'blob')} in {plural(report.packs, 'pack')}{read}"
        )
        if max_duration is not None and report.packs_never_verified is not None:
            oldest = (
                datetime.fromtimestamp(report.oldest_verified).strftime("%Y-%m-%d %H:%M")
                if report.oldest_verified is not None
                else "never"
            )
            click.echo(
                f"{plural(report.packs_never_verified, 'pack')} not verified yet; oldest verification: {oldest}"
            )
    if not report.ok and not report.damaged:  # only storage errors: fix the storage first
        raise StorageError(
            f"the repository could not be fully read: {plural(len(report.errors), 'storage error')} "
            "(see above), no damage found in what was read"
        )
    if not report.ok:
        raise CheckFailed(f"the repository has {plural(len(report.errors), 'problem')} (see above)")
    if not opts.json:
        click.echo("no errors were found")


def parse_seconds(text: str) -> float:
    # "m" is minutes here, as restic and borg users type it: a check lasting months is no use.
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|sec|m|min|h|d)?\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise click.BadParameter(
            f"{text!r}: use seconds or a number with s, m/min, h or d (e.g. 30m)"
        )
    return (
        float(m.group(1))
        * {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}[m.group(2)]
    )


COMMANDS = [check]
