"""``casbackup plugins list``: every plugin found through entry points, and whether it is on."""

from __future__ import annotations

import click

from casbackup.cli.config_support import load_cli_config
from casbackup.cli.context import global_options
from casbackup.cli.render import emit_json
from casbackup.plugins import GROUPS, discover


@click.group()
def plugins() -> None:
    """Plugins: storage backends, database engines, snapshot providers, notifiers."""


@plugins.command("list")
@click.option("--kind", type=click.Choice(sorted(GROUPS)), help="Only plugins of this kind.")
@click.pass_context
def list_(ctx: click.Context, kind: str | None) -> None:
    """List plugins with kind, package, version, and whether each is enabled (and why not)."""
    opts = global_options(ctx)
    config = load_cli_config(opts)
    offline = config.plugins.offline_mode if config is not None else True
    infos = discover(offline_mode=offline, kinds=(kind,) if kind else tuple(GROUPS))
    if opts.json:
        emit_json({"offline_mode": offline, "plugins": [i.as_json() for i in infos]})
        return
    for i in infos:
        state = "enabled" if i.enabled else f"disabled: {i.reason}"
        click.echo(f"{i.kind:<18} {i.name:<14} {i.package} {i.version:<10} {state}")


COMMANDS = [plugins]
