"""Fixtures for the real PostgreSQL and MariaDB servers on this machine.

A server that is down skips its tests locally, but fails them under CI=true: a CI run that
silently skipped every database test would be a green run that proved nothing.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from casbackup.engines.base import DatabaseSpec
from casbackup.engines.mysql import MysqlEngine
from casbackup.engines.mysql import quote_ident as my_ident
from casbackup.engines.postgresql import PostgresEngine, conninfo
from casbackup.engines.postgresql import quote_ident as pg_ident

PG_HOST, PG_PORT, PG_USER = "127.0.0.1", 5432, os.environ.get("CASB_TEST_PGUSER", "postgres")
MY_HOST, MY_PORT, MY_USER = "127.0.0.1", 3306, "root"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def pg_server() -> None:
    if not shutil.which("pg_isready") or not shutil.which("pg_dump"):
        _unavailable("PostgreSQL client tools are not installed")
    probe = subprocess.run(
        ["pg_isready", "-h", PG_HOST, "-p", str(PG_PORT), "-q"], check=False, timeout=30
    )
    if probe.returncode != 0:
        _unavailable(f"PostgreSQL is not running at {PG_HOST}:{PG_PORT}")


@pytest.fixture(scope="session")
def mariadb_server() -> None:
    if not shutil.which("mariadb-admin") or not shutil.which("mariadb-dump"):
        _unavailable("MariaDB client tools are not installed")
    probe = subprocess.run(
        ["mariadb-admin", "-h", MY_HOST, "-P", str(MY_PORT), "-u", MY_USER, "ping"],
        capture_output=True,
        check=False,
        timeout=30,
    )
    if probe.returncode != 0:
        _unavailable(f"MariaDB is not running at {MY_HOST}:{MY_PORT}")


def pg_spec(database: str, **kw: object) -> DatabaseSpec:
    fields: dict[str, object] = {"host": PG_HOST, "port": PG_PORT, "user": PG_USER}
    fields.update(kw)
    return DatabaseSpec(name="pgtest", engine="postgresql", database=database, **fields)  # type: ignore[arg-type]


def my_spec(database: str, **kw: object) -> DatabaseSpec:
    fields: dict[str, object] = {"host": MY_HOST, "port": MY_PORT, "user": MY_USER}
    fields.update(kw)
    return DatabaseSpec(name="mytest", engine="mysql", database=database, **fields)  # type: ignore[arg-type]


def psql(sql: str, database: str = "postgres") -> str:
    """Run SQL as the admin user; returns unaligned, tuples-only output."""
    spec = pg_spec(database)
    out = subprocess.run(
        ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", conninfo(spec)],
        input=sql.encode(),
        capture_output=True,
        check=True,
    )
    return out.stdout.decode()


def pg_copy(database: str, table: str, order: str = "id") -> bytes:
    """Every row of a table, in order, as COPY text: exact for every type."""
    spec = pg_spec(database)
    sql = f"COPY (SELECT * FROM {table} ORDER BY {order}) TO STDOUT"
    return subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo(spec), "-c", sql],
        capture_output=True,
        check=True,
    ).stdout


def mariadb(sql: str, database: str | None = None) -> str:
    argv = ["mariadb", "-h", MY_HOST, "-P", str(MY_PORT), "-u", MY_USER, "--batch",
            "--skip-column-names", "--default-character-set=utf8mb4"]  # fmt: skip
    if database is not None:
        argv.append(f"--database={database}")
    out = subprocess.run(argv, input=sql.encode(), capture_output=True, check=True)
    return out.stdout.decode("utf-8", "replace")


@pytest.fixture
def pg_database(pg_server: None) -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database, dropped afterwards."""
    name = unique("casb_pg")
    psql(f"CREATE DATABASE {pg_ident(name)};")
    try:
        yield name
    finally:
        psql(f"DROP DATABASE IF EXISTS {pg_ident(name)};")


@pytest.fixture
def pg_cleanup(pg_server: None) -> Iterator[list[str]]:
    """Names appended here are dropped after the test, whatever happened."""
    names: list[str] = []
    yield names
    for name in names:
        PostgresEngine().drop(pg_spec(name))


@pytest.fixture
def my_database(mariadb_server: None) -> Iterator[str]:
    name = unique("casb_my")
    mariadb(f"CREATE DATABASE {my_ident(name)};")
    try:
        yield name
    finally:
        mariadb(f"DROP DATABASE IF EXISTS {my_ident(name)};")


@pytest.fixture
def my_cleanup(mariadb_server: None) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        MysqlEngine().drop(my_spec(name))


def read_in_pieces(stream: object, piece: int = 997) -> bytes:
    """Read a DumpStream through small buffers, as a chunker would, proving it streams."""
    import io

    out = io.BytesIO()
    buf = bytearray(piece)
    while n := stream.readinto(buf):  # type: ignore[attr-defined]
        out.write(buf[:n])
    return out.getvalue()


class BrokenAfter(io.RawIOBase):
    """A dump that reads fine for `good` bytes, then fails as a damaged repository does."""

    def __init__(self, data: bytes, good: int) -> None:
        super().__init__()
        self._data, self._pos, self._good = data, 0, good

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._pos >= self._good:
            raise OSError("pack 3f2a: authentication failed")
        n = min(len(b), self._good - self._pos, 4096)
        b[:n] = self._data[self._pos : self._pos + n]
        self._pos += n
        return n


def own_warnings(warnings: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A restore's warnings without the sweep's lines about leftovers of other restores:
    tests that kill a restore on purpose (test_claims.py) leave a database behind on the
    shared server, and whichever restore comes next (another test, in another worker) sweeps
    it and says so, which is right but is not the restore under test speaking."""
    return tuple(w for w in warnings if "by a restore that was killed" not in w
                 and "of a restore that was killed" not in w)  # fmt: skip
