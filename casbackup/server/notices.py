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

A backup that keeps failing the same way (its source gone for a weekend, a database down,
a password variable missing, every 15 minutes) is one failure episode: its notifiers hear
the first failure, a failure that differs from the last one told (digits aside: times,
pids, sizes), and once every ``REMIND_S`` while it goes on; the rest are only in the job's
log. Its first successful backup ends the episode (its notifiers hear ``success`` as
always). The backup's worker leaves its failure to the service for that reason.

Every sending runs in a thread of its own: a slow SMTP server never holds up a job, the
start-up or (beyond ``wait``) the stop.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

from casbackup.errors import CasError
from casbackup.notify import Event, dispatch
from casbackup.timezones import local_time

if TYPE_CHECKING:
    from casbackup.server.service import Service

log = logging.getLogger("casbackup.server.jobs")

REMIND_S = 24 * 3600.0  # a backup failing the same way is told again after this long
_DIGITS = re.compile(r"\d+")


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
            if self._repeated(row, what):
                return
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

    def _repeated(self, row: Any, what: str) -> bool:
        """Whether backup job ``row``'s failure ``what`` repeats the failure its application's
        notifiers were last told of, less than ``REMIND_S`` ago (then its log says so);
        otherwise it is recorded as the one told (``failing:<app>`` in schedule_state:
        when, and which job)."""
        db, key, now = self.service.db, f"failing:{row['app']}", self.service.clock()
        try:
            last = db.one(
                "SELECT s.last_fire, j.error, j.finished_at FROM schedule_state s"
                " LEFT JOIN jobs j ON j.id = s.last_job WHERE s.key = ?",
                (key,),
            )
            if (
                last is not None
                and last["error"] is not None
                and _DIGITS.sub("#", last["error"]) == _DIGITS.sub("#", what)
                and 0 <= now - last["last_fire"] < REMIND_S
            ):
                since = self.when(last["finished_at"])
                self.service.jobs._log(
                    row["id"], "info",
                    f"the notifiers were not told again: the backups of {row['app']} have "
                    f"failed this way since {since} (told again once a day while they do)",
                )  # fmt: skip
                return True
            db.execute(
                "INSERT INTO schedule_state (key, last_fire, last_job) VALUES (?,?,?)"
                " ON CONFLICT(key) DO UPDATE SET last_fire=excluded.last_fire,"
                " last_job=excluded.last_job",
                (key, now, row["id"]),
            )
        except sqlite3.Error:  # the state database's disk is full: tell, rather than not
            log.exception("job %d: its failure episode could not be recorded", row["id"])
        return False

    def succeeded(self, row: Any) -> None:
        """A backup of ``row['app']`` succeeded: its failure episode, if any, is over."""
        try:
            self.service.db.execute(
                "DELETE FROM schedule_state WHERE key = ?", (f"failing:{row['app']}",)
            )
        except sqlite3.Error:
            log.exception("job %d: the end of its failure episode could not be recorded", row["id"])

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
