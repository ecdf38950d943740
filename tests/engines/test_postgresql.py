"""PostgreSQL engine against the real server: round trips, quoting, credentials, failures."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time

import pytest

from casbackup.engines import get_engine, postgresql
from casbackup.engines.base import DatabaseSpec
from casbackup.engines.claims import temporary_name
from casbackup.engines.postgresql import PostgresEngine, conninfo
from casbackup.errors import DatabaseError
from tests.engines.conftest import (
    BrokenAfter,
    pg_copy,
    pg_ident,
    pg_spec,
    psql,
    read_in_pieces,
    unique,
)

SCHEMA = """
CREATE TABLE people (
    id integer PRIMARY KEY,
    name text NOT NULL,
    note text,
    score numeric(14, 4),
    ratio double precision,
    born date,
    seen timestamptz,
    photo bytea,
    active boolean
);
INSERT INTO people
SELECT i,
       'Zoë ' || i || ' 日本語 ✓ ' || repeat('é', i % 7),
       CASE WHEN i % 5 = 0 THEN NULL ELSE 'line1' || chr(10) || 'tab' || chr(9) || '\\' END,
       (i * 12.3456)::numeric(14, 4),
       CASE WHEN i % 11 = 0 THEN NULL ELSE i / 7.0 END,
       DATE '1970-01-01' + i,
       TIMESTAMPTZ '2024-02-29 12:34:56.789+00' + i * INTERVAL '1 minute',
       CASE WHEN i % 3 = 0 THEN NULL
            ELSE decode(md5(i::text) || md5((i + 1)::text), 'hex') || '\\x00ff00'::bytea END,
       i % 2 = 0
FROM generate_series(1, 3000) AS i;
CREATE SCHEMA "Other schema";
CREATE TABLE "Other schema"."odd ""name"" t" (id bigint PRIMARY KEY, payload jsonb, tags text[]);
INSERT INTO "Other schema"."odd ""name"" t"
SELECT i, jsonb_build_object('k', i, 'u', 'ünï'), ARRAY['a', NULL, 'c']
FROM generate_series(1, 1500) AS i;
CREATE TABLE nopk (v text);
INSERT INTO nopk SELECT 'x' || i FROM generate_series(1, 200) AS i;
CREATE VIEW people_view AS SELECT id, name FROM people WHERE active;
"""
TABLES = {"people": "id", '"Other schema"."odd ""name"" t"': "id", "nopk": "v"}
EXPECTED_COUNTS = {"public.people": 3000, 'Other schema.odd "name" t': 1500, "public.nopk": 200}


def snapshot_rows(database: str) -> dict[str, bytes]:
    return {t: pg_copy(database, t, order) for t, order in TABLES.items()}


def dump_bytes(spec: DatabaseSpec) -> tuple[bytes, object]:
    with get_engine("postgresql").dump(spec) as stream:
        data = read_in_pieces(stream)
        info = stream.finish()
    return data, info


def test_round_trip_every_row(pg_database: str, pg_cleanup: list[str]) -> None:
    psql(SCHEMA, pg_database)
    before = snapshot_rows(pg_database)
    engine = PostgresEngine()
    data, info = dump_bytes(pg_spec(pg_database))
    assert data.startswith(b"PGDMP")
    assert info.format == "pg-custom" and info.file_extension == "pgdump"
    assert info.server_version.startswith(psql("SHOW server_version;").strip().split()[0])
    assert info.row_counts == EXPECTED_COUNTS and info.row_counts_consistent
    assert info.size == len(data)

    engine.drop(pg_spec(pg_database))
    assert psql(f"SELECT 1 FROM pg_database WHERE datname = '{pg_database}';") == ""
    result = engine.restore(pg_spec(pg_database), io.BytesIO(data))
    assert result.row_counts == EXPECTED_COUNTS
    assert result.bytes_read == len(data)
    assert snapshot_rows(pg_database) == before
    assert psql("SELECT count(*) FROM people_view;", pg_database).strip() == "1500"


def test_names_that_need_quoting(pg_server: None, pg_cleanup: list[str]) -> None:
    source = unique("my-db \"x\" 'y' a=b $1;")
    target = unique("restored \\ 'it''s' \"q\"")
    pg_cleanup += [source, target]
    psql(f"CREATE DATABASE {pg_ident(source)};")
    psql("CREATE TABLE \"t;'x\" (id int PRIMARY KEY, v text); "
         "INSERT INTO \"t;'x\" SELECT i, md5(i::text) FROM generate_series(1, 500) i;",
         source)  # fmt: skip
    engine = PostgresEngine()
    data, info = dump_bytes(pg_spec(source))
    assert info.row_counts == {"public.t;'x": 500}
    engine.restore(pg_spec(target), io.BytesIO(data))
    assert engine.row_counts(pg_spec(target)) == {"public.t;'x": 500}
    assert pg_copy(target, '"t;\'x"') == pg_copy(source, '"t;\'x"')


def test_password_goes_to_env_never_argv(pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Trust auth ignores passwords, so prove where it travels by watching every child started.
    psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);", pg_database)
    secret = 's3cr\'et $x; "q" `id`'
    monkeypatch.setenv("CASB_TEST_PGPW", secret)
    seen: list[tuple[list[str], dict[str, str]]] = []
    real_popen = subprocess.Popen

    def spy(argv: list[str], *args: object, **kw: object) -> subprocess.Popen[bytes]:
        seen.append((list(argv), dict(kw.get("env") or os.environ)))  # type: ignore[call-overload]
        return real_popen(argv, *args, **kw)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(subprocess, "Popen", spy)
    dump_bytes(pg_spec(pg_database, password_env="CASB_TEST_PGPW"))
    tools = {os.path.basename(argv[0]) for argv, _ in seen}
    assert {"psql", "pg_dump"} <= tools
    for argv, env in seen:
        assert not any("s3cr" in a for a in argv), argv
        if "--version" not in argv:  # every child that connects gets it, and cannot prompt
            assert env["PGPASSWORD"] == secret
            assert "--no-password" in argv


def test_conninfo_quotes_values() -> None:
    spec = DatabaseSpec("n", "postgresql", host="h", port=1, user="u'x", database="a b\\'c")
    assert conninfo(spec).startswith("host='h' port='1' user='u\\'x' dbname='a b\\\\\\'c'")


def test_missing_database_fails(pg_server: None) -> None:
    with pytest.raises(DatabaseError, match=r"psql exited with status 2: .*does not exist"):
        PostgresEngine().dump(pg_spec(unique("casb_missing")))


def test_database_without_tables_is_refused(pg_database: str) -> None:
    with pytest.raises(DatabaseError, match="has no tables; refusing to record an empty dump"):
        PostgresEngine().dump(pg_spec(pg_database))
    spec = pg_spec(pg_database, options={"allow_empty": "true"})
    data, info = dump_bytes(spec)
    assert data.startswith(b"PGDMP") and info.row_counts == {}


def _make_big(database: str) -> None:
    # About 4 MB: far more than a pipe buffer, so pg_dump is still running when we kill it.
    psql("CREATE TABLE big (id int PRIMARY KEY, b bytea); INSERT INTO big SELECT i, "
         "decode(repeat(md5(i::text), 32), 'hex') FROM generate_series(1, 8000) i;",
         database)  # fmt: skip


def test_tool_killed_mid_stream_fails(pg_database: str) -> None:
    _make_big(pg_database)
    stream = PostgresEngine().dump(pg_spec(pg_database))
    with stream:
        assert len(stream.read(4096)) > 0
        os.kill(stream.pid, signal.SIGKILL)
        read_in_pieces(stream)
        with pytest.raises(DatabaseError, match="pg_dump was killed by signal 9"):
            stream.finish()


def test_finish_before_eof_fails_and_close_reaps(pg_database: str) -> None:
    _make_big(pg_database)
    stream = PostgresEngine().dump(pg_spec(pg_database))
    stream.read(1000)
    with pytest.raises(DatabaseError, match="before the dump was read to EOF"):
        stream.finish()
    stream.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(stream.pid, os.WNOHANG)  # already reaped: no zombie left


def test_abort_kills_the_tool(pg_database: str) -> None:
    _make_big(pg_database)
    with PostgresEngine().dump(pg_spec(pg_database)) as stream:
        stream.read(100)
        pid = stream.pid
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def test_missing_tool(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DatabaseError, match="pg_dump not found on PATH"):
        PostgresEngine().check_available()
    with pytest.raises(DatabaseError, match="pg_dump not found on PATH"):
        PostgresEngine().dump(pg_spec("whatever"))


def test_client_older_than_server_is_refused(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    psql("CREATE TABLE t (id int);", pg_database)
    monkeypatch.setattr(PostgresEngine, "client_version", lambda self, tool="pg_dump": 90600)
    with pytest.raises(DatabaseError, match=r"pg_dump 9 is older than the server \(\d+\)"):
        PostgresEngine().dump(pg_spec(pg_database))


def test_two_dumps_of_unchanged_data_nearly_identical(pg_database: str) -> None:
    psql(SCHEMA, pg_database)
    first, _ = dump_bytes(pg_spec(pg_database))
    second, _ = dump_bytes(pg_spec(pg_database))
    assert len(first) == len(second)
    differing = sum(1 for a, b in zip(first, second, strict=True) if a != b)
    # Measured: only the header's creation time differs (a few bytes).
    assert differing <= 16, differing


def test_restore_refuses_non_empty_target_unless_overwrite(pg_database: str) -> None:
    psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);", pg_database)
    engine = PostgresEngine()
    data, _ = dump_bytes(pg_spec(pg_database))
    with pytest.raises(DatabaseError, match="already exists and is not empty"):
        engine.restore(pg_spec(pg_database), io.BytesIO(data))
    psql("INSERT INTO t VALUES (3);", pg_database)
    engine.restore(pg_spec(pg_database), io.BytesIO(data), overwrite=True)
    assert engine.row_counts(pg_spec(pg_database)) == {"public.t": 2}


def test_bad_dump_fails_restore_and_leaves_nothing(pg_cleanup: list[str]) -> None:
    target = unique("casb_bad")
    pg_cleanup.append(target)
    engine = PostgresEngine()
    with pytest.raises(DatabaseError, match="pg_restore exited with status 1"):
        engine.restore(pg_spec(target), io.BytesIO(b"PGDMP this is not a dump"))
    # Not even an empty database: the load went into a temporary, dropped again.
    assert not psql(f"SELECT 1 FROM pg_database WHERE datname = '{target}';")


def test_overwrite_that_fails_keeps_the_existing_database(
    pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--overwrite replaces a database only once the new one is loaded: a dump that breaks
    mid-stream (a damaged pack, a killed restore) leaves the old data as it was. It used to
    DROP the database first, so a failed load left an empty one (found by killing
    `db restore --overwrite` mid-load: the live table was gone)."""
    psql("CREATE TABLE t (id int PRIMARY KEY, s text);"
         "INSERT INTO t SELECT g, repeat('x', 500) FROM generate_series(1, 2000) g;", pg_database)  # fmt: skip
    data, _ = dump_bytes(pg_spec(pg_database))
    psql("CREATE TABLE precious (v text); INSERT INTO precious VALUES ('keep me');", pg_database)
    temporary = temporary_name()
    monkeypatch.setattr(postgresql, "temporary_name", lambda: temporary)
    engine = PostgresEngine()
    with pytest.raises((DatabaseError, OSError)):
        engine.restore(pg_spec(pg_database), BrokenAfter(data, len(data) // 2), overwrite=True)
    assert psql("SELECT v FROM precious;", pg_database).strip() == "keep me"
    assert not psql(f"SELECT 1 FROM pg_database WHERE datname = '{temporary}';")  # dropped
    # And a whole dump still replaces it.
    engine.restore(pg_spec(pg_database), io.BytesIO(data), overwrite=True)
    assert engine.row_counts(pg_spec(pg_database)) == {"public.t": 2000}


def test_a_table_locked_past_lock_wait_timeout_fails_the_dump(pg_database: str) -> None:
    """Found with a session holding ACCESS EXCLUSIVE on a table (a migration, a forgotten
    LOCK TABLE): the backup waited on the row counts for as long as the lock was held, for
    ever if it never was let go (killed by `timeout` after 20 s, still 'dumping database').
    options.lock_wait_timeout (default 60 s) now bounds the wait of the counts and of
    pg_dump, and the message says which option."""
    psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);", pg_database)
    locker = subprocess.Popen(
        ["psql", "-X", "-q", "-d", conninfo(pg_spec(pg_database)), "-c",
         "BEGIN; LOCK TABLE t IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(20); COMMIT;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(200):  # until the lock is held
            held = "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND "
            held += "relation = 'public.t'::regclass;"
            if psql(held, pg_database).strip() == "1":
                break
            time.sleep(0.05)
        with pytest.raises(DatabaseError, match=r"options.lock_wait_timeout = 1 s"):
            dump_bytes(pg_spec(pg_database, options={"lock_wait_timeout": "1"}))
    finally:
        locker.kill()
        locker.wait()
        psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
             f"'{pg_database}' AND pid <> pg_backend_pid();")  # fmt: skip
    assert postgresql.check_option("lock_wait_timeout", "0")
    assert postgresql.check_option("lock_wait_timeout", "1 min")
    assert postgresql.check_option("lock_wait_timeout", "30") is None
