"""State database, accounts, tokens and sessions (no HTTP)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from casbackup.errors import NotFound, UnsupportedFormat, UsageError
from casbackup.server.accounts import Accounts, make_hasher, parse_duration
from casbackup.server.statedb import MIGRATIONS, StateDB


def accounts(tmp_path: Path) -> Accounts:
    return Accounts(StateDB(tmp_path / "st"), make_hasher(cheap=True))


def test_migrations_run_once_and_record_the_version(tmp_path: Path) -> None:
    db = StateDB(tmp_path)
    assert db.version == len(MIGRATIONS)
    db.close()
    again = StateDB(tmp_path)
    assert again.migrate() == len(MIGRATIONS)  # nothing left to do
    tables = {r[0] for r in again.query("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"users", "tokens", "sessions", "jobs", "job_log", "audit", "schedule_state"} <= tables


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    StateDB(tmp_path).close()
    conn = sqlite3.connect(tmp_path / "state.sqlite3")
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(UnsupportedFormat, match="upgrade casbackup"):
        StateDB(tmp_path)


def test_state_file_is_private(tmp_path: Path) -> None:
    StateDB(tmp_path).close()
    assert (tmp_path / "state.sqlite3").stat().st_mode & 0o077 == 0


def test_passwords_are_argon2id_and_verified(tmp_path: Path) -> None:
    a = accounts(tmp_path)
    a.add_user("alice", "s3cret-pass", "viewer")
    row = a.db.one("SELECT password_hash FROM users WHERE name='alice'")
    assert row is not None and row[0].startswith("$argon2id$")
    assert a.authenticate("alice", "s3cret-pass") is not None
    assert a.authenticate("alice", "wrong-pass") is None
    assert a.authenticate("nobody", "s3cret-pass") is None


def test_bad_users_are_refused(tmp_path: Path) -> None:
    a = accounts(tmp_path)
    with pytest.raises(UsageError, match="role"):
        a.add_user("bob", "long-enough", "root")
    with pytest.raises(UsageError, match="at least 8"):
        a.add_user("bob", "short", "viewer")
    with pytest.raises(UsageError, match="user name"):
        a.add_user("../bob", "long-enough", "viewer")
    a.add_user("bob", "long-enough", "viewer")
    with pytest.raises(UsageError, match="already exists"):
        a.add_user("bob", "long-enough", "viewer")


def test_tokens_store_only_a_hash_and_expire_and_revoke(tmp_path: Path) -> None:
    a = accounts(tmp_path)
    a.add_user("alice", "s3cret-pass", "operator")
    text, tok = a.create_token("alice", "ci", expires_in_s=60)
    secret = text.rsplit("_", 1)[1]
    raw = (tmp_path / "st" / "state.sqlite3").read_bytes()
    assert secret.encode() not in raw and text.encode() not in raw
    assert a.check_token(text) is not None
    assert a.check_token(text[:-1] + ("A" if text[-1] != "A" else "B")) is None  # wrong secret
    assert a.check_token(text, now=time.time() + 61) is None  # expired
    a.revoke_token(tok.id)
    assert a.check_token(text) is None
    assert a.check_token("garbage") is None


def test_token_apps_cannot_exceed_the_users(tmp_path: Path) -> None:
    a = accounts(tmp_path)
    a.add_user("carol", "s3cret-pass", "operator", ["shop"])
    with pytest.raises(UsageError, match="blog"):
        a.create_token("carol", apps=["blog"])


def test_token_names_are_printable_text(tmp_path: Path) -> None:
    """A token's label is shown in lists and pages: not bytes that are not UTF-8 (`token
    create --name` with one failed with a traceback writing it to SQLite), nor controls."""
    a = accounts(tmp_path)
    a.add_user("dave", "s3cret-pass", "operator")
    for bad in ("t\udcff", "a\nb", "x" * 101):
        with pytest.raises(UsageError, match="token name"):
            a.create_token("dave", bad)
    assert a.create_token("dave", "ci: nightly \u00e9")[1].name == "ci: nightly \u00e9"
    assert a.create_token("dave")[1].name == "token"


def test_a_token_lasts_at_most_100_years(tmp_path: Path) -> None:
    """99999999999d was stored; then every listing of tokens failed to show its expiry."""
    a = accounts(tmp_path)
    a.add_user("erin", "s3cret-pass", "operator")
    with pytest.raises(UsageError, match="100 years"):
        a.create_token("erin", expires_in_s=parse_duration("99999999999d"))
    assert a.tokens("erin") == []
    assert a.create_token("erin", expires_in_s=parse_duration("100y"))[1].expires_at is not None


def test_account_and_token_applications_are_application_names(tmp_path: Path) -> None:
    """'nope\\nx' was stored as a user's application (and shown in every list)."""
    a = accounts(tmp_path)
    for bad in (["nope\nx"], ["a/b"], ["x\udcff"], [" shop"]):
        with pytest.raises(UsageError, match="application name"):
            a.add_user("frank", "s3cret-pass", "operator", bad)
    a.add_user("frank", "s3cret-pass", "operator")
    with pytest.raises(UsageError, match="application name"):
        a.update_user("frank", apps=["a,b"])
    with pytest.raises(UsageError, match="application name"):
        a.create_token("frank", apps=["../x"])
    assert a.update_user("frank", apps=["shop-1.2"]).apps == ("shop-1.2",)


def test_an_empty_application_list_is_refused_not_every_application(tmp_path: Path) -> None:
    """[] meant every application: an admin who sent it to mean "none" granted everything."""
    a = accounts(tmp_path)
    with pytest.raises(UsageError, match="every application"):
        a.add_user("frank", "s3cret-pass", "operator", [])
    a.add_user("frank", "s3cret-pass", "operator", ["shop"])
    with pytest.raises(UsageError, match="every application"):
        a.update_user("frank", apps=[])
    with pytest.raises(UsageError, match="every application"):
        a.create_token("frank", apps=[])
    assert a.user("frank").apps == ("shop",) and a.tokens("frank") == []
    assert a.update_user("frank", apps=None).apps is None  # None (NULL): every application
    assert a.create_token("frank")[1].apps is None


def test_sessions_and_password_change(tmp_path: Path) -> None:
    a = accounts(tmp_path)
    user = a.add_user("alice", "s3cret-pass", "viewer")
    cookie, csrf = a.create_session(user, 60, "127.0.0.1")
    found = a.check_session(cookie)
    assert found is not None and found[1] == csrf
    assert a.check_session(cookie, now=time.time() + 61) is None
    a.set_password("alice", "another-pass")  # ends sessions
    assert a.check_session(cookie) is None
    a.remove_user("alice")
    with pytest.raises(NotFound):
        a.user("alice")


def test_parse_duration() -> None:
    assert parse_duration("90d") == 90 * 86400
    assert parse_duration("12h") == 12 * 3600
    for bad in ("", "0d", "d", "5x", "-1d", "1.5d"):
        with pytest.raises(UsageError):
            parse_duration(bad)


def test_the_last_admin_cannot_be_removed_or_demoted(tmp_path: Path) -> None:
    a = accounts(tmp_path)
    a.add_user("root", "s3cret-pass", "admin")
    with pytest.raises(UsageError, match="last admin"):
        a.remove_user("root")
    with pytest.raises(UsageError, match="last admin"):
        a.update_user("root", role="viewer")
    a.add_user("second", "s3cret-pass", "admin")
    a.update_user("root", role="viewer")
    with pytest.raises(UsageError, match="last admin"):
        a.remove_user("second")


def test_a_password_that_is_not_utf8_is_refused_not_a_crash(tmp_path: Path) -> None:
    """helper-57's weak list, reproduced: `printf '\\xff\\xfe...' | casbackup user add bob
    --password-stdin` ended in a UnicodeEncodeError traceback from the hasher (the bytes
    arrive as lone surrogates); a JSON login or user with a lone surrogate escape did too."""
    a = accounts(tmp_path)
    odd = "\udcff\udcfeabcdefgh"
    with pytest.raises(UsageError, match="not UTF-8 text"):
        a.add_user("bob", odd, "viewer")
    a.add_user("bob", "long-enough", "viewer")
    with pytest.raises(UsageError, match="not UTF-8 text"):
        a.set_password("bob", odd)
    assert a.authenticate("bob", odd) is None
    assert a.authenticate("nobody", odd) is None
