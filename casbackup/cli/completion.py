"""Shell completion (bash, zsh, fish) through click's protocol, with two completers of our own.

click completes commands and options by itself: the shell calls ``casbackup`` with
``_CASBACKUP_COMPLETE=bash_complete`` (or ``zsh_complete``, ``fish_complete``) and the words
typed so far in ``COMP_WORDS``/``COMP_CWORD``. On top of that:

- ``--app`` completes application names from the config file (and, when the repository can
  be opened, from its snapshots);
- SNAPSHOT arguments (and ``--snapshot``) complete ``latest`` and snapshot ids, read from the
  repository only when its passphrase is available without asking (``CASBACKUP_PASSWORD``, a
  password file or command, or the config's password source): completion never prompts.

A completer never fails loudly: anything that goes wrong (no config, no repository, a wrong
passphrase) completes nothing rather than printing into the user's command line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import click
from click.shell_completion import CompletionItem

from casbackup.cli.context import GlobalOptions

# Parameter names (click's ``param.name``) that take a snapshot reference.
SNAPSHOT_PARAMS = frozenset({"ref", "snapshot", "snapshot1", "snapshot2"})
APP_PARAMS = frozenset({"app"})

Completer = Callable[[click.Context, click.Parameter, str], list[CompletionItem]]


def _options(ctx: click.Context) -> GlobalOptions:
    """Global options as parsed so far. During completion the group's callback does not run,
    so ``ctx.obj`` is unset: build them from the root context's parameters."""
    root = ctx.find_root()
    if isinstance(root.obj, GlobalOptions):
        return root.obj
    p = root.params
    return GlobalOptions(
        p.get("repo"), p.get("password_file"), p.get("password_command"), False, True, False,
        p.get("config_path"),
    )  # fmt: skip


def _quietly(fn: Callable[[], list[Any]]) -> list[Any]:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - completion must never break the user's shell line
        return []


def _config_apps(opts: GlobalOptions) -> list[str]:
    from casbackup.cli.config_support import load_cli_config

    config = load_cli_config(opts)
    return [a.name for a in config.applications] if config else []


def _can_read_password(opts: GlobalOptions) -> bool:
    return bool(
        opts.password_file or opts.password_command or opts.password_env
        or os.environ.get("CASBACKUP_PASSWORD")
    )  # fmt: skip


def _snapshots(opts: GlobalOptions) -> list[Any]:
    """The repository's snapshots, or [] when that would need a prompt."""
    from casbackup.cli.config_support import apply_config_defaults
    from casbackup.cli.context import open_repository

    apply_config_defaults(opts)
    if not opts.repo or not _can_read_password(opts):
        return []
    repo = open_repository(opts)
    try:
        return repo.list_snapshots(warnings=[])
    finally:
        repo.close()


def complete_app(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """Application names from the config and the repository that start with ``incomplete``."""
    opts = _options(ctx)
    names = list(dict.fromkeys(
        _quietly(lambda: _config_apps(opts))
        + _quietly(lambda: [s.app for s in _snapshots(opts) if s.app])
    ))  # fmt: skip
    return [CompletionItem(n) for n in names if n.startswith(incomplete)]


def complete_snapshot(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """``latest`` and snapshot ids (full ids; the shell shows when and which application)."""
    if ":" in incomplete:
        return []  # a path inside the snapshot: not completed
    items = [CompletionItem("latest", help="the newest snapshot (with --app: of that app)")]
    for snap in reversed(_quietly(lambda: _snapshots(_options(ctx)))):
        what = f"app {snap.app}" if snap.app else f"host {snap.host}"
        items.append(CompletionItem(snap.id, help=f"{snap.time[:19]} {what} ({snap.type})"))
    return [i for i in items if i.value.startswith(incomplete.lower())]


def attach_completers(command: click.Command) -> None:
    """Give every ``--app`` and SNAPSHOT parameter of ``command`` (and its subcommands) our
    completer, unless it has one of its own. One place, so no command module repeats it."""
    for param in command.params:
        completer: Completer | None = None
        if param.name in APP_PARAMS:
            completer = complete_app
        elif param.name in SNAPSHOT_PARAMS:
            completer = complete_snapshot
        if completer is not None and param._custom_shell_complete is None:
            param._custom_shell_complete = completer
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            attach_completers(sub)
