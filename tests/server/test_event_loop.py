"""The event loop never waits on the state database: while another process holds its write
lock (`casbackup user add`, a second service by mistake), requests that need the database wait
on a thread and every other request is still served."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from tests.server.conftest import Env

HOLD_S = 2.5


def _hold_write_lock(env: Env, held: threading.Event) -> None:
    """Another connection, as another process would, takes the write lock for HOLD_S."""
    conn = sqlite3.connect(env.service.db.path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    held.set()
    time.sleep(HOLD_S)
    conn.execute("COMMIT")
    conn.close()


@pytest.mark.parametrize(
    "request_kind",
    [
        "audited",  # a state-changing request: its audit entry is written when it ends
        "token",  # a token's first use in a minute records its last use
        "login",  # a login creates a session
    ],
)
def test_a_locked_state_database_does_not_stall_other_requests(env: Env, request_kind: str) -> None:
    if request_kind == "token":
        env.service.db.execute("UPDATE tokens SET last_used_at = NULL")
    else:  # the token's use is recorded now: only the audit entry (or the login) waits below
        assert env.client.get("/api/auth/me", headers=env.h("viewer")).status_code == 200
    held = threading.Event()
    holder = threading.Thread(target=_hold_write_lock, args=(env, held))
    holder.start()
    held.wait(5)
    answers: list[int] = []

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

    start = time.monotonic()
    waiter = threading.Thread(target=blocked_request)
    waiter.start()
    time.sleep(0.3)  # the request above is now waiting on the lock
    r = env.client.get("/healthz")
    served_after = time.monotonic() - start
    assert r.status_code == 200
    assert served_after < HOLD_S - 0.5, f"/healthz waited {served_after:.1f} s behind the lock"
    assert answers == []  # the other request was indeed still waiting
    waiter.join(30)
    holder.join(30)
    assert answers and answers[0] in (200, 204)
