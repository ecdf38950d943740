"""`casbackup verify`: restore a snapshot into a sandbox and prove it; record the result."""

from __future__ import annotations

import click

from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import emit_json, human_bytes, plural, printable, reporter_for
from casbackup.engines.base import DatabaseSpec, canonical_engine_name
from casbackup.errors import UsageError
from casbackup.recovery.connection import connection_spec, split_assignment
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.verify.sandbox import VerifyOptions, run_verification


def _pick(repo: Repository, ref: str | None, app: str | None, latest: bool) -> Snapshot:
    if ref and latest:
        raise UsageError("give a SNAPSHOT or --latest, not both")
    if not ref and not app and not latest:
        raise UsageError("name a SNAPSHOT, or use --app NAME (its newest snapshot) or --latest")
    snap = repo.resolve_snapshot(ref or "latest", app=app)
    if app and snap.app != app:
        raise UsageError(f"snapshot {snap.short_id} is not a snapshot of application {app!r}")
    return snap


def _servers(values: tuple[str, ...]) -> dict[str, DatabaseSpec]:
    out = {}
    for value in values:
        engine, url = split_assignment(value, "--db-server", "ENGINE=URL")
        engine = canonical_engine_name(engine)
        out[engine] = connection_spec(
            "scratch", engine, url, None, option="--db-server", need_database=False
        )
    return out


@click.command()
@click.argument("snapshot", required=False)
@click.option("--app", help="Verify a snapshot of this application (its newest by default).")
@click.option("--latest", is_flag=True, help="The newest snapshot (of --app, if given).")
@click.option("--sandbox", metavar="DIR", help="Make the private sandbox inside DIR.")
@click.option("--keep-sandbox", is_flag=True, help="Leave the restored sandbox for inspection.")
@click.option("--db-server", "db_servers", multiple=True, metavar="ENGINE=URL",
              help="Server for scratch databases, e.g. postgresql://postgres@127.0.0.1:5432 "
              "(default: the database's server in the config file; never one a snapshot "
              "names).")  # fmt: skip
@click.pass_context
@with_repository(lock="shared", writes=True)
def verify(
    repo: Repository, ctx: click.Context, snapshot: str | None, app: str | None, latest: bool,
    sandbox: str | None, keep_sandbox: bool, db_servers: tuple[str, ...],
) -> None:  # fmt: skip
    """Restore a snapshot into a sandbox, re-hash every file, load every database dump.

    The result is stored in the repository; `snapshots` shows it and `recover` relies on it.
    Exits 28 when anything did not match, naming every bad file and dump.
    """
    opts = global_options(ctx)
    servers = _servers(db_servers)
    snap = _pick(repo, snapshot, app, latest)
    from casbackup.cli.config_support import load_cli_config

    options = VerifyOptions.from_config(
        load_cli_config(opts), snap.app, sandbox_dir=sandbox, keep_sandbox=keep_sandbox,
        db_servers=servers,
    )  # fmt: skip
    reporter = reporter_for(ctx)
    try:
        result = run_verification(repo, snap, options, reporter)
    finally:
        reporter.done()
    record = result.record
    if opts.json:
        emit_json({"message_type": "verify", **record.to_dict(), "sandbox": result.sandbox})
    else:
        for w in record.warnings:
            reporter.warning(w)
        for f in record.failures:
            click.echo(printable(f"FAILED {f.path}: {f.problem}"), err=True)
        for d in record.databases:
            state = "ok" if d.ok else "FAILED"
            click.echo(f"database {d.name} ({d.engine}): {state}, {plural(d.tables_compared, 'table')}, "
                       f"{plural(d.rows_compared, 'row')} compared")  # fmt: skip
        if result.sandbox:
            click.echo(f"sandbox kept at {result.sandbox}")
        verdict = (
            "verified OK"
            if record.ok
            else f"FAILED verification ({plural(len(record.failures), 'problem')})"
        )
        click.echo(
            f"snapshot {snap.short_id}: {verdict}: {plural(record.files_checked, 'file')}, "
            f"{human_bytes(record.bytes_checked)}, {plural(len(record.databases), 'database')} "
            f"in {record.duration_s:.1f}s (record {record.id[:8]})"
        )
    result.raise_if_failed()


COMMANDS = [verify]
