"""`casbackup db restore`: load a database dump from a snapshot into a database.

The dump streams from the repository straight into the engine's loader (no temporary file);
the engine refuses a non-empty target unless --overwrite. Where it goes is decided on this
machine only, never by the snapshot (whose stored definition anyone who can write the
repository with the key may have forged; it is shown in the error, never followed):
- no --into: the database as the config file defines it, i.e. back where it came from; with
  no such definition, --into is required;
- --into PATH for SQLite; --into postgresql://user@host:port/dbname or
  mysql://user@host:port/dbname (mariadb:// too; percent-encode odd names), with the engine's
  options as query parameters (?sslmode=require) over the config's, and ?password_env=VAR or
  ?password_file=F. A password in the URL is refused: it would sit in shell history and `ps`;
  so is an unknown parameter (a mistyped sslmode must not fall back to no TLS). The password
  comes from --db-password-env/--db-password-file, else the URL's, else the configured
  database's source, else the tools' own PGPASSWORD/MYSQL_PWD (never a source the snapshot
  names).
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import click

from casbackup.archiver.application import restore_companions
from casbackup.archiver.stream import ChunkReader
from casbackup.cli.config_support import load_cli_config
from casbackup.cli.context import global_options, with_repository
from casbackup.cli.render import emit_json, human_bytes, plural, warn
from casbackup.engines.base import (
    NOT_EMPTY_HINT,
    DatabaseSpec,
    canonical_engine_name,
    engine_options,
    get_engine,
)
from casbackup.errors import DatabaseError, FormatError, NotFound, UsageError
from casbackup.repo.repository import Repository
from casbackup.verify.dumps import (
    definition_specs,
    record_problem,
    stored_location,
    tree_path_parts,
)

_SCHEMES = {
    "postgresql": "postgresql",
    "postgres": "postgresql",
    "mysql": "mysql",
    "mariadb": "mysql",
}


@click.group(name="db")
def db_group() -> None:
    """Database dumps stored in snapshots."""


@db_group.command(name="restore")
@click.argument("snapshot")
@click.option("--app", required=True, help="The application the database belongs to.")
@click.option("--database", "db_name", required=True, help="The database's name in the config.")
@click.option(
    "--into", help="SQLite path, or postgresql://user@host:port/db, mysql://user@host:port/db."
)
@click.option("--overwrite", is_flag=True, help="Replace a database that is not empty.")
@click.option(
    "--db-password-env", metavar="VAR", help="Environment variable with the password for --into."
)
@click.option("--db-password-file", metavar="FILE", help="File with the password for --into.")
@click.option(
    "--no-globals", is_flag=True,
    help="Do not create the roles (PostgreSQL) or accounts (MariaDB) kept with the dump "
    "(they must exist already).",
)  # fmt: skip
@click.pass_context
@with_repository(lock="shared")
def restore(repo: Repository, ctx: click.Context, snapshot: str, app: str, db_name: str, into: str | None,
            overwrite: bool, db_password_env: str | None, db_password_file: str | None,
            no_globals: bool) -> None:  # fmt: skip
    """Load database DATABASE of application APP from SNAPSHOT ('latest', an id or a prefix).

    MariaDB: the accounts kept with the dump (options.globals) that the server lacks are
    created first with their grants (existing ones are left as they are). PostgreSQL: the
    roles kept with the dump (options.globals) that the server lacks are
    created first (existing ones are left as they are); privileges that still cannot be
    granted are warnings naming each, and the data loads. A pg_restore older than the
    pg_dump that made the dump is a warning, as is an older MariaDB/MySQL client."""
    opts = global_options(ctx)
    snap = repo.resolve_snapshot(snapshot, app=app)
    if snap.app != app:
        raise NotFound(
            f"snapshot {snap.short_id} belongs to {snap.app or 'no application'}, not {app}"
        )
    record = next((d for d in snap.databases if d.name == db_name), None)
    if record is None:
        have = ", ".join(str(d.name) for d in snap.databases) or "none"
        raise NotFound(f"snapshot {snap.short_id} has no database {db_name!r} (it has: {have})")
    malformed = record_problem(record)
    if malformed is not None:
        raise FormatError(f"snapshot {snap.short_id}: {malformed}")
    tree_path_parts(record.path)  # a stored path with `..` names nothing in the tree: refused
    node = repo.find_node(snap.root, record.path)
    if node is None or not node.content and node.size:
        raise NotFound(f"snapshot {snap.short_id} records {record.path} but its tree lacks it")
    engine_name = canonical_engine_name(record.engine)
    configured = _configured_spec(opts, app, db_name, engine_name)
    if into:
        spec = _target_spec(into, configured or DatabaseSpec(name=db_name, engine=engine_name),
                            db_name, engine_name)  # fmt: skip
    elif configured is not None:
        spec = configured
    else:
        stored = stored_location(definition_specs(snap.app_definition).get(db_name))
        raise UsageError(
            f"the config does not define database {db_name!r} of application {app!r}: say where "
            f"it goes with --into (the snapshot says it lived at {stored}; a snapshot never "
            "chooses where casbackup writes or connects)"
        )
    if db_password_env or db_password_file:
        spec = replace(spec, password_env=db_password_env, password_file=db_password_file)
    holds_content = getattr(get_engine(engine_name), "holds_content", None)
    if not overwrite and holds_content is not None and holds_content(spec):
        # Refused before the roles/accounts are created: a restore that loads nothing
        # leaves the server as it was (the engine's own refusal came after them).
        raise DatabaseError(
            f"database {db_name!r}: {spec.database or spec.path} already exists and is not "
            f"empty ({NOT_EMPTY_HINT})"
        )
    notes: list[str] = []
    if not no_globals:
        notes, globals_warnings = restore_companions(repo, snap, record, spec)
        for w in globals_warnings:
            warn(w)
        if not opts.json:
            for line in notes:
                click.echo(line, err=True)
    reader = ChunkReader.for_node(repo, node, name=f"{record.path} in snapshot {snap.short_id}")
    with reader:
        # Only when recorded: an engine plugin written before properties existed still works.
        extra = {"properties": record.properties} if record.properties else {}
        info = get_engine(engine_name).restore(spec, reader, overwrite=overwrite, **extra)
    for w in info.warnings:
        warn(w)
    mismatch = {t for t in {*record.row_counts, *info.row_counts}
                if record.row_counts.get(t) != info.row_counts.get(t)}  # fmt: skip
    if mismatch:
        warn(
            f"row counts differ from the backup's in {plural(len(mismatch), 'table')}: {', '.join(sorted(mismatch)[:5])}"
        )
    if opts.json:
        emit_json({"message_type": "db_restore", "snapshot_id": snap.id, "app": app, "database": db_name,
                   "engine": engine_name, "target": info.target, "bytes": info.bytes_read,
                   "row_counts": info.row_counts, "expected_row_counts": record.row_counts,
                   "row_counts_match": not mismatch, "globals": notes,
                   "warnings": list(info.warnings)})  # fmt: skip
        return
    rows = sum(info.row_counts.values())
    click.echo(
        f"restored database {db_name} ({engine_name}) from snapshot {snap.short_id} into {info.target}: "
        f"{human_bytes(info.bytes_read)}, {plural(len(info.row_counts), 'table')}, {plural(rows, 'row')}"
    )


def _configured_spec(opts: Any, app: str, name: str, engine: str) -> DatabaseSpec | None:
    """The database as the local config defines it; None when it does not."""
    config = load_cli_config(opts)
    app_config = config.app(app) if config else None
    if app_config is not None:
        for spec in app_config.databases:
            if spec.name == name and canonical_engine_name(spec.engine) == engine:
                return spec
    return None


def _target_spec(into: str, base: DatabaseSpec, name: str, engine: str) -> DatabaseSpec:
    if engine == "sqlite":
        if "://" in into:
            raise UsageError("--into: a SQLite database is restored into a file path, not a URL")
        return DatabaseSpec(
            name=name, engine=engine, path=os.path.abspath(into), options=base.options
        )
    url = urlsplit(into)
    if url.password is not None:
        raise UsageError(
            "--into must not contain a password (it would be visible in ps and shell history): "
            "use --db-password-env or --db-password-file"
        )
    scheme = _SCHEMES.get(url.scheme.lower())
    if scheme is None or "://" not in into:
        raise UsageError(f"--into: give {engine}://user@host:port/dbname for a {engine} database")
    if scheme != engine:
        raise UsageError(f"--into: this dump is {engine}, it cannot be loaded into {url.scheme}")
    database = unquote(url.path.lstrip("/"))
    if not database or "/" in database:
        raise UsageError(
            f"--into: name one database after the host: {engine}://user@host:port/dbname"
        )
    try:
        port = url.port
    except ValueError:
        raise UsageError(f"--into: bad port in {into!r}") from None
    query = dict(parse_qsl(url.query, keep_blank_values=True))
    password_env, password_file = query.pop("password_env", None), query.pop("password_file", None)
    if "password" in query:
        raise UsageError("--into: never put a password on the command line (ps, shell history): "
                         "use ?password_env=VAR, --db-password-env or --db-password-file")  # fmt: skip
    known = engine_options(engine) or frozenset()
    unknown = sorted(k for k in query if k not in known)
    if unknown:
        raise UsageError(f"--into: unknown parameter {unknown[0]!r} for {engine} (known: "
                         f"password_env, password_file, {', '.join(sorted(known))})")  # fmt: skip
    if password_env or password_file:
        base = replace(base, password_env=password_env, password_file=password_file)
    return DatabaseSpec(
        name=name, engine=engine, host=url.hostname or base.host, port=port or (None if url.hostname else base.port),
        user=unquote(url.username) if url.username else base.user, database=database,
        password_env=base.password_env, password_file=base.password_file,
        options={**base.options, **query},
    )  # fmt: skip


COMMANDS = [db_group]
