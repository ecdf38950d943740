from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, tzinfo

import click

from casbackup.cli.cmd_prune import prune_option_decorators, run_prune
from casbackup.cli.config_support import load_cli_config, require_app
from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import emit_json, plural, printable, warn
from casbackup.errors import CasError, IntegrityError, UsageError
from casbackup.maintenance.forget import (
    ForgetGroup,
    ForgetPlan,
    Verdict,
    execute_forget,
    plan_forget,
    policy_from_retention,
)
from casbackup.maintenance.prune import PruneOptions
from casbackup.maintenance.retention import (
    GroupKey,
    RetentionPolicy,
    group_key,
    parse_duration,
)
from casbackup.plan_docs import forget_plan_doc
from casbackup.repo.repository import Repository
from casbackup.repo.snapshotstore import no_snapshot_of
from casbackup.timezones import in_zone
from casbackup.verify.records import list_records


def _policy_lookup(
    ctx: click.Context, flags: RetentionPolicy, app: str | None, use_all: bool
) -> Callable[[GroupKey], RetentionPolicy | None]:
    """GroupKey -> policy: the flags, or each application's retention from the config."""
    if use_all or (app is not None and flags.is_empty()):
        if use_all and not flags.is_empty():
            raise UsageError(
                "--all uses each application's retention from the config; drop the --keep-* options"
            )
        config = load_cli_config(
            global_options(ctx), required=True, why="it holds each application's retention"
        )
        assert config is not None
        if app is not None:
            require_app(config, app)
        else:
            # --all opens one repository: an application whose snapshots live in its own
            # would be passed over without a word, and its history would grow for ever.
            own = [a.name for a in config.applications
                   if a.repository is not None and not a.retention.is_empty]  # fmt: skip
            if own:
                raise UsageError(
                    f"{', '.join(own)} {'has its' if len(own) == 1 else 'have their'} own "
                    "repository in the config: forget with --app NAME for each of those"
                )
        policies = {a.name: policy_from_retention(a.retention) for a in config.applications
                    if not a.retention.is_empty}  # fmt: skip
        if app is not None and app not in policies:
            raise UsageError(
                f"application {app!r} has no retention in the config: give --keep-* options"
            )
        return lambda key: policies.get(key.app) if key.app is not None else None
    if flags.is_empty():
        raise UsageError(
            "no keep rule given, which would remove every snapshot: use --keep-last, --keep-daily, "
            "... or --all for the retention in the config"
        )
    return lambda key: flags


def _within_bucket_options(f: Callable[..., None]) -> Callable[..., None]:
    """--keep-within-hourly ... --keep-within-yearly DURATION (restic's names): the newest
    snapshot of each hour, day, ... within DURATION of the newest snapshot."""
    for bucket, unit in reversed(
        (("hourly", "hour"), ("daily", "day"), ("weekly", "week"), ("monthly", "month"),
         ("yearly", "year"))
    ):  # fmt: skip
        f = click.option(
            f"--keep-within-{bucket}", f"keep_within_{bucket}", metavar="DURATION",
            help=f"Keep the newest of each {unit} within DURATION of the newest.",
        )(f)  # fmt: skip
    return f


def _named_plan(repo: Repository, refs: tuple[str, ...], app: str | None) -> ForgetPlan:
    """The snapshots named on the command line, every one resolved before any is removed
    (a typo in the third id removes nothing). A record named by id that is damaged is
    removed too: no other command can, and prune refuses to run while it is there."""
    chosen = {}
    unreadable: dict[str, str] = {}
    for ref in refs:
        if ref == "latest":
            snap = repo.resolve_snapshot(ref, app=app)
        else:
            fid = repo.snapshot_id_of(ref)
            try:
                snap = repo.load_snapshot(fid)
            except IntegrityError as exc:  # not StorageError: unreadable is not damaged
                unreadable[fid] = str(exc)
                continue
        chosen[snap.id] = snap
    groups: dict[GroupKey, list[Verdict]] = {}
    for snap in sorted(chosen.values(), key=lambda s: s.datetime, reverse=True):
        groups.setdefault(group_key(snap), []).append(
            Verdict(snap, False, ("named on the command line",))
        )
    return ForgetPlan(
        tuple(ForgetGroup(k, None, tuple(v)) for k, v in groups.items()),
        tuple(sorted(unreadable.items())),
    )


def _render(plan: ForgetPlan, tz: tzinfo | None) -> None:
    """The plan, one line a snapshot. Times are shown in ``tz``, the zone retention counts
    days in (None: the machine's), with its abbreviation, so each time reads as the bucket
    its reason names, and the repeated hour of a fall-back change reads as two."""
    for group in plan.groups:
        kept = sum(v.keep for v in group.verdicts)
        click.echo(f"{printable(group.key)}: keep {kept}, remove {len(group.verdicts) - kept}")
        for v in group.verdicts:
            when = in_zone(v.snapshot.datetime, tz).strftime("%Y-%m-%d %H:%M %Z")
            word = "keep  " if v.keep else "remove"
            click.echo(f"  {word} {v.snapshot.short_id}  {when}  {', '.join(v.reasons)}")
    for sid, why in plan.unreadable:
        click.echo(f"unreadable snapshot {sid[:8]}: remove (named on the command line; {why})")


@click.command()
@click.argument("snapshot_refs", nargs=-1, metavar="[SNAPSHOT]...")
@click.option(
    "--app",
    help="Only this application's snapshots (its config retention unless --keep-* is given).",
)
@click.option(
    "--all", "use_all", is_flag=True, help="Apply each application's retention from the config."
)
@click.option(
    "--keep-last", type=click.IntRange(0), default=0, metavar="N", help="Keep the N newest."
)
@click.option(
    "--keep-hourly",
    type=click.IntRange(0),
    default=0,
    metavar="N",
    help="Keep the newest of N hours.",
)
@click.option(
    "--keep-daily",
    type=click.IntRange(0),
    default=0,
    metavar="N",
    help="Keep the newest of N days.",
)
@click.option(
    "--keep-weekly",
    type=click.IntRange(0),
    default=0,
    metavar="N",
    help="Keep the newest of N weeks.",
)
@click.option(
    "--keep-monthly",
    type=click.IntRange(0),
    default=0,
    metavar="N",
    help="Keep the newest of N months.",
)
@click.option(
    "--keep-yearly",
    type=click.IntRange(0),
    default=0,
    metavar="N",
    help="Keep the newest of N years.",
)
@click.option(
    "--keep-within",
    metavar="DURATION",
    help="Keep all within DURATION (e.g. 10d, 1y2m) of the newest.",
)
@_within_bucket_options
@click.option(
    "--keep-tag",
    "keep_tags",
    multiple=True,
    metavar="TAG",
    help="Keep snapshots with TAG (repeatable).",
)
@click.option("-n", "--dry-run", is_flag=True, help="Only show what would be removed.")
@click.option("--prune", "then_prune", is_flag=True, help="Run prune afterwards.")
@prune_option_decorators
@click.pass_context
@with_repository(lock="exclusive")
def forget(repo: Repository, ctx: click.Context, snapshot_refs: tuple[str, ...], app: str | None,
           use_all: bool, keep_last: int,
           keep_hourly: int, keep_daily: int, keep_weekly: int, keep_monthly: int, keep_yearly: int,
           keep_within: str | None, keep_tags: tuple[str, ...], dry_run: bool, then_prune: bool,
           max_unused: float, max_repack_size: int | None, **within: str | None) -> None:  # fmt: skip
    """Remove snapshots according to a retention policy (say why each is kept or removed),
    or the SNAPSHOTs named (ids, unique prefixes, or 'latest' with --app)."""
    opts = global_options(ctx)
    if use_all and app is not None:
        raise UsageError("give either --app or --all, not both")
    flags = RetentionPolicy(
        keep_last=keep_last, keep_hourly=keep_hourly, keep_daily=keep_daily, keep_weekly=keep_weekly,
        keep_monthly=keep_monthly, keep_yearly=keep_yearly,
        keep_within=parse_duration(keep_within) if keep_within else None, keep_tags=frozenset(keep_tags),
        **{name: parse_duration(value) if value else None for name, value in within.items()},
    )  # fmt: skip
    tz: tzinfo | None = None
    if snapshot_refs:
        if use_all or not flags.is_empty():
            raise UsageError("give either SNAPSHOT ids or a keep rule (--keep-*, --all), not both")
        plan = _named_plan(repo, snapshot_refs, app)
    else:
        tz = _zone(ctx)
        plan = _planned(ctx, repo, flags, app, use_all, tz)
    removed = [] if dry_run else execute_forget(repo, plan).removed
    if opts.json:
        emit_json({"message_type": "forget", "dry_run": dry_run, "groups": forget_plan_doc(plan),
                   "unreadable": [{"id": sid, "error": why} for sid, why in plan.unreadable],
                   "removed": removed})  # fmt: skip
    elif not opts.quiet:
        _render(plan, tz)
        if dry_run:
            count = len(plan.remove) + len(plan.unreadable)
            click.echo(f"dry run: would remove {plural(count, 'snapshot')}")
        else:
            click.echo(f"removed {plural(len(removed), 'snapshot')}")
    if then_prune:
        # A dry run forgot nothing: its prune plan counts the snapshots it would forget as
        # gone, or it would show a prune with nothing to gain (restic does the same).
        gone = frozenset(s.id for s in plan.remove) | {s for s, _ in plan.unreadable}
        gone = gone if dry_run else frozenset()
        options = PruneOptions(
            max_unused=max_unused, max_repack_size=max_repack_size, ignore_snapshots=gone
        )
        run_prune(ctx, repo, options, dry_run)


def _planned(
    ctx: click.Context,
    repo: Repository,
    flags: RetentionPolicy,
    app: str | None,
    use_all: bool,
    tz: tzinfo,
) -> ForgetPlan:
    """The plan of a retention policy: the flags', or the config's."""
    policy_for = _policy_lookup(ctx, flags, app, use_all)
    warnings: list[str] = []
    every = repo.list_snapshots(warnings=warnings)
    snaps = [s for s in every if app is None or s.app == app]
    if warnings:
        raise UsageError(
            f"{warnings[0]}; forget will not decide without every snapshot of a group "
            "('casbackup forget ID' removes a damaged one)"
        )
    if app is not None and not snaps:  # a typo in a nightly job must not pass unseen
        warn(no_snapshot_of(app, every))
    records = list_records(repo)
    for w in records.warnings:
        warn(w)
    verified = {sid for sid, r in records.latest_by_snapshot().items() if r.ok}
    return plan_forget(snaps, policy_for, datetime.now(UTC), verified=verified, tz=tz)


def _zone(ctx: click.Context) -> tzinfo:
    """Retention's calendar: the config's ``timezone``, else the machine's zone, resolved as
    ``casbackup serve`` resolves it (casbackup/timezones.py), so both count the same days."""
    from casbackup.timezones import zone

    try:
        config = load_cli_config(global_options(ctx))
    except CasError:  # a policy given in flags does not need the config: the machine's zone
        config = None
    return zone(config.timezone if config is not None else None)


COMMANDS = [forget]
