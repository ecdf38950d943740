"""MariaDB against the real server: counts in the dump's own snapshot, and the schema objects
that are not tables (routines, triggers, events, views) round-trip (issue 16, dump gaps)."""

from __future__ import annotations

import io
import subprocess
import threading
import time

import pytest

from casbackup.engines.base import DatabaseSpec, DumpInfo
from casbackup.engines.mysql import MysqlEngine, check_option
from casbackup.errors import DatabaseError
from tests.engines.conftest import (
    MY_HOST,
    MY_PORT,
    MY_USER,
    mariadb,
    my_spec,
    own_warnings,
    read_in_pieces,
    unique,
)


def dump(spec: DatabaseSpec) -> tuple[bytes, DumpInfo]:
    stream = MysqlEngine().dump(spec)
    try:
        data = read_in_pieces(stream, 4096)
        info = stream.finish()
    finally:
        stream.close()
    return data, info


def count(table: str, database: str) -> int:
    return int(mariadb(f"SELECT COUNT(*) FROM `{table}`", database))


def test_counts_are_the_dumps_own_while_rows_are_written(
    my_database: str, my_cleanup: list[str]
) -> None:
    mariadb(
        "CREATE TABLE w (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(40));"
        "CREATE TABLE still (id INT PRIMARY KEY);"
        "INSERT INTO still VALUES (1), (2), (3);"
        "INSERT INTO w (v) SELECT MD5(seq) FROM seq_1_to_20000;",
        my_database,
    )
    inserts = "".join(f"INSERT INTO w (v) VALUES ('c{i}');\n" for i in range(20000)).encode()
    argv = ["mariadb", "-h", MY_HOST, "-P", str(MY_PORT), "-u", MY_USER, my_database]
    writer = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    feeder = threading.Thread(target=writer.communicate, args=(inserts,), daemon=True)
    feeder.start()
    try:
        deadline = time.monotonic() + 30
        while count("w", my_database) < 20200:  # the writer is under way
            assert time.monotonic() < deadline and writer.poll() is None
            time.sleep(0.02)
        data, info = dump(my_spec(my_database))
        assert writer.poll() is None, "the writer finished before the dump: nothing proven"
        recorded = info.row_counts["w"]
        # Rows written after the dump, then the writer stops: waiting for all 20,000
        # autocommitted inserts took most of a minute and proves nothing more.
        while count("w", my_database) <= recorded:
            assert time.monotonic() < deadline + 30 and writer.poll() is None
            time.sleep(0.02)
    finally:
        if writer.poll() is None:
            writer.kill()
        feeder.join(120)
    assert info.row_counts_consistent and info.properties["row_counts_consistent"] is True
    assert 20200 <= recorded < count("w", my_database)  # written before and after the dump
    target = unique("casb_my_cons")
    my_cleanup.append(target)
    restored = MysqlEngine().restore(my_spec(target), io.BytesIO(data))
    assert restored.row_counts == info.row_counts  # the counts describe exactly the dump


def test_without_the_lock_counts_are_marked_inexact(my_database: str) -> None:
    mariadb("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1), (2);", my_database)
    _, info = dump(my_spec(my_database, options={"consistent_counts": "false"}))
    assert info.row_counts == {"t": 2}
    assert not info.row_counts_consistent and info.properties["row_counts_consistent"] is False


@pytest.fixture
def plain_user(mariadb_server: None, my_database: str) -> object:
    """A user that may read the database (routines too: mysql.proc) but not LOCK TABLES it."""
    user = unique("casb_nolock")
    mariadb(
        f"CREATE USER '{user}'@'%' IDENTIFIED BY ''; CREATE USER '{user}'@'localhost' "
        f"IDENTIFIED BY ''; GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON `{my_database}`.* TO "
        f"'{user}'@'%'; GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON `{my_database}`.* TO "
        f"'{user}'@'localhost'; GRANT SELECT ON mysql.proc TO '{user}'@'%';"
        f"GRANT SELECT ON mysql.proc TO '{user}'@'localhost';"
    )
    yield user
    mariadb(f"DROP USER IF EXISTS '{user}'@'%'; DROP USER IF EXISTS '{user}'@'localhost';")


def test_without_lock_privilege_the_dump_still_succeeds(my_database: str, plain_user: str) -> None:
    mariadb("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1);", my_database)
    data, info = dump(my_spec(my_database, user=plain_user))
    assert info.row_counts == {"t": 1} and b"INSERT INTO `t`" in data
    assert info.properties["row_counts_consistent"] is False  # counted just before, and says so


def test_options_are_validated() -> None:
    assert check_option("consistent_counts", "true") is None
    assert check_option("consistent_counts", "sometimes")
    assert check_option("lock_wait_timeout", "0") and check_option("lock_wait_timeout", "x")
    assert check_option("lock_wait_timeout", "30") is None


def test_bad_option_value_fails_the_dump(my_database: str) -> None:
    mariadb("CREATE TABLE t (id INT PRIMARY KEY);", my_database)
    with pytest.raises(DatabaseError, match="consistent_counts"):
        MysqlEngine().dump(my_spec(my_database, options={"consistent_counts": "sometimes"}))


def test_routines_triggers_events_and_views_round_trip(
    my_database: str, my_cleanup: list[str]
) -> None:
    mariadb(
        "CREATE TABLE t (id INT AUTO_INCREMENT PRIMARY KEY, v INT);"
        "CREATE TABLE log (id INT AUTO_INCREMENT PRIMARY KEY, msg VARCHAR(50));"
        "INSERT INTO t (v) VALUES (1), (2), (3);"
        # a view over a view: the second must load after the first and after the table
        "CREATE VIEW v1 AS SELECT id, v * 2 AS w FROM t;"
        "CREATE VIEW v2 AS SELECT SUM(w) AS total FROM v1;"
        "CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW "
        "INSERT INTO log (msg) VALUES (CONCAT('ins ', NEW.id));"
        "CREATE FUNCTION plus_one(x INT) RETURNS INT DETERMINISTIC RETURN x + 1;"
        "CREATE PROCEDURE answer() SELECT plus_one(41);"
        "CREATE EVENT ev ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM log WHERE id < 0;",
        my_database,
    )
    data, info = dump(my_spec(my_database))
    target = unique("casb_my_objects")
    my_cleanup.append(target)
    restored = MysqlEngine().restore(my_spec(target), io.BytesIO(data))
    assert restored.row_counts == info.row_counts == {"log": 0, "t": 3}

    assert mariadb("SELECT total FROM v2", target).strip() == "12"
    assert mariadb("CALL answer()", target).strip() == "42"
    mariadb("INSERT INTO t (v) VALUES (10);", target)
    assert mariadb("SELECT msg FROM log", target).strip() == "ins 4"  # the trigger fired
    events = mariadb(
        f"SELECT EVENT_NAME, STATUS FROM information_schema.EVENTS WHERE EVENT_SCHEMA = '{target}'"
    )
    assert events.split() == ["ev", "DISABLED"]
    kinds = mariadb(
        "SELECT ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES "
        f"WHERE ROUTINE_SCHEMA = '{target}' ORDER BY 2"
    )
    assert kinds.split() == ["PROCEDURE", "answer", "FUNCTION", "plus_one"]


def test_dump_records_the_tool_and_an_older_client_warns(
    my_database: str, my_cleanup: list[str]
) -> None:
    mariadb("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1);", my_database)
    data, info = dump(my_spec(my_database))
    tool = info.properties["dump_tool"]
    assert isinstance(tool, dict) and tool["name"] in ("mariadb-dump", "mysqldump")
    assert tool["product"] == "MariaDB" and tool["version"].count(".") == 2
    target = unique("casb_my_old")
    my_cleanup.append(target)
    newer = {**info.properties, "dump_tool": {**tool, "version": "99.0.1"}}
    restored = MysqlEngine().restore(my_spec(target), io.BytesIO(data), properties=newer)
    assert len(restored.warnings) == 1 and "dumped by" in restored.warnings[0]
    assert "99.0.1" in restored.warnings[0] and "older" in restored.warnings[0]
    MysqlEngine().drop(my_spec(target))
    # Another product's version says nothing about this client: no warning.
    mysql = {**info.properties, "dump_tool": {**tool, "product": "MySQL", "version": "99.0.1"}}
    restored = MysqlEngine().restore(my_spec(target), io.BytesIO(data), properties=mysql)
    assert own_warnings(restored.warnings) == ()


def test_a_table_without_transactions_makes_the_counts_inexact(my_database: str) -> None:
    """No snapshot holds a MyISAM (Aria, MEMORY) table: the dump tool reads it when it gets
    to it, the counts are taken after. Found verifying a backup of a database whose MyISAM
    table was written during the dump: 'FAILED verification: table a0_my: 465 rows, 536
    recorded', a good backup called damaged, because the record said the counts were exact.
    They are marked inexact now, and verify tolerates the drift with a warning."""
    mariadb("CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB; INSERT INTO t VALUES (1);"
            "CREATE TABLE m (id INT PRIMARY KEY) ENGINE=MyISAM; INSERT INTO m VALUES (1);",
            my_database)  # fmt: skip
    _, info = dump(my_spec(my_database))
    assert info.row_counts == {"m": 1, "t": 1}
    assert not info.row_counts_consistent and info.properties["row_counts_consistent"] is False
    mariadb("ALTER TABLE m ENGINE=InnoDB;", my_database)
    _, info = dump(my_spec(my_database))
    assert info.row_counts_consistent and info.properties["row_counts_consistent"] is True


def test_a_table_locked_for_writing_past_lock_wait_timeout_fails_the_dump(
    my_database: str,
) -> None:
    """Found with a session holding LOCK TABLES t WRITE: the backup hung (killed by
    `timeout` after 25 s), because mariadb-dump takes no lock timeout and waits for the
    server's lock_wait_timeout, a day by default, whatever options.lock_wait_timeout says.
    Every table is now read first under the option's timeout; an idle transaction that
    wrote to a table still lets the dump through (its counts are marked inexact)."""
    mariadb("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1);", my_database)
    argv = ["mariadb", "-h", MY_HOST, "-P", str(MY_PORT), "-u", MY_USER, my_database]
    spec = my_spec(my_database, options={"lock_wait_timeout": "1"})
    for hold, fails in (("LOCK TABLES t WRITE;", True), ("BEGIN; INSERT INTO t VALUES (2);", False)):  # fmt: skip
        locker = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert locker.stdin is not None
        locker.stdin.write(f"{hold} SELECT SLEEP(20);\n".encode())
        locker.stdin.close()  # the session, and its lock, end after the sleep
        try:
            deadline = time.monotonic() + 30
            while "SLEEP(20)" not in mariadb("SHOW PROCESSLIST;"):  # the lock is held
                assert time.monotonic() < deadline
                time.sleep(0.05)
            if fails:
                with pytest.raises(DatabaseError, match=r"stayed locked by another session .*"
                                   r"options.lock_wait_timeout = 1 s; not backed up"):  # fmt: skip
                    dump(spec)
            else:
                _, info = dump(spec)
                assert info.row_counts == {"t": 1} and not info.row_counts_consistent
        finally:
            locker.kill()
            locker.wait()
            for pid in mariadb("SELECT id FROM information_schema.processlist WHERE info "
                               "LIKE 'SELECT SLEEP(20)%';").split():  # fmt: skip
                mariadb(f"KILL {pid};")
