"""What a failed or killed restore leaves on the server, and the next restore's sweep.

A restore SIGKILLed mid-load (the whole process group: casbackup and its client tools) used
to leave its `casbackup_restore_<hex>` database behind for good, on PostgreSQL and MariaDB, and
a MariaDB restore into a new database left it half-loaded, killed or failed. Now a failed
restore leaves the server as it was, and the next restore removes what a killed one left,
never what a live restore (here: one blocked mid-load in another process) is loading.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from casbackup.engines.claims import TEMP_NAME, my_dead, pg_dead, pg_lock_ids
from casbackup.engines.mysql import MysqlEngine
from casbackup.engines.postgresql import PostgresEngine
from casbackup.errors import DatabaseError
from tests.engines import test_mysql as my
from tests.engines import test_postgresql as pg
from tests.engines.conftest import (
    BrokenAfter,
    mariadb,
    my_ident,
    my_spec,
    pg_spec,
    psql,
    unique,
)

ROOT = Path(__file__).resolve().parents[2]

# A restore in a process of its own that stops reading its dump half-way and waits to be
# killed; it prints the temporary name the engine picked, then HALF.
CHILD = r"""
import io, json, sys, time
from casbackup.engines import mysql, postgresql
from casbackup.engines.base import DatabaseSpec

engine_name, fields, dump_file, overwrite = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
module = postgresql if engine_name == "postgresql" else mysql
attr = "temporary_name" if hasattr(module, "temporary_name") else "_temporary_name"
real = getattr(module, attr)

def announced():
    name = real()
    print("TEMP", name, flush=True)
    return name

setattr(module, attr, announced)
data = open(dump_file, "rb").read()

class Half(io.RawIOBase):
    pos = 0
    def readable(self):
        return True
    def readinto(self, b):
        if self.pos >= len(data) // 2:
            print("HALF", flush=True)
            time.sleep(3600)
        n = min(len(b), 65536, len(data) // 2 - self.pos)
        b[:n] = data[self.pos:self.pos + n]
        self.pos += n
        return n

engine = postgresql.PostgresEngine() if engine_name == "postgresql" else mysql.MysqlEngine()
engine.restore(DatabaseSpec(**fields), Half(), overwrite=overwrite)
"""


class Blocked:
    """A restore blocked half-way in a child process group, until `kill()`."""

    def __init__(self, engine: str, fields: dict[str, object], dump: Path, overwrite: bool):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, engine, json.dumps(fields), str(dump),
             "1" if overwrite else "0"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
        self.temp = ""
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode().split()
            if line[:1] == ["TEMP"]:
                self.temp = line[1]
            if line == ["HALF"]:
                return
        raise AssertionError(self.proc.stderr.read().decode() if self.proc.stderr else "")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def blocked() -> Iterator[list[Blocked]]:
    started: list[Blocked] = []
    yield started
    for child in started:
        if child.proc.poll() is None:
            child.kill()


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Until the server has noticed the killed connections (not a timing: a bound)."""
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def pg_exists(name: str) -> bool:
    return bool(psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}';").strip())


def my_exists(name: str) -> bool:
    return bool(mariadb(f"SHOW DATABASES LIKE '{name}';").strip())


# --- PostgreSQL --------------------------------------------------------------------------------


def test_pg_a_killed_overwrite_is_swept_by_the_next_restore_and_a_live_one_is_not(
    pg_database: str, pg_cleanup: list[str], tmp_path: Path, blocked: list[Blocked]
) -> None:
    psql(pg.SCHEMA, pg_database)
    data, _ = pg.dump_bytes(pg_spec(pg_database))
    dump = tmp_path / "d.pgdump"
    dump.write_bytes(data)
    psql("CREATE TABLE precious (v text); INSERT INTO precious VALUES ('keep me');", pg_database)
    fields = {"name": "pgtest", "engine": "postgresql", "host": "127.0.0.1", "port": 5432,
              "user": pg_spec(pg_database).user, "database": pg_database}  # fmt: skip
    live = Blocked("postgresql", fields, dump, overwrite=True)
    blocked.append(live)
    assert TEMP_NAME.fullmatch(live.temp) and pg_exists(live.temp)

    # Another restore meanwhile, onto the same server: the live one's temporary stays.
    other = unique("casb_other")
    pg_cleanup.append(other)
    info = PostgresEngine().restore(pg_spec(other), io.BytesIO(data))
    assert pg_exists(live.temp) and not [w for w in info.warnings if live.temp in w]

    live.kill()
    killed = live.temp
    wait_for(lambda: not psql(f"SELECT 1 FROM pg_stat_activity WHERE datname = '{killed}';"
                              ).strip(), "the killed restore's sessions end")  # fmt: skip
    # What a killed restore leaves, here and on this machine: its temporary and the privileges
    # pass's folder (the dump's first bytes). A restore of another test on the same server
    # (another worker) may sweep them first: then that one said so, not the one below.
    left = pg_exists(killed)
    acl = [
        n for n in os.listdir(tempfile.gettempdir()) if n.startswith(f"casb-acl-{live.proc.pid}-")
    ]
    assert len(acl) == 1 or not left
    assert psql("SELECT v FROM precious;", pg_database).strip() == "keep me"

    again = unique("casb_again")
    pg_cleanup.append(again)
    left = left and pg_exists(killed)
    info = PostgresEngine().restore(pg_spec(again), io.BytesIO(data))
    assert not pg_exists(killed)
    assert not any(os.path.exists(os.path.join(tempfile.gettempdir(), a)) for a in acl)
    assert not left or (
        f"database 'pgtest': removed temporary database {killed} of a restore that was killed"
        in info.warnings
    )
    assert psql("SELECT v FROM precious;", pg_database).strip() == "keep me"


def test_pg_a_failed_restore_into_a_new_database_leaves_nothing(
    pg_database: str, pg_cleanup: list[str]
) -> None:
    psql(pg.SCHEMA, pg_database)
    data, _ = pg.dump_bytes(pg_spec(pg_database))
    target = unique("casb_new")
    pg_cleanup.append(target)
    with pytest.raises((DatabaseError, OSError)):
        PostgresEngine().restore(pg_spec(target), BrokenAfter(data, len(data) // 2))
    assert not pg_exists(target)


def test_pg_dead_reads_names_and_held_locks() -> None:
    a, b = "casbackup_restore_ffffffff0001", "casbackup_restore_000000010002"
    held = pg_lock_ids(a)[1] % (1 << 32)
    lines = [f"d|{a}", f"d|{b}", "d|casbackup_restore_x", f"l|{held}", "d|mine"]
    assert pg_dead(lines) == [b]


# --- MariaDB -----------------------------------------------------------------------------------


def my_fields(database: str) -> dict[str, object]:
    spec = my_spec(database)
    return {"name": "mytest", "engine": "mysql", "host": spec.host, "port": spec.port,
            "user": spec.user, "database": database}  # fmt: skip


def my_dump(database: str, tmp_path: Path) -> tuple[bytes, Path]:
    my.make_schema(database)
    data, _ = my.dump_bytes(my_spec(database))
    dump = tmp_path / "d.sql"
    dump.write_bytes(data)
    return data, dump


def test_my_a_killed_overwrite_is_swept_by_the_next_restore_and_a_live_one_is_not(
    my_database: str, my_cleanup: list[str], tmp_path: Path, blocked: list[Blocked]
) -> None:
    data, dump = my_dump(my_database, tmp_path)
    mariadb("CREATE TABLE precious (v TEXT); INSERT INTO precious VALUES ('keep me');", my_database)
    live = Blocked("mysql", my_fields(my_database), dump, overwrite=True)
    blocked.append(live)
    my_cleanup.append(live.temp)
    assert TEMP_NAME.fullmatch(live.temp) and my_exists(live.temp)

    other = unique("casb_other")
    my_cleanup.append(other)
    info = MysqlEngine().restore(my_spec(other), io.BytesIO(data))
    assert my_exists(live.temp) and not [w for w in info.warnings if live.temp in w]

    live.kill()
    wait_for(lambda: mariadb(f"SELECT IS_USED_LOCK('{live.temp}');").strip() == "NULL",
             "the server drops the killed restore's lock")  # fmt: skip
    left = my_exists(live.temp)  # unless another test's restore on this server swept it
    again = unique("casb_again")
    my_cleanup.append(again)
    info = MysqlEngine().restore(my_spec(again), io.BytesIO(data))
    assert not my_exists(live.temp)
    assert not left or (f"database 'mytest': removed temporary database {live.temp} of a "
                        "restore that was killed") in info.warnings  # fmt: skip
    assert mariadb("SELECT v FROM precious;", my_database).strip() == "keep me"


def test_my_a_killed_restore_into_a_new_database_is_swept(
    my_database: str, my_cleanup: list[str], tmp_path: Path, blocked: list[Blocked]
) -> None:
    data, dump = my_dump(my_database, tmp_path)
    target = unique("casb_new")
    my_cleanup.append(target)
    live = Blocked("mysql", my_fields(target), dump, overwrite=False)
    blocked.append(live)
    wait_for(lambda: bool(mariadb("SHOW TABLES", target).strip()), "the load begins")
    live.kill()
    wait_for(lambda: mariadb(f"SELECT IS_USED_LOCK('{live.temp}');").strip() == "NULL",
             "the server drops the killed restore's lock")  # fmt: skip
    # Half loaded, unless another test's restore on this server swept it already.
    if my_exists(target):
        # Never backed up as if it were whole (a snapshot of it would carry the marker too).
        with pytest.raises(DatabaseError, match=rf"{target} is half loaded by a restore \(table "):
            my.dump_bytes(my_spec(target))
    again = unique("casb_again")
    my_cleanup.append(again)
    left = my_exists(target)
    info = MysqlEngine().restore(my_spec(again), io.BytesIO(data))
    assert not my_exists(target)
    assert not left or (f"database 'mytest': removed database {target}, half loaded by a "
                        "restore that was killed") in info.warnings  # fmt: skip


def test_my_a_failed_restore_leaves_the_server_as_it_was(
    my_database: str, my_cleanup: list[str], tmp_path: Path
) -> None:
    data, _ = my_dump(my_database, tmp_path)
    target = unique("casb_new")
    my_cleanup.append(target)
    with pytest.raises((DatabaseError, OSError)):
        MysqlEngine().restore(my_spec(target), BrokenAfter(data, len(data) // 2))
    assert not my_exists(target)  # it used to stay, half loaded
    # An existing empty database (made by a DBA, with its grants) stays as it was: empty.
    empty = unique("casb_empty")
    my_cleanup.append(empty)
    mariadb(f"CREATE DATABASE {my_ident(empty)};")
    with pytest.raises((DatabaseError, OSError)):
        MysqlEngine().restore(my_spec(empty), BrokenAfter(data, len(data) // 2))
    assert my_exists(empty) and not mariadb("SHOW TABLES", empty).strip()
    MysqlEngine().restore(my_spec(empty), io.BytesIO(data))
    assert MysqlEngine().row_counts(my_spec(empty)) == my.EXPECTED


def test_my_dead_reads_rows() -> None:
    rows = [f"{b'casbackup_restore_0123456789ab'.hex()}\ttemporary",
            f"{b'shop'.hex()}\tnew", "zz\tnew", f"{b'x'.hex()}\tother"]  # fmt: skip
    assert my_dead(rows) == [("casbackup_restore_0123456789ab", "temporary"), ("shop", "new")]


def test_my_a_failed_copy_into_place_leaves_no_half_database(
    my_database: str, my_cleanup: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MariaDB cannot rename a database: --overwrite drops the old one and copies the loaded
    temporary into its name. A copy that broke left a half copy there, looking like the
    user's database; now it leaves none, and the temporary holds the data as the message
    says (the next restore onto the server removes it)."""
    from casbackup.engines import mysql

    data, _ = my_dump(my_database, tmp_path)

    class BreakingCopy(mysql.ProcessDumpStream):
        seen = 0

        def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
            n = super().readinto(b)
            self.seen += n
            if self.seen > len(data) // 2:
                raise DatabaseError("the copy broke")
            return n

    monkeypatch.setattr(mysql, "ProcessDumpStream", BreakingCopy)
    with pytest.raises(
        DatabaseError, match=r"the restored data is in database (casbackup_restore_\w+)"
    ) as exc:
        MysqlEngine().restore(my_spec(my_database), io.BytesIO(data), overwrite=True)
    temp = str(exc.value).split("in database ", 1)[1].split(",", 1)[0]
    my_cleanup.append(temp)
    assert not my_exists(my_database)  # no half copy under the user's name
    assert MysqlEngine().row_counts(my_spec(temp)) == my.EXPECTED
    monkeypatch.undo()
    again = unique("casb_again")
    my_cleanup.append(again)
    info = MysqlEngine().restore(my_spec(again), io.BytesIO(data))
    assert not my_exists(temp) and any(temp in w for w in info.warnings)
