"""Background jobs: queued, run in worker processes, recorded in the state database.

States: ``queued`` -> ``running`` -> ``succeeded`` | ``failed`` | ``cancelled``; a job that was
running (or waiting) when the service stopped without finishing it becomes ``interrupted`` at
the next start, never ``succeeded`` and never dropped.

Concurrency: jobs that write to a repository (``WRITERS``) run one at a time per repository, in
the order they were submitted; the others wait in the queue, visible through the API. Jobs on
different repositories run in parallel, and read-only jobs do not wait. "Per repository" is
by the repository's identity (its id, ``RepoHandle.identity``), not by the key or spelling
of its location: two configured locations of one repository share one queue, so a prune
never starts beside a backup there and fails on its lock. The repository's own locks still
apply inside each worker, so a CLI run at the same time is kept out the usual way.

Each job is a thread here that starts ``python -m casbackup.server.worker``, feeds it the job
(password over the pipe), and turns its JSON lines into progress rows, log rows and events
(job_process.py: the worker's protocol and how its end becomes the job's).
Stopping a job (a user's cancel, the service's stop, or its maximum run time) is what Ctrl-C
does to ``casbackup backup`` at a terminal, to the worker and its database tools alike:
running.py.

A failed backup's notifiers hear of it from the worker (``BackupNotice``), or from here
(notices.py) when the worker could not tell them; so do those of a backup the service's stop
cut short, during the stop or at the next start.
"""

from __future__ import annotations

import json
import logging
import signal
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Any

import casbackup.server.running as running_mod
from casbackup.errors import CasError, StorageError, UsageError
from casbackup.server import job_process
from casbackup.server.job_records import FINISHED, KINDS, JobRecords, job_doc
from casbackup.server.notices import Notices
from casbackup.server.running import WRITERS, Log, Running, max_run_time
from casbackup.threadsig import quiet_thread

if TYPE_CHECKING:
    from casbackup.server.service import Service

log = logging.getLogger("casbackup.server.jobs")

# Writers that take the repository's exclusive lock: they start only when no job of any kind
# runs on the repository, and jobs queued after them wait (a reader's shared lock would make
# them fail at once, and theirs would fail the reader).
EXCLUSIVE = frozenset({"forget", "prune", "repair", "tag", "rewrite"})
PROGRESS_INTERVAL_S = 1.0  # progress rows written to the database at most this often
LOG_LIMIT = 2000  # log lines kept per job: a run with a million unreadable files stays bounded
# The error of a job the service's own stop cancelled (not a user): the scheduler reruns it.
STOPPED_DURING = "the service stopped during this job"
# Restore drills: one cut short (a stop, a cancel of a scheduled one) is told as a failure.
DRILLS = frozenset({"verify", "check"})
NOTIFY_AT_STOP_S = 20.0  # how long a stop waits for the notifiers of the backups it cut short


def _quiet(log: Log) -> Log:
    """``log``, except that its own failure (the state database's) is dropped, not raised."""

    def write(level: str, message: str) -> None:
        try:
            log(level, message)
        except Exception:  # noqa: BLE001 (only the log line is lost)
            pass

    return write


class JobManager(JobRecords):
    """Submits, queues, runs and stops jobs; what they are and were is read through
    `JobRecords` (job_records.py), which this extends."""

    def __init__(self, service: Service) -> None:
        super().__init__(service.db)
        self.service = service
        self._lock = threading.Lock()
        self._running: dict[int, Running] = {}
        self._busy_repos: set[str] = set()  # identities of repositories a writer holds
        self._queues: dict[str, str] = {}  # repository key -> identity, learned by submit
        self._threads: list[threading.Thread] = []
        self._stopping = False
        self._last_progress: dict[int, float] = {}
        # A job's latest progress the interval kept out of the database: written with the
        # job's end, so a finished job never shows an early "1/5256 files".
        self._unsaved_progress: dict[int, dict[str, Any]] = {}
        self.notices = Notices(service)
        self._unsaved_ends: dict[int, tuple[Any, ...]] = {}  # job ends the database refused
        self._history_pruned: float | None = None  # monotonic time of the last pruning

    @property
    def notify_threads(self) -> list[threading.Thread]:
        """The threads sending notifications from the service (tests join them)."""
        return self.notices.threads

    # ----------------------------------------------------------------- lifecycle
    def recover_interrupted(self) -> int:
        """At start-up: jobs left queued or running by a previous process become interrupted;
        the notifications owed for lost backups are sent (once: a notifier that fails now is
        not asked again at every start)."""
        now = time.time()
        lost = self.db.query(
            "SELECT id, app, state, created_at, started_at FROM jobs WHERE kind='backup'"
            " AND state IN ('queued','running') ORDER BY id"
        )
        cur = self.db.execute(
            "UPDATE jobs SET state='interrupted', finished_at=?, error=COALESCE(error, "
            "'the service stopped before this job finished') WHERE state IN ('queued','running')",
            (now,),
        )
        # A backup lost to a crash or a power cut is a failure its notifiers hear of now, not
        # only (if they listen for it) as 'overdue' at the schedule's next fire time.
        # Told maybe hours later: the message says which backup, when, in the user's zone.
        when = self.notices.when
        for r in lost:
            if r["state"] == "running":
                message = (f"the service stopped before this backup finished (job {r['id']}, "
                           f"started {when(r['started_at'])})")  # fmt: skip
            else:
                message = (f"the service stopped before this backup of {r['app']} started "
                           f"(job {r['id']}, queued {when(r['created_at'])}): it did not run")  # fmt: skip
            self.notices.owe(r["id"], message)
        self.notices.send_owed(only_if_delivered=False)
        # Not in the start-up's way: a first pruning of years of jobs takes seconds.
        quiet_thread(self.prune_history, name="job-history").start()
        return cur.rowcount

    def prune_history(self) -> None:
        """Delete old finished jobs (history.py), at most once per ``PRUNE_EVERY_S``; a
        failure (the state database's disk full) is logged and tried again later."""
        from casbackup.server import history

        mono = time.monotonic()
        with self._lock:
            if (
                self._history_pruned is not None
                and mono - self._history_pruned < history.PRUNE_EVERY_S
            ):
                return
            self._history_pruned = mono
        try:
            history.prune_job_history(
                self.db, self.service.settings.job_history_s, self.service.clock()
            )
        except sqlite3.Error:
            log.exception("old jobs could not be deleted from the history")

    def _interrupt_queued(self) -> list[Any]:
        waiting = self.db.query(
            "SELECT id, app, created_at FROM jobs WHERE kind='backup' AND state='queued'"
            " ORDER BY id"
        )
        self.db.execute(
            "UPDATE jobs SET state='interrupted', finished_at=?, error='the service stopped "
            "before this job started' WHERE state='queued'",
            (time.time(),),
        )
        return waiting

    def shutdown(self, timeout: float | None = None) -> None:
        """Cancel running jobs (recorded as cancelled) and mark queued ones interrupted."""
        with self._lock:
            self._stopping = True
            running = list(self._running.values())
        for r in running:
            # A cancel like the API's: a worker that dies of the signal before it can answer
            # (still importing, say) is then recorded cancelled, not failed.
            r.by_service = not r.cancel_requested  # a user's cancel stays the user's
            r.cancel_requested = True
            r.stop("the service is stopping", self._logger(r.job_id))
        deadline = time.monotonic() + (running_mod.CANCEL_GRACE_S if timeout is None else timeout)
        for t in list(self._threads):
            t.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            leftovers = list(self._running.values())
        for r in leftovers:
            r.signal(signal.SIGKILL)
        for t in list(self._threads):
            t.join(5)
        try:
            waiting = self._interrupt_queued()
        except StorageError as exc:
            # A full state disk: the next start marks them (recover_interrupted) and owes
            # their notices; the stop goes on.
            log.warning("queued jobs not marked interrupted: %s", exc)
            waiting = []
        for row in waiting:
            self.notices.owe(row["id"], f"the service stopped before this backup of {row['app']} "
                             f"started (job {row['id']}, queued {self.notices.when(row['created_at'])}):"
                             " it did not run")  # fmt: skip
        deadline = time.monotonic() + NOTIFY_AT_STOP_S
        self.notices.send_owed(only_if_delivered=True, wait=NOTIFY_AT_STOP_S)
        for t in list(self.notices.threads):  # the drills cut short: told before the exit
            t.join(max(0.0, deadline - time.monotonic()))

    # ----------------------------------------------------------------- submit
    def submit(
        self,
        kind: str,
        *,
        app: str | None,
        params: dict[str, Any],
        created_by: str | None,
        user_id: int | None = None,
        trigger: str = "api",
        repo_key: str | None = None,
    ) -> dict[str, Any]:
        """Queue a job; it starts as soon as its repository allows. Returns the job document."""
        return self.submit_once(kind, app=app, params=params, created_by=created_by,
                                user_id=user_id, trigger=trigger, repo_key=repo_key,
                                reuse_queued=False)[0]  # fmt: skip

    def submit_once(
        self,
        kind: str,
        *,
        app: str | None,
        params: dict[str, Any],
        created_by: str | None,
        user_id: int | None = None,
        trigger: str = "api",
        repo_key: str | None = None,
        reuse_queued: bool = True,
    ) -> tuple[dict[str, Any], bool]:
        """(job document, whether it is new): as ``submit``, except that with ``reuse_queued``
        a job of the same kind, application and parameters that is still queued (not yet
        started) is returned instead of a second one, decided under the lock: two people
        clicking "Back up now" at once queue one backup, not two."""
        if kind not in KINDS:
            raise UsageError(f"unknown job kind {kind!r}")
        registry = self.service.registry
        repo = registry.key(repo_key or registry.repo_key_for(app))  # NotFound if unknown
        identity = registry.handle(repo).identity()  # may read the storage: not under the lock
        encoded = json.dumps(params, sort_keys=True)
        with self._lock:
            if self._stopping:
                raise UsageError("the service is stopping: no new jobs")
            self._queues[repo] = identity
            same = self.db.query(
                "SELECT id FROM jobs WHERE state='queued' AND kind=? AND app IS ? AND repo=? "
                "AND params=? ORDER BY id LIMIT 1", (kind, app, repo, encoded),
            ) if reuse_queued else []  # fmt: skip
            if not same:
                cur = self.db.execute(
                    "INSERT INTO jobs (kind, app, repo, params, state, created_by, created_by_user,"
                    " created_at, trigger) VALUES (?,?,?,?,?,?,?,?,?)",
                    (kind, app, repo, encoded, "queued", created_by, user_id, time.time(), trigger),
                )  # fmt: skip
        if same:
            return self.get(int(same[0]["id"])), False
        job_id = int(cur.lastrowid or 0)
        doc = self.get(job_id)
        self.service.events.publish("job.created", doc, app)
        self._dispatch()
        return doc, True

    def active_for(self, kind: str, app: str) -> dict[str, Any] | None:
        """A queued or running job of this kind for this app (the scheduler never starts a
        second run of one application)."""
        self._retry_unsaved_ends()
        with self._lock:
            ended = set(self._unsaved_ends)
        rows = self.db.query(
            "SELECT * FROM jobs WHERE kind=? AND app=? AND state IN ('queued','running')",
            (kind, app),
        )
        row = next((r for r in rows if r["id"] not in ended), None)
        return None if row is None else job_doc(row)

    # ----------------------------------------------------------------- cancel
    def cancel(self, job_id: int) -> dict[str, Any]:
        """Cancel a queued job at once, or ask a running one to stop (state follows)."""
        doc = self.get(job_id)
        if doc["state"] == "queued":
            cur = self.db.execute(
                "UPDATE jobs SET state='cancelled', finished_at=?, error='cancelled before it started'"
                " WHERE id=? AND state='queued'",
                (time.time(), job_id),
            )
            if cur.rowcount:
                doc = self.get(job_id)
                self.service.events.publish("job.finished", doc, doc["app"])
                return doc
        with self._lock:
            r = self._running.get(job_id)
        if r is None:
            doc = self.get(job_id)
            if doc["state"] in FINISHED:
                raise UsageError(f"job {job_id} has already finished ({doc['state']})")
            return doc
        r.cancel_requested = True
        r.stop("cancelled", self._logger(job_id))
        self._log(job_id, "info", "cancel requested")
        return self.get(job_id)

    # ----------------------------------------------------------------- running
    def _dispatch(self) -> None:
        """Start every queued job whose repository is free (writers) or any (readers)."""
        self._retry_unsaved_ends()
        while True:
            with self._lock:
                if self._stopping:
                    return
                rows = self.db.query("SELECT * FROM jobs WHERE state='queued' ORDER BY id")
                chosen = None
                blocked: set[str] = set(self._busy_repos)
                in_use = {r.repo_queue for r in self._running.values()}
                # No job starts on a repository an exclusive job holds or waits for.
                held = {r.repo_queue for r in self._running.values() if r.exclusive}
                for row in rows:
                    if row["id"] in self._running:
                        continue
                    queue = self._queue_of(row["repo"])
                    if queue in held:
                        continue
                    if row["kind"] in EXCLUSIVE:
                        held.add(queue)  # whether it starts now or waits: later jobs wait
                        if queue in blocked or queue in in_use:
                            continue
                    elif row["kind"] in WRITERS:
                        if queue in blocked:
                            continue
                        # Later writers wait behind this one (FIFO).
                        blocked.add(queue)
                    chosen = row
                    break
                if chosen is None:
                    return
                started_at = time.time()
                claimed = self.db.execute(
                    "UPDATE jobs SET state='running', started_at=? WHERE id=? AND state='queued'",
                    (started_at, chosen["id"]),
                )
                if not claimed.rowcount:
                    continue  # cancelled between the query and now: look again
                running = Running(chosen["id"])
                running.repo_queue = self._queue_of(chosen["repo"])
                running.exclusive = chosen["kind"] in EXCLUSIVE
                if chosen["kind"] in WRITERS:
                    running.queue = self._queue_of(chosen["repo"])
                    self._busy_repos.add(running.queue)
                self._running[chosen["id"]] = running
                thread = threading.Thread(
                    target=self._run, name=f"job-{chosen['id']}",
                    args=(running, dict(chosen) | {"state": "running", "started_at": started_at}),
                    daemon=True,
                )  # fmt: skip
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            self.service.events.publish("job.started", self.get(chosen["id"]), chosen["app"])
            thread.start()

    def _queue_of(self, repo: str) -> str:
        """The queue of jobs on repository key ``repo``: its identity, as submit learned it."""
        return self._queues.get(repo, repo)

    def _run(self, running: Running, row: dict[str, Any]) -> None:
        job_id = row["id"]
        state, error, exit_code, result = "failed", None, None, None
        try:
            state, error, exit_code, result = self._execute(running, row)
        except CasError as exc:  # before the worker ran (a password env var gone): one line
            error, exit_code = str(exc), exc.exit_code
        except Exception as exc:  # the job fails; the service goes on
            log.exception("job %d: the service failed while running it", job_id)
            error = f"the service failed while running the job: {type(exc).__name__}: {exc}"
        finally:
            # Notifications first: whoever sees the job's end can find them under way.
            if state == "failed":
                self.notices.failures(row, error, notified=running.notified, result=result)
            elif state == "succeeded" and row["kind"] == "backup":
                self.notices.succeeded(row, result)
            elif state == "cancelled" and running.by_service and row["kind"] == "backup":
                # Sent by ``shutdown`` once every job has ended (or at the next start).
                self.notices.owe(job_id, f"the service stopped during this backup of {row['app']} "
                                 f"(job {job_id}, started {self.notices.when(row['started_at'])}):"
                                 " it was cancelled and no snapshot was saved")  # fmt: skip
                if not self._stopping:  # the worker heard the stop first; or only it was told
                    self.notices.send_owed(only_if_delivered=True)
            elif (
                state == "cancelled"
                and row["kind"] in DRILLS
                and (running.by_service or row["trigger"] == "scheduler")
            ):
                # A drill that did not finish proves nothing: its notifiers hear it as a
                # failed one (a person who cancels a drill they started knows).
                self.notices.failures(row, f"cut short: {error}", notified=False)
            elif row["kind"] == "recover" and (
                (state == "cancelled" and running.by_service)
                or (state == "failed" and running.timed_out is not None)
            ):
                self._owe_recovery(row, error)
            snapshot_id = (result or {}).get("snapshot_id") if row["kind"] == "backup" else None
            unsaved = self._unsaved_progress.pop(job_id, None)
            self._record_end(job_id, (state, time.time(), error, exit_code,
                             None if result is None else json.dumps(result, default=str),
                             snapshot_id, None if unsaved is None else json.dumps(unsaved)))  # fmt: skip
            with self._lock:
                self._running.pop(job_id, None)
                if running.queue is not None:
                    self._busy_repos.discard(running.queue)
                self._last_progress.pop(job_id, None)
            if row["kind"] in WRITERS or row["kind"] == "backup":
                try:
                    self.service.registry.handle(row["repo"]).refresh()
                except CasError:
                    pass  # the next read reopens or reports it
            doc = self.get(job_id)
            self.service.events.publish("job.finished", doc, row["app"])
            self.prune_history()
            self._dispatch()

    def _execute(
        self, running: Running, row: dict[str, Any]
    ) -> tuple[str, str | None, int | None, Any]:
        log = self._logger(row["id"])
        proc = job_process.start(self.service, row)
        running.started(proc)
        try:
            if running.cancel_requested or self._stopping:
                running.stop("the service is stopping" if self._stopping else "cancelled", log)
            app = self.service.registry.app(row["app"]) if row["app"] else None
            running.limit(max_run_time(row, app, self.service.settings.max_run_time_s), log)
            return job_process.follow(
                running, proc,
                progress=lambda msg: self._progress(row, msg),
                log=lambda level, message: self._log(row["id"], level, message),
                cancelled=lambda message: self._cancelled(message, running),
            )  # fmt: skip
        except BaseException:
            # The service's side failed while the worker runs (found with a progress update
            # that raised): the job was recorded failed at once, and the worker, killed when
            # this thread ended (worker.die_with_parent), left its repository lock and its
            # work half done. It is stopped as a cancel stops it, at a safe point, and
            # waited for: its output read (a full pipe would hold it) until it ends.
            running.stop("the service could not follow the job", _quiet(log))
            for _line in running_mod.lines(proc, running):
                pass
            raise
        finally:
            running.ended()

    def _record_end(self, job_id: int, values: tuple[Any, ...]) -> None:
        """Write a job's end. When the state database cannot (its disk full), the end is kept
        and written again at the next dispatch; the job's thread still frees its repository,
        so later jobs run and the scheduler does not take the job for still running."""
        try:
            self.db.execute(
                "UPDATE jobs SET state=?, finished_at=?, error=?, exit_code=?, result=?,"
                " snapshot_id=?, progress=COALESCE(?, progress) WHERE id=?",
                (*values, job_id),
            )
        except sqlite3.Error:
            log.exception("job %d: its end could not be recorded; trying again later", job_id)
            with self._lock:
                self._unsaved_ends[job_id] = values
            return
        with self._lock:
            self._unsaved_ends.pop(job_id, None)

    def _retry_unsaved_ends(self) -> None:
        with self._lock:
            pending = list(self._unsaved_ends.items())
        for job_id, values in pending:
            self._record_end(job_id, values)

    def _owe_recovery(self, row: dict[str, Any], error: str | None) -> None:
        """Tell ``row``'s application that its recovery was cut short (the service's stop,
        a SIGTERM, its maximum run time): owed like a backup's stop notice, so a stop sends
        it before it ends, or the next start does."""
        self.notices.owe(row["id"], f"the service stopped during this recovery of {row['app']} "
                         f"(job {row['id']}, started {self.notices.when(row['started_at'])}): "
                         f"{error or 'cut short'}; its target may hold a partial recovery: run "
                         "the same recovery again to finish it")  # fmt: skip
        if not self._stopping:
            self.notices.send_owed(only_if_delivered=True)

    def _cancelled(self, message: str, running: Running) -> str:
        """A cancelled job's error: the service's stop says so (``STOPPED_DURING``)."""
        stopped = self._stopping or running.by_service
        return f"{STOPPED_DURING} ({message})" if stopped else message

    def _progress(self, row: dict[str, Any], progress: dict[str, Any]) -> None:
        job_id = row["id"]
        now = time.monotonic()
        self.service.events.publish("job.progress", {"id": job_id, "app": row["app"], "kind": row["kind"],
                                                     "progress": progress}, row["app"])  # fmt: skip
        if now - self._last_progress.get(job_id, 0.0) >= PROGRESS_INTERVAL_S:
            self._last_progress[job_id] = now
            self._unsaved_progress.pop(job_id, None)
            try:
                self.db.execute(
                    "UPDATE jobs SET progress=? WHERE id=?", (json.dumps(progress), job_id)
                )
                return
            except sqlite3.Error:  # a full state disk: the job goes on, its end records it
                pass
        self._unsaved_progress[job_id] = progress

    def _logger(self, job_id: int) -> Log:
        """The job's log as running.py writes to it."""
        return lambda level, message: self._log(job_id, level, message)

    def _log(self, job_id: int, level: str, message: str) -> None:
        try:
            # The count too: a state database that is locked or gone raised here, out of
            # the job's thread, which then left its worker behind (see _execute).
            row = self.db.one("SELECT COUNT(*) FROM job_log WHERE job_id=?", (job_id,))
            count = int(row[0]) if row else 0
            if count > LOG_LIMIT:
                return
            if count == LOG_LIMIT:
                level, message = "warning", "log truncated: further lines are not kept"
            self.db.execute("INSERT INTO job_log (job_id, time, level, message) VALUES (?,?,?,?)",
                            (job_id, time.time(), level, message[:2000]))  # fmt: skip
        except sqlite3.Error as exc:  # a full state disk: the line is lost, not the job
            log.warning("job %d: log line not kept (%s): %s", job_id, exc, message[:200])
        try:
            app_row = self.db.one("SELECT app FROM jobs WHERE id=?", (job_id,))
        except sqlite3.Error:
            return  # nor is it shown live
        self.service.events.publish(
            "job.log", {"id": job_id, "level": level, "message": message[:2000]},
            app_row[0] if app_row else None,
        )  # fmt: skip
