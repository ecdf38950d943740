"""`casbackup user add|list|passwd|remove`: the web service's accounts (in its state dir)."""

from __future__ import annotations

import getpass
import sys

import click

from casbackup.cli.context import global_options
from casbackup.cli.render import emit_json, json_mode
from casbackup.errors import UsageError

STATE_DIR_HELP = (
    "The service's state folder [env: CASBACKUP_STATE_DIR; default ~/.local/state/casbackup]."
)


def state_dir_option(fn):  # type: ignore[no-untyped-def]
    return click.option(
        "--state-dir", metavar="DIR", envvar="CASBACKUP_STATE_DIR", help=STATE_DIR_HELP
    )(fn)


def open_accounts(state_dir: str | None):  # type: ignore[no-untyped-def]
    from casbackup.server.accounts import Accounts
    from casbackup.server.statedb import StateDB, default_state_dir

    return Accounts(StateDB(state_dir or default_state_dir()))


def cli_audit(accounts, action: str, detail: str) -> None:  # type: ignore[no-untyped-def]
    from casbackup.server.audit import AuditEntry, record

    record(accounts.db, AuditEntry(action=action, outcome="success", actor=getpass.getuser(),
                                   actor_kind="cli", detail=detail))  # fmt: skip


def read_new_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline()
        return line.rstrip("\r\n")
    if not sys.stdin.isatty():
        raise UsageError("no terminal to ask for the password: use --password-stdin")
    first = getpass.getpass("new password: ")
    if getpass.getpass("the same password again: ") != first:
        raise UsageError("the passwords do not match")
    return first


def done(doc: dict[str, object], text: str) -> None:
    """What a state-changing account command did: ``text``, or under --json one JSON object."""
    if json_mode():
        emit_json(doc)
    else:
        click.echo(text)


@click.group()
def user() -> None:
    """Accounts of the web service (casbackup serve)."""


@user.command("add")
@click.argument("name")
@click.option(
    "--role",
    type=click.Choice(["admin", "operator", "viewer"]),
    required=True,
    help="viewer: applications, snapshots and jobs, read-only; operator: + backup, verify, "
    "check, restore into the recovery folder; admin: + users, tokens, forget, prune, recover.",
)
@click.option(
    "--app", "apps", multiple=True, metavar="APP", help="Limit to this application (repeatable)."
)
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@state_dir_option
def user_add(
    name: str, role: str, apps: tuple[str, ...], password_stdin: bool, state_dir: str | None
) -> None:
    """Create a user (the first admin before the first `serve`)."""
    accounts = open_accounts(state_dir)
    password = read_new_password(password_stdin)
    u = accounts.add_user(name, password, role, list(apps) or None)
    cli_audit(accounts, "user_add", f"user {u.name} role {u.role}")
    done(
        {"message_type": "user_added", "name": u.name, "role": u.role, "apps": u.apps},
        f"user {u.name} added ({u.role}{', apps ' + ', '.join(u.apps) if u.apps else ''})",
    )


@user.command("list")
@state_dir_option
@click.pass_context
def user_list(ctx: click.Context, state_dir: str | None) -> None:
    """List users, their roles and applications."""
    users = open_accounts(state_dir).users()
    if global_options(ctx).json:
        emit_json([{"name": u.name, "role": u.role, "apps": u.apps} for u in users])
        return
    for u in users:
        click.echo(
            f"{u.name:<24} {u.role:<9} {', '.join(u.apps) if u.apps else 'all applications'}"
        )


@user.command("passwd")
@click.argument("name")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@state_dir_option
def user_passwd(name: str, password_stdin: bool, state_dir: str | None) -> None:
    """Set a user's password (ends their browser sessions)."""
    accounts = open_accounts(state_dir)
    accounts.user(name)  # fail before asking for a password
    accounts.set_password(name, read_new_password(password_stdin))
    cli_audit(accounts, "user_passwd", f"user {name}")
    done({"message_type": "password_changed", "name": name}, f"password of {name} changed")


@user.command("remove")
@click.argument("name")
@state_dir_option
def user_remove(name: str, state_dir: str | None) -> None:
    """Remove a user, their tokens and sessions."""
    accounts = open_accounts(state_dir)
    accounts.remove_user(name)
    cli_audit(accounts, "user_remove", f"user {name}")
    done({"message_type": "user_removed", "name": name}, f"user {name} removed")


COMMANDS = [user]
