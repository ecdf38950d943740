"""The event loop never waits on the state database: while another process holds its write
lock (`casbackup user add`, a second service by mistake), requests that need the database wait
on a thread and every other request is still served.

Nothing here is timed: the lock is held until /healthz has answered, and the request that
needs the database must still be waiting then. An event loop stuck behind the lock serves
/healthz only once that request gave up (the service's 30 s busy timeout), so it has an
answer by then (a hang guard, far beyond any wait of a working service, even under load)."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from tests.server.conftest import Env

HANG_GUARD_S = 120.0  # seconds: only a hang ever reaches it


def _hold_write_lock(env: Env, held: threading.Event, release: threading.Event) -> None:
    """Another connection, as another process would, takes the write lock until `release`."""
    conn = sqlite3.connect(env.service.db.path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    held.set()
    release.wait(HANG_GUARD_S)
    conn.execute("COMMIT")
    conn.close()


def _note_writes(db, monkeypatch: pytest.MonkeyPatch) -> threading.Event:  # type: ignore[no-untyped-def]
    """An event set when a write to the service's database starts (one that waits on the
    lock held here), just before the call that waits: in the thread that makes it."""
    writing = threading.Event()

    def noted(name: str, is_write):  # type: ignore[no-untyped-def]
        method = getattr(db, name)

        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            if is_write(*args):
                writing.set()
            return method(*args, **kwargs)

        monkeypatch.setattr(db, name, call)

    def changes(sql: str, *_params: object) -> bool:
        return not sql.lstrip().upper().startswith(("SELECT", "PRAGMA"))

    for name in ("execute", "query", "one"):
        noted(name, changes)
    noted("transaction", lambda *_args: True)
    return writing


@pytest.mark.parametrize(
    "request_kind",
    [
        "audited",  # a state-changing request: its audit entry is written when it ends
        "token",  # a token's first use in a minute records its last use
        "login",  # a login creates a session
    ],
)
def test_a_locked_state_database_does_not_stall_other_requests(
    env: Env, request_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if request_kind == "token":
        env.service.db.execute("UPDATE tokens SET last_used_at = NULL")
    else:  # the token's use is recorded now: only the audit entry (or the login) waits below
        assert env.client.get("/api/auth/me", headers=env.h("viewer")).status_code == 200
    writing = _note_writes(env.service.db, monkeypatch)
    held, release = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(env, held, release))
    holder.start()
    answers: list[int] = []
    try:
        assert held.wait(HANG_GUARD_S)

        def blocked_request() -> None:
            if request_kind == "login":
                r = env.client.post(
                    "/api/auth/login", json={"username": "viewer", "password": "password-123"}
                )
            elif request_kind == "token":
                r = env.client.get("/api/jobs", headers=env.h("viewer"))
            else:
                r = env.client.post("/api/auth/logout", headers=env.h("viewer"))
            answers.append(r.status_code)

        waiter = threading.Thread(target=blocked_request)
        waiter.start()
        # The request is in its write, which waits on the lock held above.
        assert writing.wait(HANG_GUARD_S), "the request never wrote to the database"
        r = env.client.get("/healthz")
        assert r.status_code == 200
        # Served while the lock was still held and the other request still waited on it.
        assert answers == [], "/healthz was answered only after the request waiting on the lock"
    finally:
        release.set()
        holder.join(HANG_GUARD_S)
    waiter.join(HANG_GUARD_S)
    assert answers and answers[0] in (200, 204)
