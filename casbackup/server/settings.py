"""Every setting of the service in one place, as one frozen value built by `casbackup serve`.

Tests build a `Settings` directly (cheap password hashing, no scheduler thread, a fake clock);
nothing else in the server reads options, the environment or the command line.
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass, field
from pathlib import Path

from casbackup.errors import UsageError

DEFAULT_LISTEN = "127.0.0.1:8001"  # the seed's port; loopback unless told otherwise


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    config_path: str | None = (
        None  # None: the CLI's search order (CASBACKUP_CONFIG, ./casbackup.toml, ...)
    )
    repo: str | None = None  # -r/CASBACKUP_REPO: overrides the config's default repository
    password_file: str | None = None
    password_command: str | None = None
    host: str = "127.0.0.1"
    port: int = 8001
    tls: bool = False
    # Single sign-on behind a reverse proxy: the header that names the user, trusted only when
    # the TCP peer is one of these addresses (networks). Off unless both are given.
    trusted_user_header: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    # Browser sessions. Secure cookies whenever the browser sees https (TLS here or at a proxy).
    cookie_secure: bool = False
    session_ttl_s: float = 12 * 3600
    # Logins: failures per window (login_limit.py: per client and name, per client, per name).
    login_max_failures: int = 5
    login_window_s: float = 300.0
    max_body_bytes: int = 1 << 20  # JSON and form bodies; larger requests get 413
    cheap_password_hashing: bool = False  # tests only
    run_scheduler: bool = True
    scheduler_tick_s: float = 30.0  # wall clock checked at least every minute (sleeping laptops)
    missed_runs: str = "once"  # once | skip: runs missed while the service was down
    timezone: str | None = None  # IANA name for schedules; None: the machine's zone
    verify_schedule: str | None = None  # restore drills: verify each app's newest snapshot
    check_schedule: str | None = None  # check --read-data-subset of each repository
    # each application's retention from the config (a forget job per application that has
    # one), then a prune of its repository: without it the service never forgets anything
    forget_schedule: str | None = None
    check_subset: str = "1/7"
    # Seconds a job that holds its repository's queue or its schedule (running.TIMED) may run
    # before it is stopped and failed: a dump blocked on a lock or a source on a dead NFS
    # mount must not stop every later run. An application's max_run_time overrides it; 0:
    # no limit.
    max_run_time_s: int = 24 * 3600
    # Seconds a job waits for its repository while another process holds a conflicting lock
    # (a prune run from cron, a second service on the repository) before it fails; 0: not
    # at all. The job's max run time still bounds the wait.
    lock_wait_s: int = 3600
    # Seconds finished jobs (with their logs) stay in the state database (history.py); 0:
    # for ever. The newest of each kind and application stays whatever its age.
    job_history_s: int = 180 * 86400
    job_python: str = field(default=sys.executable)  # interpreter for job worker processes
    job_env: tuple[tuple[str, str], ...] = ()  # extra environment for workers (tests)

    def proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies]


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port). Raises UsageError."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--listen {text!r}: give HOST:PORT, e.g. {DEFAULT_LISTEN}")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_proxies(values: tuple[str, ...]) -> tuple[str, ...]:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            raise UsageError(f"--trusted-proxy {v!r} is not an address or network") from None
    return values
