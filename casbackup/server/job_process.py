"""One job's worker process: started with the job's spec, its JSON lines read into progress
and log rows, and its end (a result, an error, a signal) turned into the job's end.

The seam with jobs.py: that module decides which job runs when and records what happened;
this one knows the worker's protocol (server/worker.py writes the lines read here) and how a
stop shows in it (running.py sends the stops).
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from casbackup.errors import EXIT_INTERRUPTED, EXIT_PARTIAL
from casbackup.server.running import Running, drain, lines
from casbackup.threadsig import quiet_thread
from casbackup.units import plural

if TYPE_CHECKING:
    from casbackup.server.service import Service


def start(service: Service, row: dict[str, Any]) -> subprocess.Popen[bytes]:
    """Start the worker process of job ``row`` (a jobs table row) and hand it the job's spec
    (its password included) on stdin, which stays open: a stop's reason comes that way
    (running.py). Raises CasError (the repository's password cannot be had) or OSError."""
    handle = service.registry.handle(row["repo"])
    password = handle.password()
    config = service.registry.config.source
    spec = {
        "kind": row["kind"], "location": handle.location, "app": row["app"],
        "password_b64": base64.b64encode(password).decode(), "s3": handle.s3,
        "config": str(config) if config else None, "params": json.loads(row["params"]),
        "timezone": service.zone_name(),  # retention's calendar is the schedules'
        "lock_wait_s": service.settings.lock_wait_s,
        "failures_told_by_service": True,  # one notice per failure episode (notices.py)
    }  # fmt: skip
    env = dict(os.environ) | dict(service.settings.job_env)
    env["CASBACKUP_SERVICE_PID"] = str(os.getpid())  # the worker dies with us (worker.py)
    proc = subprocess.Popen(
        [service.settings.job_python, "-m", "casbackup.server.worker"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        start_new_session=True,  # a Ctrl-C at the service's terminal is the service's to relay
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:  # stdin stays open: a stop's reason comes that way (running.py)
        proc.stdin.write((json.dumps(spec) + "\n").encode())
        proc.stdin.flush()
    except OSError:
        pass
    return proc


def follow(
    running: Running,
    proc: subprocess.Popen[bytes],
    *,
    progress: Callable[[dict[str, Any]], None],
    log: Callable[[str, str], None],
    cancelled: Callable[[str], str],
) -> tuple[str, str | None, int | None, Any]:
    """Read the worker's lines until it ends, handing on its ``progress`` documents and its
    ``log`` lines (level, message); its end as (state, error, exit code, result), where
    ``cancelled`` turns a cancelled job's message into its error."""
    assert proc.stdout is not None and proc.stderr is not None
    stderr_lines: list[str] = []
    drainer = quiet_thread(drain, (proc.stderr, stderr_lines))
    drainer.start()
    outcome: dict[str, Any] | None = None
    partial: Any = None
    for raw in lines(proc, running):
        try:
            msg = json.loads(raw)
        except ValueError:
            continue  # a library printing by mistake must not break the protocol
        t = msg.pop("t", None)
        if t == "progress":
            progress(msg)
        elif t in ("info", "warning"):
            log(t, str(msg.get("message", "")))
        elif t == "notified":
            running.notified = True
        elif t == "partial_result":
            partial = msg.get("result")
        elif t in ("result", "error"):
            outcome = {"t": t, **msg}
    code = proc.poll() if running.killed else proc.wait()
    drainer.join(5)
    if outcome is not None and outcome["t"] == "result":
        result = outcome.get("result")
        if isinstance(result, dict) and result.get("partial"):
            # The snapshot was saved without some unreadable files: done, but not clean
            # (the CLI's exit code 3); the files are in the result's warnings and the log.
            count = len(result.get("warnings") or ())
            return (
                "succeeded",
                f"{plural(count, 'file or folder', 'files or folders')} could not be read",
                EXIT_PARTIAL,
                result,
            )
        return "succeeded", None, 0, result
    # A SIGTERM from outside (systemd stops every process of the unit at once, the worker
    # maybe before the service): the service's stop, not a failure nor a user's. The
    # worker says so; or it died of it (still starting), or left at once (its pipeline had
    # already stopped when the signal came: the library's "interrupted twice").
    outside = (outcome or {}).get("stopped_by") or (
        outcome is None and code in (-signal.SIGTERM, 128 + signal.SIGTERM)
    )
    if outside and not running.cancel_requested:
        running.by_service = running.cancel_requested = True
        if outcome is None:
            outcome = {"t": "error", "exit_code": EXIT_INTERRUPTED,
                       "message": "stopped by SIGTERM from outside the service"}  # fmt: skip
    killed = running.killed_text()
    if running.timed_out is not None and not running.cancel_requested:
        # Not the user's cancel: a failure, which the application's notifiers hear of.
        return "failed", running.timed_out + killed, EXIT_INTERRUPTED, partial
    if running.killed and running.cancel_requested:
        return (
            "cancelled",
            cancelled("cancelled" + killed),
            EXIT_INTERRUPTED,
            partial,
        )
    if outcome is not None:
        exit_code = int(outcome.get("exit_code") or 1)
        message = str(outcome.get("message"))
        if exit_code == EXIT_INTERRUPTED or running.cancel_requested:
            return "cancelled", cancelled(message), exit_code, partial
        return "failed", message, exit_code, partial
    if running.cancel_requested:
        # Stopped before the worker could answer (the signal came during its start-up):
        # nothing was written yet; the exit code is the CLI's for an interruption.
        return (
            "cancelled",
            cancelled("cancelled before the job's process was ready"),
            EXIT_INTERRUPTED,
            partial,
        )
    detail = stderr_lines[-1] if stderr_lines else ended(code)
    return "failed", f"the job's process ended without a result: {detail}", code, partial


def ended(code: int | None) -> str:
    """How a worker that said nothing ended: a SIGKILL from outside is most often the
    kernel's out-of-memory killer (the status alone, -9, told the user nothing)."""
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGKILL:
            return f"killed by {name} (out of memory? the kernel's log says: journalctl -k)"
        return f"killed by {name}"
    return f"exit status {code}"
