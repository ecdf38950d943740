"""What the applications' notifiers hear from the service itself, not from a job's worker.

- A failed backup the worker did not report: it failed before the backup began (the
  repository unreachable), or its process died.
- The restore drills: a failed verify is ``verify_failure`` to its application's notifiers,
  a failed check to those of every application in the repository.
- A backup that did not happen because of the service: it crashed or lost power during the
  backup (told at the next start), or its stop (systemd stopping it during the nightly run)
  cancelled the backup or kept it from starting. Those are told during the stop, once the
  jobs have ended, or at the next start when no notifier could be reached then: the message
  is owed in the job's ``notice`` column until it was sent.

Every sending runs in a thread of its own: a slow SMTP server never holds up a job, the
start-up or (beyond ``wait``) the stop.
"""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

from casbackup.errors import CasError
from casbackup.notify import Event, dispatch
from casbackup.timezones import local_time

if TYPE_CHECKING:
    from casbackup.server.service import Service

log = logging.getLogger("casbackup.server.jobs")


class Notices:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.threads: list[threading.Thread] = []  # the sending threads (tests join them)
        self._lock = threading.Lock()
        self._sending: set[int] = set()  # owed notices being sent: one sender each

    def _started(self, worker: threading.Thread) -> None:
        worker.start()
        self.threads = [t for t in self.threads if t.is_alive()] + [worker]

    def failures(self, row: Any, error: str | None, *, notified: bool) -> None:
        """Tell a failed job's applications (``row``: its jobs row), unless the worker did
        (``notified``)."""
        kind, what = row["kind"], error or f"the {row['kind']} failed"
        told: list[tuple[str | None, str, str]] = []
        if kind == "backup" and not notified:
            told = [(row["app"], "failure", what)]
        elif kind == "verify" and row["app"]:
            told = [
                (row["app"], "verify_failure", f"the verification of {row['app']} failed: {what}")
            ]
        elif kind == "check":
            message = f"the check of repository {row['repo']} failed: {what}"
            apps = [a for a, k in self.service.registry.app_repo.items() if k == row["repo"]]
            told = [(a, "verify_failure", message) for a in apps]
        registry = self.service.registry
        sends = [
            (cfg.notify, Event(event, app, message))
            for app, event, message in told
            if app and (cfg := registry.app(app)) is not None and cfg.notify
        ]
        if not sends:
            return
        offline = registry.config.plugins.offline_mode

        def send() -> None:
            for notifiers, event in sends:
                dispatch(notifiers, event, offline_mode=offline)

        self._started(threading.Thread(target=send, name="notify-failure", daemon=True))

    def when(self, epoch: float | None) -> str:
        """``epoch`` (UTC seconds) as a person reads it in the service's zone (that of the
        schedules): a notice may be sent hours after the backup it is about (at the next
        start), and says which one it was."""
        if epoch is None:
            return "at an unknown time"
        try:
            tz = self.service.zone()
        except CasError:  # a zone this machine no longer knows: UTC, said as such
            tz = dt.UTC
        return local_time(dt.datetime.fromtimestamp(epoch, dt.UTC), tz)

    def owe(self, job_id: int, message: str) -> None:
        """Record that the job's application must hear ``failure`` with ``message``."""
        try:
            self.service.db.execute("UPDATE jobs SET notice=? WHERE id=?", (message, job_id))
        except sqlite3.Error:  # the state database's disk is full: the job's end says it all
            log.exception("job %d: its failure notification could not be recorded", job_id)

    def send_owed(self, *, only_if_delivered: bool, wait: float = 0.0) -> None:
        """Send every owed notification, oldest first, and forget each once sent: when
        ``only_if_delivered``, only if every notifier that wants failures took it (the stop:
        the rest is sent at the next start, which tries once: a notifier that is off or
        broken for good is not asked again at every start). Waits up to ``wait`` seconds."""
        db, registry = self.service.db, self.service.registry
        offline = registry.config.plugins.offline_mode
        sends = []
        for row in db.query(
            "SELECT id, app, notice FROM jobs WHERE notice IS NOT NULL ORDER BY id"
        ):
            cfg = registry.app(row["app"] or "")
            if cfg is None or not any("failure" in n.on for n in cfg.notify):
                db.execute("UPDATE jobs SET notice=NULL WHERE id=?", (row["id"],))
                continue
            sends.append((row["id"], cfg.notify, Event("failure", row["app"], row["notice"])))
        if not sends:
            return

        def send() -> None:
            for job_id, notifiers, event in sends:
                with self._lock:
                    if job_id in self._sending:
                        continue  # another sender has it (a job's end, then the stop)
                    self._sending.add(job_id)
                try:
                    warnings = dispatch(notifiers, event, offline_mode=offline)
                    if warnings and only_if_delivered:
                        continue
                    db.execute("UPDATE jobs SET notice=NULL WHERE id=?", (job_id,))
                except Exception:  # the stop closed the database: told again at the next start
                    log.debug("job %d: its notice stays owed", job_id, exc_info=True)
                finally:
                    with self._lock:
                        self._sending.discard(job_id)

        worker = threading.Thread(target=send, name="notify-owed", daemon=True)
        self._started(worker)
        worker.join(wait)
