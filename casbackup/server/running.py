"""A running job's worker process, and how the service stops it (jobs.py runs the jobs).

Stopping (a user's cancel, the service's stop, the job's maximum run time) is what Ctrl-C does
to ``casbackup backup`` at a terminal: one SIGINT to the worker's process group, the worker
and the database tools it runs alike, so a dump blocked on a table lock ends too. Before the
signal the worker is told why on its stdin, so that it does not report the failure the stop
causes (a tool ended by the signal) to the notifiers as its own. It stops at a safe point and
keeps what it committed; one that has not ended ``CANCEL_GRACE_S`` later is killed with its
group (its repository lock is then a dead process's, which the next locker ignores or
removes: repo/lock.py).

Maximum run time: a job that holds its repository's queue or its schedule (``TIMED``) is
stopped after its application's ``max_run_time`` (else the service's ``--max-run-time``) and
recorded failed with the reason: a hung backup must not skip every later run.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from casbackup.threadsig import quiet_thread
from casbackup.units import format_run_time

CANCEL_GRACE_S = 30.0  # after SIGINT, how long a worker may take before it is killed
WRITERS = frozenset({"backup", "verify", "forget", "prune", "unlock", "repair", "tag", "rewrite"})
# Jobs with a maximum run time: the writers hold their repository's queue, a check its
# schedule (never two at once). A restore or recover holds neither, and a person watches it.
TIMED = WRITERS | {"check"}

Log = Callable[[str, str], None]  # (level, message) into the job's log


@dataclass
class Running:
    job_id: int
    proc: subprocess.Popen[bytes] | None = None
    cancel_requested: bool = False
    notified: bool = False  # the worker told the application's notifiers of a failure
    timed_out: str | None = None  # why it was stopped for running too long (the job's error)
    stop_sent: bool = False  # its one SIGINT: a second would make the worker exit at once
    by_service: bool = False  # the service's stop cancelled it, not a user
    queue: str | None = None  # the repository identity it holds (a writer), see jobs.py
    repo_queue: str | None = None  # the repository identity it runs on (any job)
    exclusive: bool = False  # it takes the repository's exclusive lock (jobs.EXCLUSIVE)
    killed: bool = False  # it did not stop within CANCEL_GRACE_S of the SIGINT
    timer: threading.Timer | None = None  # the maximum run time's
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def started(self, proc: subprocess.Popen[bytes]) -> None:
        """The worker has its job (stdin's first line): stops may reach it from now."""
        with self._lock:
            self.proc = proc

    def stop(self, reason: str, log: Log) -> None:
        """Stop the job (the module's docstring); once. Does nothing before ``started``
        (jobs.py asks again then)."""
        with self._lock:
            if self.proc is None or self.stop_sent:
                return
            self.stop_sent = True
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps({"stop": reason}) + "\n").encode())
            self.proc.stdin.flush()
        except (OSError, ValueError):
            pass  # the worker has ended or closed its stdin: the signal still applies
        self.signal(signal.SIGINT)
        kill = threading.Timer(CANCEL_GRACE_S, self._kill, (log,))
        kill.daemon = True
        kill.start()

    def _kill(self, log: Log) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.killed = True
            log("warning", f"it did not stop within {CANCEL_GRACE_S:.0f} s of the signal: "
                "killed with its child processes")  # fmt: skip
            self.signal(signal.SIGKILL)

    def killed_text(self) -> str:
        """What to add to the job's error when it had to be killed."""
        if not self.killed:
            return ""
        return f"; it did not stop within {CANCEL_GRACE_S:.0f} s and was killed with its child processes"

    def limit(self, limit: tuple[int, str] | None, log: Log) -> None:
        """Stop the job after ``limit`` (seconds, where it was set), recorded failed."""
        if limit is None:
            return
        self.timer = threading.Timer(limit[0], self._time_out, (*limit, log))
        self.timer.daemon = True
        self.timer.start()

    def _time_out(self, limit: int, source: str, log: Log) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.timed_out = (
            f"stopped after running longer than its maximum run time of "
            f"{format_run_time(limit)} ({source})"
        )
        log("warning", self.timed_out)
        self.stop(self.timed_out, log)

    def ended(self) -> None:
        """The worker has ended: no maximum run time any more, its stdin closed."""
        if self.timer is not None:
            self.timer.cancel()
        if self.proc is not None and self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def signal(self, sig: int) -> None:
        """Signal the worker's process group (it leads one: ``start_new_session``)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass


OUTPUT_AFTER_EXIT_S = 5.0  # how long the worker's output may go on after it has ended
UNKILLABLE_AFTER_S = 30.0  # a worker alive this long after SIGKILL is stuck in the kernel


def lines(proc: subprocess.Popen[bytes], running: Running) -> Iterator[bytes]:
    """The worker's stdout lines until it ends. Not until the end of the output when that
    never comes: a process the worker started outside its group (a tool or a plugin that
    detaches) holds stdout open after the worker is gone, and a worker stuck in the kernel
    (a dead mount that ignores even SIGKILL) never ends; neither may hold the job, its
    repository's queue and its schedule. Such a worker runs no more code: SIGKILL is
    pending, so what it committed stays as it is."""
    out: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()

    def pump() -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            out.put(raw)
        out.put(None)

    quiet_thread(pump, name=f"job-{running.job_id}-output").start()
    ended = killed = None
    while True:
        try:
            raw = out.get(timeout=1.0)
        except queue.Empty:
            now = time.monotonic()
            if proc.poll() is not None:
                ended = ended or now
                if now - ended > OUTPUT_AFTER_EXIT_S:
                    return
            elif running.killed:
                killed = killed or now
                if now - killed > UNKILLABLE_AFTER_S:
                    return
            continue
        if raw is None:
            return
        yield raw


def drain(stream: Any, kept: list[str]) -> None:
    """Keep the last 50 lines of the worker's stderr (its last words, for the job's error)."""
    for raw in stream:
        text = raw.decode(errors="replace").rstrip()
        if text:
            kept.append(text)
            del kept[:-50]


def max_run_time(row: Any, app: Any, service_limit: int) -> tuple[int, str] | None:
    """A job's maximum run time in seconds and where it was set, or None (no limit): its
    application's ``max_run_time`` (``app``: its AppConfig or None), else the service's."""
    if row["kind"] not in TIMED:
        return None
    if app is not None and app.max_run_time is not None:
        limit, source = app.max_run_time, f"max_run_time of application {app.name!r}"
    else:
        limit, source = service_limit, "casbackup serve --max-run-time"
    return (limit, source) if limit > 0 else None
