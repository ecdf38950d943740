"""What the jobs are and were: the rows of the state database's ``jobs`` and ``job_log``
tables as the API, the dashboard and the metrics read them. No running state: the queue,
the workers and the stopping of jobs are jobs.py's (its `JobManager` extends `JobRecords`).
"""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import TYPE_CHECKING, Any

from casbackup.errors import NotFound
from casbackup.text import storable

if TYPE_CHECKING:
    from casbackup.server.statedb import StateDB

STATES = ("queued", "running", "succeeded", "failed", "cancelled", "interrupted")
FINISHED = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
KINDS = (
    "backup", "verify", "check", "restore", "forget", "prune", "recover", "unlock", "repair", "tag",
    "rewrite",
)  # fmt: skip
MAX_JOB_ID = 2**63 - 1  # SQLite's INTEGER range: a bigger id is no job


def _now_iso(t: float | None) -> str | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.UTC).isoformat()


def job_doc(row: Any) -> dict[str, Any]:
    """A job row as the API returns it."""
    started, finished = row["started_at"], row["finished_at"]
    duration = None
    # An interrupted job's end is when the next start noticed it, not when it stopped: how
    # long it ran is unknown (that difference would count the hours the service was down).
    if started is not None and row["state"] != "interrupted":
        duration = round((finished or time.time()) - started, 3)
        if duration < -1.0:  # the wall clock was set back while it ran: how long is unknown
            duration = None
        elif duration < 0:
            # A job that started an instant ago: its start was stamped by another process
            # (the worker) whose reading of the clock came a moment after this one's. None
            # here hid the running job's counter (the dashboard shows it only with a
            # duration: tests/server/test_dashboard_browser.py's cancel test timed out).
            duration = 0.0
    return {
        "id": row["id"], "kind": row["kind"], "app": row["app"], "repository": row["repo"],
        # Shown as text: a parameter may name a path that is not UTF-8 (a rewrite's exclude
        # "/x\\udcff" is a real pattern); the worker reads the row's exact params.
        "state": row["state"], "params": storable(json.loads(row["params"])),
        "created_by": row["created_by"], "trigger": row["trigger"],
        "created_at": _now_iso(row["created_at"]), "started_at": _now_iso(started),
        "finished_at": _now_iso(finished), "duration_s": duration,
        "progress": json.loads(row["progress"]) if row["progress"] else None,
        "result": json.loads(row["result"]) if row["result"] else None,
        "error": row["error"], "exit_code": row["exit_code"], "snapshot_id": row["snapshot_id"],
    }  # fmt: skip


class JobRecords:
    """Reads of the job tables; every method is safe from any thread."""

    def __init__(self, db: StateDB) -> None:
        self.db = db

    def active_on(self, kind: str, repo: str | None) -> dict[str, Any] | None:
        """A queued or running job of this kind on this repository (scheduled checks)."""
        row = self.db.one(
            "SELECT * FROM jobs WHERE kind=? AND repo=? AND state IN ('queued','running') LIMIT 1",
            (kind, repo),
        )
        return None if row is None else job_doc(row)

    def get(self, job_id: int) -> dict[str, Any]:
        """The job's document (``job_doc``); raises NotFound for an unknown id, any int (one
        past SQLite's 64-bit integers, from a page's URL, raised OverflowError: a 500)."""
        if not 1 <= job_id <= MAX_JOB_ID:
            raise NotFound(f"no job {job_id}")
        row = self.db.one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        if row is None:
            raise NotFound(f"no job {job_id}")
        return job_doc(row)

    def list(
        self,
        *,
        state: str | None = None,
        app: str | None = None,
        kind: str | None = None,
        apps: frozenset[str] | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[dict[str, Any]]:
        sql, params = "SELECT * FROM jobs WHERE 1=1", []
        for column, value in (("state", state), ("app", app), ("kind", kind)):
            if value is not None:
                sql += f" AND {column} = ?"
                params.append(value)
        if before_id is not None:
            sql += " AND id < ?"
            params.append(before_id)
        if apps is not None:  # app-scoped callers: only their applications' jobs
            sql += f" AND app IN ({','.join('?' * len(apps))})"
            params.extend(sorted(apps))
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit)
        return [job_doc(r) for r in self.db.query(sql, tuple(params))]

    def log(self, job_id: int, after_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        self.get(job_id)
        rows = self.db.query(
            "SELECT id, time, level, message FROM job_log WHERE job_id=? AND id>? ORDER BY id LIMIT ?",
            (job_id, after_id, limit),
        )
        return [{"id": r["id"], "time": _now_iso(r["time"]), "level": r["level"], "message": r["message"]}
                for r in rows]  # fmt: skip

    def counts(self) -> dict[str, int]:
        rows = self.db.query("SELECT state, COUNT(*) FROM jobs GROUP BY state")
        return {state: 0 for state in STATES} | {r[0]: r[1] for r in rows}

    def counts_by_app(self) -> list[tuple[str | None, str, str, int]]:
        """(app, kind, state, count) for the metrics."""
        rows = self.db.query(
            "SELECT app, kind, state, COUNT(*) FROM jobs GROUP BY app, kind, state"
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]
