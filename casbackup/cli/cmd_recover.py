"""`casbackup recover`: rebuild an application from its newest verified snapshot."""

from __future__ import annotations

from collections.abc import Callable

import click

from casbackup.cli.config_support import load_cli_config
from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import emit_json, human_bytes, plural, printable, reporter_for
from casbackup.errors import RecoveryError
from casbackup.plan_docs import recovery_plan_doc
from casbackup.recovery.connection import split_assignment
from casbackup.recovery.execute import RecoveryResult, recover, report_base
from casbackup.recovery.layout import IN_PLACE
from casbackup.recovery.plan import RecoverOptions, RecoveryPlan
from casbackup.repo.repository import Repository


def print_plan(
    plan: RecoveryPlan,
    overwrite_databases: bool = False,
    report: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> None:
    """The plan, one line per part; ``overwrite_databases``: --overwrite-databases was
    given (else an SQLite database replaces only a copy restored with the files);
    ``report``: where the report will go (FILE, for FILE.json and FILE.md); ``warn``: what
    the warnings go through (a real run: the reporter, on stderr), else they are lines of
    the plan."""
    snap, record = plan.snapshot, plan.verification
    state = "verified" if record and record.ok else "NOT verified"
    click.echo(
        f"recover {plan.app!r} from snapshot {snap.short_id} ({snap.time[:19]} UTC, {state})"
    )
    for f in plan.files:
        left = (
            f", restored by the run started {f.done_by[:19]} UTC: left as it is"
            if f.done_by
            else ""
        )
        click.echo(
            printable(
                f"  files  {f.source} -> {f.target}  ({plural(f.files, 'file')}, {human_bytes(f.bytes)}{left})"
            )
        )
    for d in plan.databases:
        mode = (
            f", loaded by the run started {d.done_by[:19]} UTC: left as it is"
            if d.done_by
            else ", over any copy restored with the files"
            if d.overwrite and d.spec.engine == "sqlite" and not (overwrite_databases or d.resumed)
            else ", replacing what is there"
            if d.overwrite
            else ""
        )
        click.echo(f"  db     {d.record.name} ({d.spec.engine}, dump {human_bytes(d.record.size)}, "
                   f"{plural(len(d.record.row_counts), 'table')}) -> {d.where}{mode}")  # fmt: skip
        if d.stored != d.where:
            click.echo(
                printable(f"         (the snapshot says it lived at {d.stored}: shown, not used)")
            )
    for w in plan.warnings:
        if warn is not None:
            warn(w)
        else:
            click.echo(f"  warning: {printable(w)}")
    for p in plan.problems:
        click.echo(f"  problem: {printable(p)}")
    if plan.fallback:
        click.echo(f"  advice: {printable(plan.fallback)}")
    if report:
        click.echo(printable(f"  report {report}.json and {report}.md"))
    click.echo(f"  total {human_bytes(plan.bytes_total)}")


def print_result(result: RecoveryResult) -> None:
    doc = result.report or {}
    for f in doc.get("files", []):
        if f.get("left_as_is"):
            click.echo(printable(f"left {f['target']} as it is: {f['left_as_is'].split(';')[0]}"))
            continue
        state = "ok" if not f["errors"] else f"{plural(len(f['errors']), 'error')}"
        click.echo(printable(f"restored {f['source']} -> {f['target']}: {plural(f['files'], 'file')}, "
                   f"{human_bytes(f['bytes'])} ({state})"))  # fmt: skip
    for d in doc.get("databases", []):
        state = "ok" if d["ok"] else f"FAILED: {d['error']}"
        if d.get("left_as_is"):
            click.echo(f"left database {d['name']} in {d['target']} as it is: "
                       f"{d['left_as_is'].split(';')[0]} ({state})")  # fmt: skip
            continue
        if d.get("loaded") is False:  # refused or failed: the database is as it was
            click.echo(f"did not load database {d['name']} into {d['target']} ({state})")
            continue
        click.echo(f"loaded database {d['name']} into {d['target']}: "
                   f"{plural(sum(d['row_counts'].values()), 'row')} in {plural(len(d['row_counts']), 'table')} ({state})")  # fmt: skip
    for e in result.errors:
        click.echo(f"error: {printable(e)}", err=True)
    if result.report_files:
        click.echo(f"report: {result.report_files[0]} and {result.report_files[1]}")


@click.command(name="recover")
@click.option("--app", required=True, help="The application to recover.")
@click.option(
    "--target",
    metavar="DIR",
    help="Put each source at DIR/<its path> (e.g. "
    "DIR/etc/myapp), the databases as the config says.",
)
@click.option(
    "--in-place",
    is_flag=True,
    help="Put each source back at its own path (the target /): only the sources the config lists.",
)
@click.option("--snapshot", metavar="ID", help="This snapshot (id, prefix or 'latest') instead "
              "of the newest verified one.")  # fmt: skip
@click.option("--databases/--no-databases", default=True, help="Load the databases (default).")
@click.option("--db-into", "db_into", multiple=True, metavar="NAME=CONNECTION",
              help="Load database NAME here: a URL (postgresql://user@host:port/db"
              "?password_env=VAR), a database name on the config's server, or an SQLite path. "
              "Needed for a server database the config does not define.")  # fmt: skip
@click.option("--overwrite-databases", is_flag=True, help="Replace non-empty target databases.")
@click.option(
    "--no-globals", is_flag=True,
    help="Do not create the roles (PostgreSQL) or accounts (MariaDB) kept with the dumps "
    "(they must exist already).",
)  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option(
    "--allow-unverified", is_flag=True, help="Accept a snapshot without a passing verification."
)
@click.option(
    "--report", metavar="FILE", help="Write FILE.json and FILE.md (default: in the target)."
)
@click.pass_context
@with_repository(lock="shared", reads_only=True)
def recover_cmd(
    repo: Repository, ctx: click.Context, app: str, target: str | None, in_place: bool,
    snapshot: str | None,
    databases: bool, db_into: tuple[str, ...], overwrite_databases: bool, no_globals: bool,
    dry_run: bool,
    allow_unverified: bool, report: str | None,
) -> None:  # fmt: skip
    """Rebuild an application's files and databases from the repository alone.

    Uses the newest snapshot whose verification passed, prints the plan, re-checks its data,
    restores each source folder to TARGET/<its path> (--in-place: to its path), each SQLite
    database where its path leads and each server database to the server the config file
    (or --db-into) names. What the snapshot stores about servers and passwords is shown,
    never used.
    """
    if target is None and not in_place:
        raise click.UsageError("give either --target DIR or --in-place")
    if in_place and target is not None:
        raise click.UsageError("--in-place and --target exclude each other")
    target = target if target is not None else IN_PLACE
    opts = global_options(ctx)
    config = load_cli_config(opts)
    app_config = config.app(app) if config is not None else None
    options = RecoverOptions(
        app=app, target=target, snapshot=snapshot, databases=databases,
        db_into=dict(split_assignment(v) for v in db_into),
        configured={d.name: d for d in app_config.databases} if app_config else {},
        configured_sources=tuple(app_config.sources) if app_config else (),
        overwrite_databases=overwrite_databases, globals=not no_globals, dry_run=dry_run,
        allow_unverified=allow_unverified, report=report,
    )  # fmt: skip
    reporter = reporter_for(ctx)
    shown: list[RecoveryPlan] = []

    def planned(plan: RecoveryPlan) -> None:
        # Before anything is touched: where each source and database goes.
        shown.append(plan)
        if not (opts.json or opts.quiet):
            print_plan(plan, overwrite_databases, report_base(options), reporter.warning)

    try:
        result = recover(repo, options, reporter, planned)
    finally:
        reporter.done()
    if dry_run:
        if opts.json:
            emit_json({"message_type": "recover_plan", **recovery_plan_doc(result.plan)})
        else:
            print_plan(result.plan, overwrite_databases)
            unasked = [d.record.name for d in result.plan.databases
                       if d.spec.engine != "sqlite" and not d.overwrite]  # fmt: skip
            if unasked:
                # A dry run connects to no server (plan.py): the real run may still refuse.
                click.echo(
                    f"  not checked: whether {', '.join(unasked)} already "
                    f"{'holds' if len(unasked) == 1 else 'hold'} data on the server (the "
                    "recovery refuses a database that does, unless --overwrite-databases)"
                )
            click.echo("dry run: nothing was changed")
        if result.plan.problems:  # the real run would refuse to start: say so in the exit code
            raise RecoveryError(
                f"the recovery cannot run as planned: {plural(len(result.plan.problems), 'problem')} (see above)"
            )
        return
    if opts.json:
        emit_json({"message_type": "recover", **(result.report or {}),
                   "report_files": list(result.report_files or ())})  # fmt: skip
    else:
        # The report's warnings: the plan's and those of the run itself (an owner role the
        # server lacks, an attribute the target refused), which used to be in the report only.
        # Those of the plan were printed with it.
        said = set(result.plan.warnings) if shown and not opts.quiet else set()
        for w in (result.report or {}).get("warnings", result.plan.warnings):
            if w not in said:
                reporter.warning(w)
        print_result(result)
    result.raise_if_failed()


COMMANDS = [recover_cmd]
