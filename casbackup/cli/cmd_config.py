"""`casbackup config check`: the resolved configuration, secrets masked, or the precise error."""

from __future__ import annotations

import os
from typing import Any

import click

from casbackup.cli.config_support import load_cli_config
from casbackup.cli.context import global_options
from casbackup.cli.render import emit_json, human_bytes, plural, warn
from casbackup.config import describe


@click.group(name="config")
def config_group() -> None:
    """Inspect the configuration file."""


@config_group.command(name="check")
@click.pass_context
def check(ctx: click.Context) -> None:
    """Validate the config file and show it as casbackup understands it (exit 2 if invalid)."""
    opts = global_options(ctx)
    config = load_cli_config(opts, required=True)
    assert config is not None
    _check_patterns(config)
    doc = describe(config)
    for line in _missing_paths(config):
        warn(line)
    if opts.json:
        emit_json(doc)
        return
    click.echo(f"config: {doc['source']} ({doc['layout']})")
    repo = doc["repository"]
    click.echo(f"repository: {repo['location'] or '(not set: give -r or CASBACKUP_REPO)'}")
    click.echo(f"  password: {_secret(repo['password'])}")
    for app in doc["applications"]:
        click.echo(
            f"application {app['name']}" + (f": {app['description']}" if app["description"] else "")
        )
        click.echo(f"  sources: {', '.join(app['sources'])}")
        if app["excludes"]:
            click.echo(f"  excludes: {', '.join(app['excludes'])}")
        click.echo(
            f"  default type: {app['default_backup_type']}; schedule: {app['schedule'] or '-'}"
        )
        for db in app["databases"]:
            click.echo(f"  database {db['name']} ({db['engine']}): {_where(db)}")
        if app["delta_files"]:
            click.echo(
                f"  changed files of {human_bytes(app['delta_files'])} or more: stored as deltas"
            )
        rules = {k: v for k, v in app["retention"].items() if v}
        click.echo(f"  retention: {', '.join(f'{k}={v}' for k, v in rules.items()) or 'keep all'}")
        required = app["verification"]["required_files"]
        if required:
            click.echo(f"  required files: {', '.join(required)}")
    for warning in doc["warnings"]:
        warn(warning)
    click.echo(f"config OK: {plural(len(doc['applications']), 'application')}")


def _check_patterns(config: Any) -> None:
    """Raise ConfigError naming every exclude pattern a backup would refuse (file and key;
    the config package cannot compile them: the patterns are the archiver's)."""
    from casbackup.archiver.excludes import Excluder
    from casbackup.config.fields import Ctx
    from casbackup.errors import UsageError

    if config.source is None:
        return
    ctx = Ctx(config.source)
    for i, app in enumerate(config.applications):
        for j, pattern in enumerate(app.excludes):
            try:
                Excluder([pattern])
            except UsageError as exc:
                ctx.problems.append(ctx.error(f"applications[{i}].excludes[{j}]", str(exc)))
    ctx.raise_problems()


def _missing_paths(config: Any) -> list[str]:
    """A warning per source or SQLite file that does not exist on this machine: valid in the
    file (it may be checked on another host), but each backup of it would fail."""
    out = []
    for i, app in enumerate(config.applications):
        for j, source in enumerate(app.sources):
            if not os.path.lexists(source):
                out.append(f"applications[{i}].sources[{j}]: {source} does not exist here")
        for j, db in enumerate(app.databases):
            if db.path and not os.path.lexists(db.path):
                out.append(f"applications[{i}].databases[{j}].path: {db.path} does not exist here")
    return out


def _secret(source: Any) -> str:
    if not source:
        return "none configured (CASBACKUP_PASSWORD, --password-file or a prompt)"
    if "env" in source:
        return f"environment variable {source['env']} ({'set' if source['present'] else 'NOT SET'})"
    if "file" in source:
        return f"file {source['file']} ({'readable' if source['present'] else 'NOT READABLE'})"
    return f"command {source['command']}"


def _where(db: dict[str, Any]) -> str:
    if db.get("path"):
        where = db["path"]
    else:
        host = db.get("host") or "localhost"
        port = f":{db['port']}" if db.get("port") else ""
        user = f"{db['user']}@" if db.get("user") else ""
        where = f"{user}{host}{port}/{db.get('database', '?')}"
    if "password" in db:
        where += f", password from {_secret(db['password'])}"
    return where


COMMANDS = [config_group]
