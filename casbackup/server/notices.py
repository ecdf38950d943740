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
the first failure, a failure that differs from the last one told (digits and hex ids
aside: times, pids, sizes, snapshot ids), and once every ``REMIND_S`` while it goes on; the
rest are only in the job's log. Its first successful backup ends the episode (its
notifiers hear ``success`` as always). A failed auto-verify of a backup is a failure of
it here (``verify_failure`` to the notifiers): the same snapshot problem every night is
one episode too. The backup's worker leaves both to the service for that reason.

A partial backup (a snapshot saved without some unreadable entries) that repeats is one
episode of its own: the notifiers hear ``warning`` when an entry is left out that the last
one told did not name (digits aside, as above: a log named by its date is the same
entry), and once every ``REMIND_PARTIAL_S``; a backup that leaves nothing out ends it.
Fewer entries left out is not news (nothing new is wrong). Not every night: a nightly
partial backup is still a backup of everything else, and the same warning every morning
teaches its readers to skip it; a week keeps a forgotten folder from going unseen for good.

Every sending runs in a thread of its own: a slow SMTP server never holds up a job, the
start-up or (beyond ``wait``) the stop.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sqlite3
import threading
from typing import TYPE_CHECKING, Any

from casbackup.errors import CasError
from casbackup.notify import Event, dispatch
from casbackup.timezones import local_time
from casbackup.units import plural

if TYPE_CHECKING:
    from casbackup.server.service import Service

log = logging.getLogger("casbackup.server.jobs")

REMIND_S = 24 * 3600.0  # a backup failing the same way is told again after this long
REMIND_PARTIAL_S = 7 * 24 * 3600.0  # the same entries left out: told again after this long
# What varies between two runs failing the same way: snapshot and pack ids (8+ hex digits,
# letters too), then any number (times, pids, sizes, counts).
_VARYING = re.compile(r"\b[0-9a-f]{8,}\b|\d+")


def _shape(text: str) -> str:
    """``text`` with what varies between runs failing the same way masked."""
    return _VARYING.sub("#", text)


class Notices:
    def __init__(self, service: Service) -> None:
        self.service = service
        self.threads: list[threading.Thread] = []  # the sending threads (tests join them)
        self._lock = threading.Lock()
        self._sending: set[int] = set()  # owed notices being sent: one sender each

    def _started(self, worker: threading.Thread) -> None:
        worker.start()
        self.threads = [t for t in self.threads if t.is_alive()] + [worker]

    def failures(self, row: Any, error: str | None, *, notified: bool, result: Any = None) -> None:
        """Tell a failed job's applications (``row``: its jobs row), unless the worker did
        (``notified``). ``result``: what the job left (a backup whose auto-verify failed:
        its snapshot and verification)."""
        kind, what = row["kind"], error or f"the {row['kind']} failed"
        told: list[tuple[str | None, str, str]] = []
        snapshot = None
        if kind == "backup" and not notified:
            if self._repeated(row, what):
                return
            verification = result.get("verification") if isinstance(result, dict) else None
            if isinstance(verification, dict) and verification.get("ok") is False:
                snapshot = result.get("snapshot_id")
                told = [(row["app"], "verify_failure", what)]
            else:
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
            (cfg.notify, Event(event, app, message, snapshot))
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
                and _shape(last["error"]) == _shape(what)
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

    def succeeded(self, row: Any, result: Any = None) -> None:
        """A backup of ``row['app']`` succeeded (``result``: its job's result): its failure
        episode, if any, is over; a partial one (``result['partial']``) is told as its
        episode says (``_partial``), and one that left nothing out ends that episode."""
        partial = isinstance(result, dict) and bool(result.get("partial"))
        keys = [f"failing:{row['app']}"] + ([] if partial else [f"partial:{row['app']}"])
        try:
            for key in keys:
                self.service.db.execute("DELETE FROM schedule_state WHERE key = ?", (key,))
        except sqlite3.Error:
            log.exception("job %d: the end of its failure episode could not be recorded", row["id"])
        if partial:
            self._partial(row, result)

    def _partial(self, row: Any, result: dict[str, Any]) -> None:
        """Tell ``row['app']``'s notifiers of a partial backup (``warning``), unless every
        entry it left out was named by the one last told, less than ``REMIND_PARTIAL_S``
        ago (then its log says so). The one told is recorded as ``partial:<app>``."""
        app = row["app"]
        cfg = self.service.registry.app(app or "")
        warnings = [str(w) for w in result.get("warnings") or ()]
        db, key, now = self.service.db, f"partial:{app}", self.service.clock()
        try:
            last = db.one(
                "SELECT s.last_fire, j.result, j.finished_at FROM schedule_state s"
                " LEFT JOIN jobs j ON j.id = s.last_job WHERE s.key = ?",
                (key,),
            )
            if (
                last is not None
                and last["result"]
                and 0 <= now - last["last_fire"] < REMIND_PARTIAL_S
            ):
                told = json.loads(last["result"]).get("warnings") or ()
                if {_shape(w) for w in warnings} <= {_shape(str(w)) for w in told}:
                    self.service.jobs._log(
                        row["id"], "info",
                        f"the notifiers were not told again: the backups of {app} have left "
                        f"out the same files or folders since {self.when(last['finished_at'])}"
                        " (told again once a week while they do, or when another is left out)",
                    )  # fmt: skip
                    return
            db.execute(
                "INSERT INTO schedule_state (key, last_fire, last_job) VALUES (?,?,?)"
                " ON CONFLICT(key) DO UPDATE SET last_fire=excluded.last_fire,"
                " last_job=excluded.last_job",
                (key, now, row["id"]),
            )
        except (sqlite3.Error, ValueError, AttributeError):  # tell, rather than not
            log.exception("job %d: its partial-backup episode could not be recorded", row["id"])
        if cfg is None or not cfg.notify:
            return
        sid = str(result.get("snapshot_id") or "")
        what = plural(len(warnings), "file or folder", "files or folders")
        event = Event("warning", app, f"snapshot {sid[:8]} saved; {what} could not be read",
                      sid or None, dict(result.get("summary") or {}), tuple(warnings))  # fmt: skip
        offline = self.service.registry.config.plugins.offline_mode

        def send() -> None:
            dispatch(cfg.notify, event, offline_mode=offline)

        self._started(threading.Thread(target=send, name="notify-partial", daemon=True))

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
