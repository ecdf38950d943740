"""`casbackup serve`: the web service (FastAPI under uvicorn)."""

from __future__ import annotations

import contextlib
import signal
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from casbackup.cli.cmd_user import state_dir_option
from casbackup.cli.context import global_options
from casbackup.cli.render import emit_json_err, warn
from casbackup.errors import CasError, UsageError
from casbackup.stopsig import ignored, set_stop_handler


@click.command()
@click.option("--listen", default="127.0.0.1:8001", show_default=True, metavar="HOST:PORT",
              help="Address to listen on.")  # fmt: skip
@state_dir_option
@click.option("--tls-cert", type=click.Path(dir_okay=False), help="TLS certificate (PEM).")
@click.option("--tls-key", type=click.Path(dir_okay=False), help="TLS private key (PEM).")
@click.option("--insecure-http", is_flag=True,
              help="Allow plain HTTP on a non-loopback address (behind a TLS proxy on the same host).")  # fmt: skip
@click.option("--trusted-proxy", "trusted_proxies", multiple=True, metavar="ADDR[/BITS]",
              help="A reverse proxy whose X-Forwarded-For and user header are believed (repeatable).")  # fmt: skip
@click.option("--trusted-user-header", metavar="NAME",
              help="Header naming the logged-in user, set by a trusted SSO proxy (e.g. Remote-User).")  # fmt: skip
@click.option("--secure-cookies/--no-secure-cookies", default=None,
              help="Mark the session cookie Secure [default: on with --tls-cert or --trusted-proxy].")  # fmt: skip
@click.option("--no-scheduler", is_flag=True, help="Do not run scheduled backups and checks.")
@click.option("--missed-runs", type=click.Choice(["once", "skip"]), default="once", show_default=True,
              help="Schedules missed while the service was down: run once at start-up, or skip.")  # fmt: skip
@click.option(
    "--timezone",
    metavar="ZONE",
    help="Time zone of the schedules and of retention's days, e.g. Europe/Berlin "
    "[default: the config's timezone, else the machine's].",
)
@click.option(
    "--verify-schedule",
    metavar="CRON",
    help="Also verify each application's newest snapshot on this schedule.",
)
@click.option(
    "--check-schedule",
    metavar="CRON",
    help="Also check each repository (--read-data-subset) on this schedule.",
)
@click.option(
    "--forget-schedule",
    metavar="CRON",
    help="Also apply each application's retention from the config on this schedule "
    "(forget, then prune each repository); without it the service forgets nothing.",
)
@click.option(
    "--check-subset",
    default="1/7",
    show_default=True,
    help="The share of data each scheduled check reads.",
)
@click.option(
    "--max-run-time",
    default="24h",
    show_default=True,
    metavar="DURATION",
    help="Stop and fail a backup, verify, check, forget or prune job running longer than "
    "this (e.g. 6h, 90min; 0: no limit); an application's max_run_time overrides it.",
)
@click.option(
    "--lock-wait",
    default="1h",
    show_default=True,
    metavar="DURATION",
    help="How long a job waits for its repository while another process (a prune from "
    "cron, a second service) holds a lock it cannot share, before it fails (0: not at all).",
)
@click.option(
    "--job-history",
    default="180d",
    show_default=True,
    metavar="DURATION",
    help="How long finished jobs and their logs stay in the state database (0: for ever); "
    "the newest of each kind and application stays whatever its age.",
)
@click.pass_context
def serve(ctx: click.Context, listen: str, state_dir: str | None, tls_cert: str | None,
          tls_key: str | None, insecure_http: bool, trusted_proxies: tuple[str, ...],
          trusted_user_header: str | None, secure_cookies: bool | None, no_scheduler: bool,
          missed_runs: str, timezone: str | None, verify_schedule: str | None,
          check_schedule: str | None, forget_schedule: str | None, check_subset: str,
          max_run_time: str, lock_wait: str, job_history: str) -> None:  # fmt: skip
    """Run the web service: the API, background jobs and the scheduler.

    Reads the same config file as the other commands and serves every application and
    repository in it. Stop it with SIGTERM or Ctrl-C: running jobs are cancelled cleanly.
    """
    from casbackup.server.accounts import Accounts
    from casbackup.server.settings import Settings, check_proxies, is_loopback, parse_listen
    from casbackup.server.statedb import StateDB, default_state_dir

    opts = global_options(ctx)
    host, port = parse_listen(listen)
    run_time = _run_time(max_run_time)
    lock_wait_s = _run_time(lock_wait, "--lock-wait")
    job_history_s = _run_time(job_history, "--job-history")
    verify_schedule = _schedule("--verify-schedule", verify_schedule)
    check_schedule = _schedule("--check-schedule", check_schedule)
    forget_schedule = _schedule("--forget-schedule", forget_schedule)
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("give both --tls-cert and --tls-key")
    if not is_loopback(host) and not tls_cert:
        if not insecure_http:
            raise UsageError(
                f"{host} is not a loopback address: give --tls-cert/--tls-key, or --insecure-http "
                "when a TLS-terminating proxy in front of this service is the only way in"
            )
        warn(f"serving plain HTTP on {host}:{port}; passwords and tokens cross "
             "the network unencrypted unless a TLS proxy is the only way in")  # fmt: skip
    if trusted_user_header and not trusted_proxies:
        raise UsageError("--trusted-user-header needs --trusted-proxy (who may set it)")
    state = Path(state_dir or default_state_dir())
    db = StateDB(state)
    try:
        if Accounts(db).count_users() == 0:
            raise UsageError(
                f"no users in {state}: add the first admin with "
                f"'casbackup user add NAME --role admin --state-dir {state}', then start again"
            )
    finally:
        db.close()
    settings = Settings(
        state_dir=state, config_path=opts.config, repo=opts.repo, password_file=opts.password_file,
        password_command=opts.password_command, host=host, port=port, tls=bool(tls_cert),
        trusted_user_header=trusted_user_header, trusted_proxies=check_proxies(trusted_proxies),
        cookie_secure=secure_cookies if secure_cookies is not None else bool(tls_cert or trusted_proxies),
        run_scheduler=not no_scheduler, missed_runs=missed_runs, timezone=_zone(timezone),
        verify_schedule=verify_schedule, check_schedule=check_schedule,
        forget_schedule=forget_schedule, check_subset=_subset(check_subset),
        max_run_time_s=run_time, lock_wait_s=lock_wait_s, job_history_s=job_history_s,
    )  # fmt: skip
    import uvicorn

    from casbackup.server.app import create_app

    app = create_app(settings)
    # Before anything starts: the one service of this state folder (LockError, exit 11), and
    # the address bound, so that a port in use is one line and exit 1, not uvicorn's exit 3
    # (which means "some files could not be read" to scripts) after a start-up and shutdown.
    app.state.service.claim_state_dir()
    sock = _bind(host, port)
    empty = app.state.service.registry.nothing_to_serve()
    if empty:  # after the refusals above, which stay one line each
        warn(empty)
    url = f"{'https' if tls_cert else 'http'}://{listen}"
    if opts.json:  # stderr stays JSON for scripts (uvicorn's own log lines are its own text)
        emit_json_err({"message_type": "serving", "url": url, "state_dir": str(state)})
    else:
        click.echo(f"casbackup serving on {url} (state in {state})", err=True)
    config = uvicorn.Config(
        app, host=host, port=port, ssl_certfile=tls_cert, ssl_keyfile=tls_key,
        proxy_headers=False,  # client addresses come from auth.client_address, which checks the peer
        server_header=False, log_level="info" if not opts.quiet else "warning",
        timeout_graceful_shutdown=10,  # open event streams; then jobs are cancelled
    )  # fmt: skip
    server = _server(uvicorn, config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises the stop signal after its graceful shutdown
        pass  # a clean stop, exit 0 (as uvicorn.run does)
    if not server.started:
        raise CasError("the service did not start (see the messages above)")


def _server(uvicorn: Any, config: Any) -> Any:
    """uvicorn's server, except that a stop signal the service inherited as ignored stays
    ignored (``nohup``, a script's ``serve &``: casbackup/stopsig.py): uvicorn handles SIGINT
    and SIGTERM whatever they were."""

    class Server(uvicorn.Server):  # type: ignore[misc, name-defined]
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                for signum in (signal.SIGINT, signal.SIGTERM):
                    if ignored(signum):
                        signal.signal(signum, signal.SIG_IGN)
                # A SIGHUP (cli/signals.py) stops the service as uvicorn's SIGINT would.
                previous = set_stop_handler(self.handle_exit) if ignored(signal.SIGINT) else None
                try:
                    yield
                finally:
                    if previous is not None:
                        set_stop_handler(previous)

    return Server(config)


def _bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or CasError with the system's reason in one line."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise CasError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise CasError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def _zone(name: str | None) -> str | None:
    if name is None:
        return None
    from casbackup.timezones import check_zone

    try:
        return check_zone(name)
    except UsageError as exc:
        raise UsageError(f"--timezone {exc}") from None


def _run_time(text: str, option: str = "--max-run-time") -> int:
    from casbackup.units import parse_run_time

    try:
        return parse_run_time(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _schedule(option: str, text: str | None) -> str | None:
    """A schedule option as the scheduler reads it; UsageError for one it cannot read,
    which was a warning in the log after start-up while the drill silently never ran."""
    if text is None:
        return None
    from casbackup.config.load import normalize_schedule

    try:
        return normalize_schedule(text)
    except ValueError as exc:
        raise UsageError(f"{option} {exc}") from None


def _subset(text: str) -> str:
    from casbackup.verify.check import Subset

    Subset.parse(text)  # raises UsageError for a bad value
    return text


COMMANDS = [serve]
