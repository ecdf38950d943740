"""The scheduler: each application's ``schedule`` starts its backup on time, in one time zone.

Why our own (issue 19): APScheduler 3 limits concurrency per job, not per repository, and only
notices missed runs with a persistent job store; APScheduler 4 is an alpha. This is small:

- Rules: cron (5 fields, via cronsim, which applies cron's DST rules: a time skipped by the
  spring change runs at the first valid minute after it, a time repeated in autumn runs once),
  ``@daily`` and friends, and the seed's interval (``@every 15m``, counted from the last run).
- State: the last fire time of each schedule is kept in the state database, so a restart knows
  what it missed. A schedule seen for the first time starts counting from now; that is no
  run (``from:<key>``), so the overview shows no last run until it first fires.
- Clock: the wall clock is read on every tick, at least every ``tick_s`` (30 s) seconds, never
  derived from a sleep: a laptop or VM that slept notices the time jump at its next tick. A
  clock set back before a schedule's last fire (it ran ahead) counts from now, with a warning;
  set back by at most two hours just after a run, that run is not repeated.
- Missed runs (the fire time passed more than ``GRACE_S`` ago: the service was down or the
  machine asleep): ``once`` (default) runs one backup now however many were missed; ``skip``
  runs none. Either way the schedule moves on to its next time from now. Under ``once``, a
  backup that the service's stop cut short (killed, or SIGTERM) runs again once at start-up
  unless one succeeded since.
- Never two runs of one application at once: a fire while the application's previous backup is
  still queued or running is skipped (and logged); nor two scheduled checks of one repository. Per-repository serialisation is jobs.py's.
- Overdue: a scheduled backup is on time when a backup of its application succeeded after its
  fire time and before the schedule's next fire time. One that did not (it failed, is still
  running, was skipped as missed or because the previous run was still going) sends the
  application's notifiers the ``overdue`` event once, from the tick that notices it, in a
  thread of its own (a slow SMTP server never delays a schedule); a notifier that fails is
  asked again every 5 minutes for an hour. Runs overdue one after the other are one
  report, repeated once a day while they last (``told:<key>``); a run on time ends them. The fire time waited for
  is kept in ``schedule_state`` under ``due:<key>``, the last one reported under
  ``overdue:<key>``; a schedule seen for the first time waits for nothing.
- Optional restore drills: ``verify_schedule`` verifies each application's newest snapshot,
  ``check_schedule`` runs ``check --read-data-subset`` on each repository.
- Optional retention: ``forget_schedule`` forgets by each application's retention (one forget
  job per application that has one), then prunes its repository.

Tests drive ``tick(now)`` with a fake clock and a recording ``submit``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from casbackup.config.load import EVERY_TOO_LONG, MAX_EVERY_MINUTES
from casbackup.errors import CasError, ConfigError
from casbackup.server.jobs import STOPPED_DURING
from casbackup.server.notices import REMIND_S
from casbackup.timezones import local_time
from casbackup.timezones import machine_zone as _local_zone  # noqa: F401 (tests import it here)

if TYPE_CHECKING:
    from casbackup.server.service import Service

log = logging.getLogger("casbackup.server.scheduler")

GRACE_S = 90.0  # a fire noticed later than this after its time counts as missed
OVERDUE_RETRY_S = 300.0  # an overdue report a notifier did not take is sent again after this
OVERDUE_ATTEMPTS = 12  # ... this many times in all (an hour), then it is only in the log
# A clock set back by at most this much just after a run (an NTP step, a daylight-saving
# mistake) does not repeat it: the run came at most this early. Set back by more (a clock
# that ran a day ahead), the run fired so far before its time that it does not count for it.
REPEAT_TOLERANCE_S = 2 * 3600.0
MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}  # fmt: skip
_EVERY = re.compile(r"^@every (\d+)([mh])$")


class Rule:
    """When a schedule fires: ``next_after(t)`` is the first fire time strictly after ``t``."""

    def __init__(self, expr: str, tz: dt.tzinfo) -> None:
        self.expr = expr
        self.tz = tz
        every = _EVERY.match(expr)
        self.interval: dt.timedelta | None = None
        self.cron: str | None = None
        if every is not None:
            minutes = int(every.group(1)) * (60 if every.group(2) == "h" else 1)
            if not 0 < minutes <= MAX_EVERY_MINUTES:  # --verify-schedule comes unchecked
                raise ConfigError(f"schedule {expr!r}: {EVERY_TOO_LONG} and at least 1 minute")
            self.interval = dt.timedelta(minutes=minutes)
        else:
            self.cron = MACROS.get(expr, expr)
            try:
                self.next_after(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))
            except Exception as exc:  # cronsim's own error: a bad field
                raise ConfigError(f"schedule {expr!r}: {exc}") from None

    def next_after(self, t: dt.datetime) -> dt.datetime:
        if self.interval is not None:
            return t + self.interval
        from cronsim import CronSim

        assert self.cron is not None
        # cronsim works in the schedule's zone; the next minute boundary after t is its start.
        local = t.astimezone(self.tz).replace(second=0, microsecond=0)
        for fire in CronSim(self.cron, local):
            if fire.astimezone(dt.UTC) > t:
                return fire.astimezone(dt.UTC)
        raise ConfigError(f"schedule {self.expr!r} never fires")  # pragma: no cover


@dataclass
class Entry:
    key: str  # backup:<app> | verify:<repo> | check:<repo>
    kind: str
    app: str | None
    repo: str | None
    rule: Rule


Submit = Callable[..., Any]


class Scheduler:
    def __init__(
        self,
        service: Service,
        *,
        clock: Callable[[], dt.datetime] | None = None,
        submit: Submit | None = None,
    ) -> None:
        self.service = service
        settings = service.settings
        self.tz: dt.tzinfo = service.zone()
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._submit = submit
        self.policy = settings.missed_runs
        self.tick_s = min(settings.scheduler_tick_s, 60.0)
        self.errors: list[str] = []
        self.entries: list[Entry] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.overdue: list[str] = []  # what was reported overdue (tests, logs)
        self.notify_threads: list[threading.Thread] = []
        # overdue reports some notifiers did not take, each run's its own (a later report
        # does not replace it): <key>@<due> -> (those notifiers, the event,
        # the next attempt's number, when to make it); in memory: a restart drops them
        self._undelivered: dict[str, tuple[tuple[Any, ...], Any, int, dt.datetime]] = {}
        self._first_tick = True  # the start-up tick also reruns backups the stop cut short
        self._last_tick: dt.datetime | None = None  # the clock at the tick before (in memory)
        self.reload()

    # ----------------------------------------------------------------- configuration
    def reload(self) -> None:
        """Read the schedules from the (current) config; bad ones are reported, not fatal."""
        entries, errors = [], []
        registry = self.service.registry
        self.tz = self.service.zone()  # the config's timezone may have changed
        for app in registry.config.applications:
            if not app.schedule:
                continue
            try:
                entries.append(Entry(f"backup:{app.name}", "backup", app.name, registry.repo_key_for(app.name),
                                     Rule(app.schedule, self.tz)))  # fmt: skip
            except CasError as exc:
                errors.append(f"application {app.name}: {exc}")
        settings = self.service.settings
        for kind, expr in (
            ("verify", settings.verify_schedule),
            ("check", settings.check_schedule),
            ("forget", settings.forget_schedule),
        ):
            if not expr:
                continue
            for key in registry.handles:
                try:
                    entries.append(Entry(f"{kind}:{key}", kind, None, key, Rule(expr, self.tz)))
                except CasError as exc:
                    errors.append(f"{kind} schedule: {exc}")
        for e in errors:
            log.warning("%s", e)
        with self._lock:
            self.entries, self.errors = entries, errors

    # ----------------------------------------------------------------- state
    def _last(self, key: str) -> dt.datetime | None:
        row = self.service.db.one("SELECT last_fire FROM schedule_state WHERE key=?", (key,))
        if row is None or row[0] is None:
            return None
        return dt.datetime.fromtimestamp(row[0], dt.UTC)

    def _set_last(self, key: str, when: dt.datetime, job: int | None = None) -> None:
        self.service.db.execute(
            "INSERT INTO schedule_state (key, last_fire, last_job) VALUES (?,?,?) ON CONFLICT(key)"
            " DO UPDATE SET last_fire=excluded.last_fire, last_job=COALESCE(excluded.last_job, last_job)",
            (key, when.timestamp(), job),
        )

    def _count_from(self, key: str, when: dt.datetime) -> None:
        """Count schedule ``key`` from ``when``, which is no fire (first sight, a clock set
        back): ``from:<key>`` remembers that the time it counts from did not run."""
        self._set_last(key, when)
        self._set_last(f"from:{key}", when)

    def _last_run(self, e: Entry) -> dt.datetime | None:
        """The fire time the schedule last reached (run, or skipped and so overdue), or None
        when it has reached none since it began counting: the time it counts from is no run,
        and the dashboard would call it one that did not succeed. A cron schedule's fires are
        its own times, so a time that is none is no run either: a state database written
        before ``from:<key>`` existed holds such times, as does a schedule changed since."""
        last, since = self._last(e.key), self._last(f"from:{e.key}")
        if last is None or (since is not None and last <= since):
            return None
        if e.rule.cron is not None and e.rule.next_after(last - dt.timedelta(seconds=1)) != last:
            return None
        return last

    def next_run(self, entry: Entry) -> dt.datetime:
        last = self._last(entry.key)
        return entry.rule.next_after(last if last is not None else self.clock())

    def next_run_text(self, app: str) -> str | None:
        with self._lock:
            entry = next((e for e in self.entries if e.key == f"backup:{app}"), None)
        return None if entry is None else self.next_run(entry).isoformat()

    def overview(self) -> list[dict[str, Any]]:
        with self._lock:
            entries = list(self.entries)
        out = []
        for e in entries:
            last = self._last_run(e)
            out.append({"key": e.key, "kind": e.kind, "app": e.app, "repository": e.repo,
                        "schedule": e.rule.expr, "timezone": str(self.tz),
                        "last_run": last.isoformat() if last else None,
                        "next_run": self.next_run(e).isoformat()})  # fmt: skip
        return out

    # ----------------------------------------------------------------- firing
    def tick(self, now: dt.datetime | None = None) -> list[str]:
        """Fire what is due at ``now`` (default: the clock). Returns what it did, for tests/logs."""
        now = now or self.clock()
        done: list[str] = []
        with self._lock:
            entries = list(self.entries)
        starting, self._first_tick = self._first_tick, False
        # How far the clock went back since the last tick (None: first tick, or it did not).
        previous, self._last_tick = self._last_tick, now
        stepped_back = (
            (previous - now).total_seconds()
            if previous is not None and previous.timestamp() > now.timestamp()
            else None
        )
        self._resend_overdue(now)
        for e in entries:
            last = self._last(e.key)
            if last is None:
                self._count_from(e.key, now)  # first sight: count from now, do not fire at once
                continue
            if last.timestamp() > now.timestamp() + GRACE_S:
                last = self._clock_went_back(e, last, now, stepped_back)
            if e.kind == "backup":
                self._check_overdue(e, now)  # before a new fire moves what is waited for
            due = e.rule.next_after(last)
            if due > now:
                if starting and e.kind == "backup" and self.policy == "once":
                    self._rerun_cut_short(e, last, now, done)
                continue
            # Every fire time up to now is consumed by this one tick: the next starts after now.
            latest = due
            while (following := e.rule.next_after(latest)) <= now:
                latest = following
            missed = (now - due).total_seconds() > GRACE_S
            if e.kind == "backup":
                self._set_last(f"due:{e.key}", due)  # this run must succeed before the next
            if missed and self.policy == "skip":
                self._set_last(e.key, latest)
                _note(done, f"{e.key}: skipped missed run of {due.isoformat()}")
                continue
            job = self._fire(e, done, missed, now)
            self._set_last(e.key, now if e.rule.interval is not None else latest, job)
        return done

    def _clock_went_back(
        self, e: Entry, last: dt.datetime, now: dt.datetime, stepped_back: float | None
    ) -> dt.datetime:
        """The last fire is in the future: the clock was set back (NTP after a clock that ran
        ahead, a VM restored with an old time). Counting from that fire would stop the
        schedule, unseen, until the clock reaches it again (a year, for a clock that was a
        year ahead), so it counts from now; unless the fire is the one the clock is about to
        reach again and the clock went back (``stepped_back`` seconds since the tick before;
        None: not seen) by at most ``REPEAT_TOLERANCE_S`` (set back an hour just after the
        nightly run): that run is not repeated. Set back further (a clock a day ahead made
        the next night's run fire 16 hours early), the night runs when it really comes.
        The overdue markers written under the wrong clock go too."""
        small = stepped_back is None or stepped_back <= REPEAT_TOLERANCE_S
        if e.rule.next_after(now) >= last and small:
            return last
        log.warning(
            "%s: the clock went back to %s, before this schedule's last run (%s); it counts "
            "from now", e.key, now.isoformat(), last.isoformat(),
        )  # fmt: skip
        self.service.db.execute(
            "DELETE FROM schedule_state WHERE key IN (?,?) AND last_fire > ?",
            (f"due:{e.key}", f"overdue:{e.key}", now.timestamp()),
        )
        self._count_from(e.key, now)
        return now

    # ----------------------------------------------------------------- overdue
    def _check_overdue(self, e: Entry, now: dt.datetime) -> None:
        """Send ``overdue`` once when the run due at ``due:<key>`` has not succeeded by the
        schedule's next fire time."""
        due = self._last(f"due:{e.key}")
        if due is None or now < e.rule.next_after(due):
            return
        reported = self._last(f"overdue:{e.key}")
        if reported is not None and reported >= due:
            return
        # Not after now: a success dated in the future (the clock ran ahead then) proves
        # nothing about the runs due before that date.
        succeeded = self.service.db.one(
            "SELECT 1 FROM jobs WHERE kind='backup' AND app=? AND state='succeeded'"
            " AND finished_at >= ? AND finished_at <= ? LIMIT 1",
            (e.app, due.timestamp() - GRACE_S, now.timestamp()),
        )
        self._set_last(f"overdue:{e.key}", due)
        if succeeded is not None:  # on time: a run overdue after it is news again
            self.service.db.execute("DELETE FROM schedule_state WHERE key=?", (f"told:{e.key}",))
            return
        message = (
            f"the scheduled backup of {e.app} due at {local_time(due, self.tz)} has not succeeded "
            f"(schedule {e.rule.expr!r})"
        )
        log.warning("%s", message)
        self.overdue.append(message)
        cfg = self.service.registry.app(e.app or "")
        if cfg is None or not any("overdue" in n.on for n in cfg.notify):
            return
        from casbackup.notify import Event

        # One report per run of missed runs (a backup failing every 15 minutes all weekend
        # is one piece of news), told again once a day while it lasts.
        told = self._last(f"told:{e.key}")
        if told is not None and dt.timedelta(0) <= now - told < dt.timedelta(seconds=REMIND_S):
            log.info("%s: the notifiers were told at %s that it is overdue, not again",
                     e.key, told.isoformat())  # fmt: skip
            return
        self._set_last(f"told:{e.key}", now)
        wanted = tuple(n for n in cfg.notify if "overdue" in n.on)
        event = Event("overdue", e.app or "", message)
        self._send_overdue(f"{e.key}@{due.isoformat()}", wanted, event, 1, now)

    def _send_overdue(self, key: str, notifiers: tuple[Any, ...], event: Any, attempt: int,
                      now: dt.datetime) -> None:  # fmt: skip
        """Send ``event`` (report ``key``) to ``notifiers`` in a thread of its own; those
        that fail (the network down at that moment, the receiver restarting) are asked again
        by the ticks ``OVERDUE_RETRY_S`` apart, up to ``OVERDUE_ATTEMPTS`` times: reported
        once means delivered once, not tried once and lost. Those that took it are not
        asked again."""
        from casbackup.notify import dispatch

        offline = self.service.registry.config.plugins.offline_mode

        def send() -> None:
            failed = tuple(n for n in notifiers if dispatch((n,), event, offline_mode=offline))
            with self._lock:
                if failed and attempt < OVERDUE_ATTEMPTS:
                    again = now + dt.timedelta(seconds=OVERDUE_RETRY_S)
                    self._undelivered[key] = (failed, event, attempt + 1, again)
                else:
                    self._undelivered.pop(key, None)

        worker = threading.Thread(target=send, name=f"notify-overdue-{event.app}", daemon=True)
        worker.start()
        self.notify_threads = [t for t in self.notify_threads if t.is_alive()] + [worker]

    def _resend_overdue(self, now: dt.datetime) -> None:
        """Ask again the notifiers an ``overdue`` could not reach (``_send_overdue``)."""
        with self._lock:
            # A retry further off than its spacing: the clock went back; it is due now.
            late = now + dt.timedelta(seconds=OVERDUE_RETRY_S)
            ready = [(k, v) for k, v in self._undelivered.items() if not now < v[3] <= late]
            for k, _v in ready:
                del self._undelivered[k]
        for key, (notifiers, event, attempt, _when) in ready:
            self._send_overdue(key, notifiers, event, attempt, now)

    def _rerun_cut_short(
        self, e: Entry, last: dt.datetime, now: dt.datetime, done: list[str]
    ) -> None:
        """At start-up: the schedule's last backup was cut short by the service's stop
        (killed: ``interrupted``; SIGTERM: ``cancelled`` with jobs.STOPPED_DURING) and nothing
        succeeded since. It was lost the way a missed run is, and runs again once now rather
        than at the next fire time; once per fire time, so a backup that brings the service
        down is not rerun at every restart."""
        row = self.service.db.one(
            "SELECT j.id, j.state, j.error, j.created_at FROM schedule_state s"
            " JOIN jobs j ON j.id = s.last_job WHERE s.key = ?",
            (e.key,),
        )
        if row is None or not (
            row["state"] == "interrupted"
            or (row["state"] == "cancelled" and str(row["error"]).startswith(STOPPED_DURING))
        ):
            return
        retried = self._last(f"retried:{e.key}")
        if retried is not None and retried >= last:
            return
        since = self.service.db.one(
            "SELECT 1 FROM jobs WHERE kind='backup' AND app=? AND state='succeeded'"
            " AND finished_at >= ? AND finished_at <= ? LIMIT 1",
            (e.app, row["created_at"], now.timestamp()),
        )
        if since is not None:
            return
        self._set_last(f"retried:{e.key}", last)
        job = self._fire(e, done, False, now,
                         what=f"rerun of job {row['id']}, cut short by the service's stop")  # fmt: skip
        if job is not None:
            self._set_last(e.key, last, job)

    def _fire(
        self, e: Entry, done: list[str], missed: bool, now: dt.datetime, what: str = ""
    ) -> int | None:
        jobs = self.service.jobs
        what = what or ("missed run" if missed else "run")
        submit = self._submit or (jobs.submit if jobs is not None else None)
        if submit is None:
            return None
        apps = (
            [e.app]
            if e.kind == "backup"
            else self._apps_of(e.repo)
            if e.kind == "verify"
            else self._retained_apps_of(e.repo)
            if e.kind == "forget"
            else [None]
        )
        if e.kind == "forget" and apps:
            apps.append(None)  # then one prune of the repository, queued after the forgets
        job_id = None
        for app in apps:
            kind = "prune" if e.kind == "forget" and app is None else e.kind
            if app is not None and jobs is not None and jobs.active_for(kind, app) is not None:
                _note(
                    done,
                    f"{e.key}: {app} is still running; this {what} is skipped",
                    logging.WARNING,
                )
                continue
            if app is None and jobs is not None and jobs.active_on(kind, e.repo) is not None:
                # A check (a prune) has no application: one at a time per repository all the same.
                _note(done, f"{e.key}: the last {kind} is still running; this {what} is skipped",
                      logging.WARNING)  # fmt: skip
                continue
            params: dict[str, Any] = {}
            if e.kind == "backup":
                cfg = self.service.registry.app(app or "")
                params = {"backup_type": cfg.default_backup_type if cfg else "incremental"}
            elif e.kind == "verify":
                params = {"snapshot": "latest"}
            elif e.kind == "check":
                params = {
                    "read_data_subset": rotate_subset(
                        self.service.settings.check_subset, now.astimezone(self.tz)
                    )
                }
            try:
                doc = submit(kind, app=app, params=params, created_by="scheduler", trigger="scheduler",
                             repo_key=e.repo)  # fmt: skip
            except CasError as exc:
                _note(done, f"{e.key}: could not start: {exc}", logging.WARNING)
                continue
            job_id = doc["id"] if isinstance(doc, dict) else None
            from casbackup.server.audit import AuditEntry, record

            record(self.service.db, AuditEntry(action=f"scheduled_{kind}", outcome="success", app=app,
                                               actor="scheduler", actor_kind="scheduler",
                                               # the job was queued; how it ends is the job's
                                               detail=f"queued job {job_id} ({what})"))  # fmt: skip
            _note(done, f"{e.key}: started {kind}{' of ' + app if app else ''} ({what})")
        return job_id

    def _apps_of(self, repo: str | None) -> list[str | None]:
        registry = self.service.registry
        return [a for a, k in registry.app_repo.items() if k == repo]

    def _retained_apps_of(self, repo: str | None) -> list[str | None]:
        """The applications of ``repo`` whose config gives a retention: the others' snapshots
        are kept (a forget job without a policy would only fail)."""
        registry = self.service.registry
        return [
            a for a in self._apps_of(repo)
            if (cfg := registry.app(a or "")) is not None and not cfg.retention.is_empty
        ]  # fmt: skip

    # ----------------------------------------------------------------- thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()  # it logs what it does
            except Exception:  # one bad tick must not end scheduling
                log.exception("scheduler tick failed")
            self._stop.wait(self.tick_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


def _note(done: list[str], line: str, level: int = logging.INFO) -> None:
    """What a tick did, for its caller and the log: a run that did not happen is a warning
    (``casbackup serve`` shows warnings, not info lines)."""
    done.append(line)
    log.log(level, "%s", line)


def rotate_subset(subset: str, now: dt.datetime) -> str:
    """``1/7`` becomes ``n/7`` with n moving on each day, so seven nightly checks read every
    pack once; other forms (``10%``, ``2G``, ``3/7``) are used as given."""
    m = re.fullmatch(r"1/(\d+)", subset.strip())
    if m is None:
        return subset
    parts = int(m.group(1))
    return f"{now.date().toordinal() % parts + 1}/{parts}"
