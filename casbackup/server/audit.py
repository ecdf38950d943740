"""The audit log: who did what, from where, to which application, with what outcome.

Every state-changing request (any method but GET/HEAD/OPTIONS) is recorded by the middleware in
app.py once its response status is known, logins included (success or failure); jobs the
scheduler starts are recorded with actor ``scheduler``; CLI account changes with actor ``cli``.
Secrets never reach this table: the request body is not recorded, only the route's action name
and the application it concerned.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from casbackup.server.statedb import StateDB
from casbackup.text import storable


@dataclass(frozen=True)
class AuditEntry:
    action: str
    outcome: str  # success | failure | denied
    actor: str | None = None
    actor_kind: str | None = None
    address: str | None = None
    method: str | None = None
    path: str | None = None
    app: str | None = None
    status: int | None = None
    detail: str | None = None


def record(db: StateDB, entry: AuditEntry, now: float | None = None) -> None:
    """Write ``entry``. Its text comes from the request (the application named in a refused
    request's raw body, a user name in the URL): text that is not valid UTF-8 (a JSON
    "\\udcff") is stored as ``storable`` shows it; SQLite refused it, and the entry was lost."""
    db.execute(
        "INSERT INTO audit (time, actor, actor_kind, address, method, path, action, app, status,"
        " outcome, detail) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
        (time.time() if now is None else now, *storable([entry.actor, entry.actor_kind,
         entry.address, entry.method, entry.path, entry.action, entry.app]), entry.status,
         entry.outcome, storable((entry.detail or "")[:500]) or None),
    )  # fmt: skip


def outcome_of(status: int) -> str:
    if status in (401, 403, 429):
        return "denied"
    return "success" if status < 400 else "failure"


def query(
    db: StateDB,
    *,
    limit: int = 100,
    before_id: int | None = None,
    actor: str | None = None,
    app: str | None = None,
    apps: frozenset[str] | None = None,
    outcome: str | None = None,
) -> list[dict[str, Any]]:
    """Newest first; ``before_id`` pages backwards. ``actor``: a user name (their tokens'
    entries included). ``apps`` limits to those applications; ``outcome`` to success |
    failure | denied."""
    sql = "SELECT * FROM audit WHERE 1=1"
    params: list[Any] = []
    if before_id is not None:
        sql += " AND id < ?"
        params.append(before_id)
    if actor is not None:
        # a user's own entries and those of their tokens ("name (token id)")
        sql += " AND (actor = ? OR actor LIKE ? ESCAPE '\\')"
        escaped = actor.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        params.extend((actor, escaped + " (token %"))
    if app is not None:
        sql += " AND app = ?"
        params.append(app)
    if outcome is not None:
        sql += " AND outcome = ?"
        params.append(outcome)
    if apps is not None:
        sql += f" AND app IN ({','.join('?' * len(apps))})"
        params.extend(sorted(apps))
    sql += " ORDER BY id DESC LIMIT ?"
    params.append(limit)
    return [dict(r) for r in db.query(sql, tuple(params))]
