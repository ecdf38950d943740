"""How long the state database keeps finished jobs (their rows and log lines).

A service that runs for years with a backup every 15 minutes finishes some 35,000 backup
jobs a year, each with its log: kept forever, the state database only grew. Finished jobs
older than the service's ``job_history_s`` (``--job-history``, 180 days by default) are
deleted, with their log lines, at start-up and then at most once an hour as jobs end.

Kept whatever their age: the newest finished job of each kind, application and repository
(the dashboard's last backup, and the last check that found damage and whose warning
stands until a check passes), a job whose failure notification is still owed (``notice``),
and every queued or running job. Nothing here is needed to restore: the snapshots and
verification records live in the repository.

The audit log's rows of the scheduler (``scheduled_backup``, one per run: as many as the
jobs) go after the same time; what people did (logins, backups, forgets, account changes)
stays in the audit log for good.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from casbackup.server.statedb import StateDB

log = logging.getLogger("casbackup.server.jobs")

PRUNE_EVERY_S = 3600.0  # the history is pruned at most this often while the service runs
BATCH = 500  # jobs deleted per statement: the database is not held for long at a time


def prune_job_history(db: StateDB, keep_s: float, now: float) -> int:
    """Delete the finished jobs that ended more than ``keep_s`` seconds before ``now`` (UTC
    epoch seconds), with their log lines, but those the module docstring keeps. Returns how
    many were deleted; ``keep_s`` <= 0 keeps everything. Raises sqlite3.Error."""
    if keep_s <= 0:
        return 0
    before = now - keep_s
    deleted = 0
    while True:
        cur = db.execute(
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE finished_at < ?"
            " AND state IN ('succeeded','failed','cancelled','interrupted') AND notice IS NULL"
            " AND id NOT IN (SELECT MAX(id) FROM jobs"
            "  WHERE state IN ('succeeded','failed','cancelled','interrupted')"
            "  GROUP BY kind, app, repo)"
            " ORDER BY id LIMIT ?)",
            (before, BATCH),
        )
        deleted += cur.rowcount
        if cur.rowcount < BATCH:
            break
    while True:
        cur = db.execute(
            "DELETE FROM audit WHERE id IN (SELECT id FROM audit WHERE actor_kind='scheduler'"
            " AND time < ? ORDER BY id LIMIT ?)",
            (before, BATCH),
        )
        if cur.rowcount < BATCH:
            break
    if deleted:
        log.info("deleted %d finished jobs older than %g days from the history", deleted,
                 keep_s / 86400)  # fmt: skip
    return deleted
