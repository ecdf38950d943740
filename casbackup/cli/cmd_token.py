"""`casbackup token create|list|revoke`: API tokens for the web service."""

from __future__ import annotations

import click

from casbackup.cli.cmd_user import cli_audit, done, open_accounts, state_dir_option
from casbackup.cli.context import global_options
from casbackup.cli.render import emit_json
from casbackup.nstime import iso_seconds


def _when(t: float | None) -> str | None:
    return iso_seconds(t, "seconds")


@click.group()
def token() -> None:
    """API tokens (Authorization: Bearer TOKEN) for the web service."""


@token.command("create")
@click.option("--user", "user_name", required=True, help="The user the token acts as.")
@click.option("--name", default="", help="A label to recognise it by.")
@click.option("--expires", metavar="DURATION", help="e.g. 90d, 12h, 1y [default: never].")
@click.option(
    "--app", "apps", multiple=True, metavar="APP", help="Limit to this application (repeatable)."
)
@state_dir_option
@click.pass_context
def token_create(ctx: click.Context, user_name: str, name: str, expires: str | None,
                 apps: tuple[str, ...], state_dir: str | None) -> None:  # fmt: skip
    """Create a token and print it once (only its hash is kept)."""
    from casbackup.server.accounts import parse_duration

    accounts = open_accounts(state_dir)
    seconds = parse_duration(expires) if expires else None
    text, tok = accounts.create_token(
        user_name, name, expires_in_s=seconds, apps=list(apps) or None
    )
    cli_audit(accounts, "token_create", f"token {tok.id} for {user_name}")
    if global_options(ctx).json:
        emit_json(
            {"token": text, "id": tok.id, "user": user_name, "expires_at": _when(tok.expires_at)}
        )
        return
    click.echo(text)


@token.command("list")
@click.option("--user", "user_name", help="Only this user's tokens.")
@state_dir_option
@click.pass_context
def token_list(ctx: click.Context, user_name: str | None, state_dir: str | None) -> None:
    """List tokens (never their secrets)."""
    tokens = open_accounts(state_dir).tokens(user_name)
    docs = [{"id": t.id, "user": t.user.name, "name": t.name, "apps": t.apps,
             "created_at": _when(t.created_at), "expires_at": _when(t.expires_at),
             "revoked_at": _when(t.revoked_at), "last_used_at": _when(t.last_used_at)}
            for t in tokens]  # fmt: skip
    if global_options(ctx).json:
        emit_json(docs)
        return
    for d in docs:
        state = (
            "revoked"
            if d["revoked_at"]
            else f"expires {d['expires_at']}"
            if d["expires_at"]
            else "no expiry"
        )
        click.echo(f"{d['id']}  {d['user']:<20} {d['name']:<20} {state}")


@token.command("revoke")
@click.argument("token_id")
@state_dir_option
def token_revoke(token_id: str, state_dir: str | None) -> None:
    """Revoke a token at once."""
    accounts = open_accounts(state_dir)
    accounts.revoke_token(token_id)
    cli_audit(accounts, "token_revoke", f"token {token_id}")
    done({"message_type": "token_revoked", "id": token_id}, f"token {token_id} revoked")


COMMANDS = [token]
