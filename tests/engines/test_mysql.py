"""MySQL/MariaDB engine against the real server: round trips, quoting, credentials, failures."""

from __future__ import annotations

import io
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from casbackup.engines import get_engine, mysql
from casbackup.engines.base import DatabaseSpec, DumpInfo
from casbackup.engines.claims import temporary_name
from casbackup.engines.my_client import option_file_text
from casbackup.engines.mysql import MysqlEngine
from casbackup.errors import DatabaseError
from tests.engines.conftest import BrokenAfter, mariadb, my_ident, my_spec, read_in_pieces, unique

SCHEMA = """
CREATE TABLE people (
    id INT PRIMARY KEY,
    name VARCHAR(200) CHARACTER SET utf8mb4 NOT NULL,
    note TEXT CHARACTER SET utf8mb4,
    score DECIMAL(14, 4),
    ratio DOUBLE,
    born DATE,
    seen DATETIME(3),
    photo BLOB,
    active BOOLEAN
) ENGINE=InnoDB;
CREATE TABLE `odd ``name`` "x"` (id BIGINT PRIMARY KEY, payload JSON, raw VARBINARY(64));
CREATE TABLE nopk (v VARCHAR(20));
CREATE VIEW people_view AS SELECT id, name FROM people WHERE active;
CREATE TRIGGER people_bi BEFORE INSERT ON people FOR EACH ROW SET NEW.note = NEW.note;
"""
FILL = """
INSERT INTO people
SELECT seq,
       CONCAT('Zoë ', seq, ' 日本語 ✓ 🎉 ', REPEAT('é', seq % 7)),
       IF(seq % 5 = 0, NULL, CONCAT('line1\\nTab\\t\\\\ quote\\' "dq"')),
       seq * 12.3456,
       IF(seq % 11 = 0, NULL, seq / 7.0),
       DATE_ADD('1970-01-01', INTERVAL seq DAY),
       DATE_ADD('2024-02-29 12:34:56.789', INTERVAL seq MINUTE),
       IF(seq % 3 = 0, NULL, CONCAT(UNHEX(MD5(seq)), X'00FF00', UNHEX(SHA2(seq, 256)))),
       seq % 2 = 0
FROM seq_1_to_3000;
INSERT INTO `odd ``name`` "x"`
SELECT seq, JSON_OBJECT('k', seq, 'u', 'ünï'), UNHEX(MD5(seq)) FROM seq_1_to_1500;
INSERT INTO nopk SELECT CONCAT('x', seq) FROM seq_1_to_200;
"""
TABLES = {"people": "id", 'odd `name` "x"': "id", "nopk": "v"}
EXPECTED = {"people": 3000, 'odd `name` "x"': 1500, "nopk": 200}
NASTY_PASSWORD = "p'a$s;w\"o#r\\d x`%!"


def all_rows(database: str) -> dict[str, str]:
    # HEX() makes binary columns comparable as text; everything else prints exactly.
    out = {}
    for table, order in TABLES.items():
        cols = mariadb(
            "SELECT GROUP_CONCAT(IF(data_type LIKE '%blob' OR data_type LIKE '%binary', "
            "CONCAT('HEX(`', column_name, '`)'), CONCAT('`', column_name, '`')) "
            "ORDER BY ordinal_position) FROM information_schema.columns "
            f"WHERE table_schema = DATABASE() AND table_name = '{table}'",
            database,
        ).strip()
        out[table] = mariadb(f"SELECT {cols} FROM {my_ident(table)} ORDER BY {order}", database)
    return out


def make_schema(database: str) -> None:
    mariadb(SCHEMA + FILL, database)


def dump_bytes(spec: DatabaseSpec) -> tuple[bytes, DumpInfo]:
    with get_engine("mariadb").dump(spec) as stream:
        data = read_in_pieces(stream)
        info = stream.finish()
    return data, info


def test_round_trip_every_row(my_database: str) -> None:
    make_schema(my_database)
    before = all_rows(my_database)
    engine = MysqlEngine()
    data, info = dump_bytes(my_spec(my_database))
    assert info.format == "mysql-sql" and info.file_extension == "sql"
    assert info.row_counts == EXPECTED and info.row_counts_consistent
    assert info.server_version == mariadb("SELECT VERSION()").strip()
    assert b"CREATE DATABASE" not in data and b"USE " not in data
    engine.drop(my_spec(my_database))
    result = engine.restore(my_spec(my_database), io.BytesIO(data))
    assert result.row_counts == EXPECTED
    assert all_rows(my_database) == before
    assert mariadb("SELECT COUNT(*) FROM people_view", my_database).strip() == "1500"
    assert "people_bi" in mariadb("SHOW TRIGGERS", my_database)


@pytest.fixture
def nasty_user(mariadb_server: None, my_cleanup: list[str]) -> Iterator[tuple[str, str]]:
    """A user with a password that needs quoting everywhere, owning a db with a nasty name."""
    user = unique("casb_test")
    database = unique("my-db \"x\" 'y' `z` $1;")
    my_cleanup.append(database)
    literal = "'" + NASTY_PASSWORD.replace("\\", "\\\\").replace("'", "''") + "'"
    hosts = ("%", "127.0.0.1", "localhost")
    sql = f"CREATE DATABASE {my_ident(database)};"
    for host in hosts:
        sql += (
            f"CREATE USER '{user}'@'{host}' IDENTIFIED BY {literal};"
            f"GRANT ALL ON {my_ident(database)}.* TO '{user}'@'{host}';"
            f"GRANT ALL ON `restored\\_%`.* TO '{user}'@'{host}';"
        )
    mariadb(sql)
    try:
        yield user, database
    finally:
        mariadb("".join(f"DROP USER IF EXISTS '{user}'@'{h}';" for h in hosts))


def test_names_and_password_that_need_quoting(
    nasty_user: tuple[str, str], my_cleanup: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    user, database = nasty_user
    monkeypatch.setenv("CASB_TEST_MYPW", NASTY_PASSWORD)
    mariadb("CREATE TABLE `t;'x` (id INT PRIMARY KEY, v TEXT);"
            "INSERT INTO `t;'x` SELECT seq, MD5(seq) FROM seq_1_to_500;", database)  # fmt: skip
    spec = my_spec(database, user=user, password_env="CASB_TEST_MYPW")
    seen: list[list[str]] = []
    real_popen = subprocess.Popen

    def spy(argv: list[str], *args: object, **kw: object) -> subprocess.Popen[bytes]:
        seen.append(list(argv))
        return real_popen(argv, *args, **kw)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(subprocess, "Popen", spy)
    data, info = dump_bytes(spec)
    assert info.row_counts == {"t;'x": 500}
    target = unique("restored_")
    my_cleanup.append(target)
    restored = MysqlEngine().restore(
        my_spec(target, user=user, password_env="CASB_TEST_MYPW"), io.BytesIO(data)
    )
    assert restored.row_counts == {"t;'x": 500}
    monkeypatch.setattr(subprocess, "Popen", real_popen)
    assert mariadb("SELECT * FROM `t;'x` ORDER BY id", target) == mariadb(
        "SELECT * FROM `t;'x` ORDER BY id", database
    )
    assert seen and all(NASTY_PASSWORD not in " ".join(argv) for argv in seen)
    connecting = [
        argv for argv in seen if "--version" not in argv
    ]  # version checks connect to nothing
    assert all(
        any(a.startswith("--defaults-extra-file=/dev/fd/") for a in argv) for argv in connecting
    )


def test_option_file_escapes_values() -> None:
    spec = DatabaseSpec("n", "mysql", host="h", port=3306, user='u"\\')
    text = option_file_text(spec, 'a"b\\c#d\ne')
    assert text == '[client]\nuser="u\\"\\\\"\npassword="a\\"b\\\\c#d\\ne"\nhost="h"\nport="3306"\n'


def test_wrong_password_fails(nasty_user: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    user, database = nasty_user
    monkeypatch.setenv("CASB_TEST_MYPW", "wrong")
    with pytest.raises(DatabaseError, match="Access denied for user"):
        MysqlEngine().dump(my_spec(database, user=user, password_env="CASB_TEST_MYPW"))


def test_wrong_password_in_the_dump_tool_itself_fails(
    my_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pre-dump queries pass; only mariadb-dump gets a bad login, so finish() must catch it.
    make_schema(my_database)
    engine = MysqlEngine()
    monkeypatch.setattr("casbackup.engines.mysql.DUMP_FLAGS", ("--user=nobody_casb",))
    stream = engine.dump(my_spec(my_database))
    with stream:
        assert read_in_pieces(stream) == b""
        with pytest.raises(DatabaseError, match=r"mariadb-dump exited with status 2: .*Access"):
            stream.finish()


def test_missing_database_fails(mariadb_server: None) -> None:
    with pytest.raises(DatabaseError, match="does not exist"):
        MysqlEngine().dump(my_spec(unique("casb_missing")))


def test_database_without_tables_is_refused(my_database: str) -> None:
    with pytest.raises(DatabaseError, match="has no tables"):
        MysqlEngine().dump(my_spec(my_database))
    data, info = dump_bytes(my_spec(my_database, options={"allow_empty": "true"}))
    assert info.row_counts == {} and b"-- Dump completed" in data


def test_tool_killed_mid_stream_fails(my_database: str) -> None:
    mariadb("CREATE TABLE big (id INT PRIMARY KEY, b BLOB);"
            "INSERT INTO big SELECT seq, REPEAT(UNHEX(MD5(seq)), 64) FROM seq_1_to_8000;",
            my_database)  # fmt: skip
    stream = MysqlEngine().dump(my_spec(my_database))
    with stream:
        assert stream.read(4096)
        os.kill(stream.pid, signal.SIGKILL)
        read_in_pieces(stream)
        with pytest.raises(DatabaseError, match="mariadb-dump was killed by signal 9"):
            stream.finish()
    with pytest.raises(ChildProcessError):
        os.waitpid(stream.pid, os.WNOHANG)


def test_missing_tool(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DatabaseError, match="mariadb-dump or mysqldump not found on PATH"):
        MysqlEngine().check_available()
    with pytest.raises(DatabaseError, match="not found on PATH"):
        MysqlEngine().dump(my_spec("whatever"))


def test_two_dumps_of_unchanged_data_identical(my_database: str) -> None:
    make_schema(my_database)
    first, _ = dump_bytes(my_spec(my_database))
    second, _ = dump_bytes(my_spec(my_database))
    assert first == second


def test_restore_refuses_non_empty_target_unless_overwrite(my_database: str) -> None:
    mariadb("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1), (2);", my_database)
    engine = MysqlEngine()
    data, _ = dump_bytes(my_spec(my_database))
    with pytest.raises(DatabaseError, match="already exists and is not empty"):
        engine.restore(my_spec(my_database), io.BytesIO(data))
    mariadb("INSERT INTO t VALUES (3);", my_database)
    engine.restore(my_spec(my_database), io.BytesIO(data), overwrite=True)
    assert engine.row_counts(my_spec(my_database)) == {"t": 2}


def test_bad_dump_fails_restore(my_cleanup: list[str]) -> None:
    target = unique("casb_bad")
    my_cleanup.append(target)
    with pytest.raises(DatabaseError, match="mariadb exited with status 1: .*syntax"):
        MysqlEngine().restore(my_spec(target), io.BytesIO(b"CREATE TABLE t (id INT);\nNOT SQL;"))


def test_restore_counts_routines_and_events_as_content(
    my_database: str, my_cleanup: list[str]
) -> None:
    """A database holding only routines or events is not empty: the dump's `DROP PROCEDURE
    IF EXISTS` replaced a live procedure of the same name without --overwrite (found with
    `db restore --into` an existing database that held one procedure)."""
    source = unique("casb_src")
    my_cleanup.append(source)
    mariadb(f"CREATE DATABASE {my_ident(source)};")
    mariadb("CREATE TABLE t (id INT PRIMARY KEY); CREATE PROCEDURE p() SELECT 'backed up';"
            "CREATE EVENT e ON SCHEDULE EVERY 1 DAY DISABLE DO SELECT 1;", source)  # fmt: skip
    data, _ = dump_bytes(my_spec(source))
    engine = MysqlEngine()
    for sql in ("CREATE PROCEDURE p() SELECT 'live';",
                "CREATE EVENT e ON SCHEDULE EVERY 1 DAY DISABLE DO SELECT 'live';"):  # fmt: skip
        mariadb("DROP PROCEDURE IF EXISTS p; DROP EVENT IF EXISTS e;" + sql, my_database)
        with pytest.raises(DatabaseError, match="already exists and is not empty"):
            engine.restore(my_spec(my_database), io.BytesIO(data))
        kept = mariadb("SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema ="
                       " DATABASE() AND routine_definition LIKE '%live%' UNION ALL SELECT"
                       " COUNT(*) FROM information_schema.events WHERE event_schema = DATABASE()"
                       " AND event_definition LIKE '%live%';", my_database).split()  # fmt: skip
        assert sorted(kept) == ["0", "1"]


def test_overwrite_that_fails_keeps_the_existing_database(
    my_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--overwrite replaces a database only once the new one is loaded: it used to DROP the
    database first, so a dump that broke mid-stream (a damaged pack, a killed restore) left a
    half-loaded database where the user's data had been."""
    mariadb("CREATE TABLE t (id INT PRIMARY KEY, s TEXT);"
            "INSERT INTO t SELECT seq, REPEAT('x', 500) FROM seq_1_to_4000;"
            "CREATE TRIGGER t_bi BEFORE INSERT ON t FOR EACH ROW SET NEW.s = UPPER(NEW.s);"
            "CREATE VIEW v AS SELECT id FROM t;", my_database)  # fmt: skip
    data, _ = dump_bytes(my_spec(my_database))
    mariadb("CREATE TABLE precious (v TEXT); INSERT INTO precious VALUES ('keep me');", my_database)
    temporary = temporary_name()
    monkeypatch.setattr(mysql, "temporary_name", lambda: temporary)
    engine = MysqlEngine()
    with pytest.raises((DatabaseError, OSError)):
        engine.restore(my_spec(my_database), BrokenAfter(data, len(data) // 2), overwrite=True)
    assert mariadb("SELECT v FROM precious;", my_database).strip() == "keep me"
    assert engine.row_counts(my_spec(my_database))["t"] == 4000
    assert not mariadb(f"SHOW DATABASES LIKE '{temporary}';")  # dropped
    # A whole dump replaces it, trigger and view included, and leaves no temporary behind.
    engine.restore(my_spec(my_database), io.BytesIO(data), overwrite=True)
    assert engine.row_counts(my_spec(my_database)) == {"t": 4000}
    assert "t_bi" in mariadb("SHOW TRIGGERS", my_database)
    assert mariadb("SELECT COUNT(*) FROM v", my_database).strip() == "4000"
    assert not mariadb(f"SHOW DATABASES LIKE '{temporary}';")


def test_value_over_24_mib_round_trips(my_database: str, my_cleanup: list[str]) -> None:
    """mariadb-dump's own max_allowed_packet (24 MiB) failed the backup of any row over it
    ('Lost connection to server during query when dumping table `h` at row: 0', found with a
    70 MiB LONGBLOB on a server allowing 256 MiB): the dump asks for the most, 1 GiB."""
    old = int(mariadb("SELECT @@global.max_allowed_packet").strip())
    mariadb(f"SET GLOBAL max_allowed_packet = {max(old, 128 << 20)};")
    try:
        mariadb("CREATE TABLE h (id INT PRIMARY KEY, b LONGBLOB);"
                "INSERT INTO h VALUES (1, REPEAT(UNHEX(MD5('x')), 40 * 1024 * 1024 / 16));",
                my_database)  # fmt: skip
        data, info = dump_bytes(my_spec(my_database))
        assert info.row_counts == {"h": 1}
        target = unique("casb_huge")
        my_cleanup.append(target)
        MysqlEngine().restore(my_spec(target), io.BytesIO(data))
        assert mariadb("SELECT LENGTH(b), MD5(b) FROM h", target) == mariadb(
            "SELECT LENGTH(b), MD5(b) FROM h", my_database
        )
    finally:
        mariadb(f"SET GLOBAL max_allowed_packet = {old};")


def test_a_system_versioned_table_is_content(my_database: str, my_cleanup: list[str]) -> None:
    """MariaDB lists a table WITH SYSTEM VERSIONING as 'SYSTEM VERSIONED', not 'BASE
    TABLE', and only base tables were looked at. Found on the real server: `db restore
    --into` a database whose one table was system-versioned took it for empty, loaded the
    backup into it, exit 0, and the dump's DROP TABLE IF EXISTS replaced the live table
    (its rows and their history gone)."""
    source = unique("casb_src")
    my_cleanup.append(source)
    mariadb(f"CREATE DATABASE {my_ident(source)};")
    mariadb("CREATE TABLE t (id INT PRIMARY KEY); CREATE TABLE h (id INT PRIMARY KEY, v INT) "
            "WITH SYSTEM VERSIONING; INSERT INTO h VALUES (1, 10);", source)  # fmt: skip
    data, _ = dump_bytes(my_spec(source))
    mariadb("CREATE TABLE h (id INT PRIMARY KEY, v INT) WITH SYSTEM VERSIONING;"
            "INSERT INTO h VALUES (1, 999); UPDATE h SET v = 1000;", my_database)  # fmt: skip
    engine = MysqlEngine()
    assert engine.holds_content(my_spec(my_database))
    with pytest.raises(DatabaseError, match="already exists and is not empty"):
        engine.restore(my_spec(my_database), io.BytesIO(data))
    history = "SELECT v FROM h FOR SYSTEM_TIME ALL ORDER BY v;"
    assert mariadb(history, my_database).split() == ["999", "1000"]
    engine.restore(my_spec(my_database), io.BytesIO(data), overwrite=True)
    assert mariadb("SELECT v FROM h;", my_database).split() == ["10"]


def test_a_database_of_system_versioned_tables_is_backed_up(my_database: str) -> None:
    """Its tables all system-versioned, a database could not be backed up: 'has no tables;
    refusing to record an empty dump' (exit 27 every night)."""
    mariadb("CREATE TABLE h (id INT PRIMARY KEY, v INT) WITH SYSTEM VERSIONING;"
            "INSERT INTO h VALUES (1, 10);", my_database)  # fmt: skip
    data, _ = dump_bytes(my_spec(my_database))
    assert b"CREATE TABLE `h`" in data and b"(1,10" in data


def test_a_system_versioned_tables_history_round_trips(
    my_database: str, my_cleanup: list[str]
) -> None:
    """mariadb-dump writes the current rows of a system-versioned table only, unless told
    --dump-history: found restoring a backup of a table WITH SYSTEM VERSIONING (three
    versions of a row), which came back with the last one, its history gone, exit 0. The
    history is now dumped where the tool can (MariaDB 10.11+), in the --overwrite copy too;
    a table versioned by transaction id (which the option refuses) still backs up."""
    mariadb("CREATE TABLE h (id INT PRIMARY KEY, v INT) WITH SYSTEM VERSIONING;"
            "INSERT INTO h VALUES (1, 10); UPDATE h SET v = 11; UPDATE h SET v = 12;", my_database)  # fmt: skip
    history = "SELECT v, row_start, row_end FROM h FOR SYSTEM_TIME ALL ORDER BY row_start;"
    before = mariadb(history, my_database)
    assert len(before.splitlines()) == 3
    data, _ = dump_bytes(my_spec(my_database))
    engine = MysqlEngine()
    target = unique("casb_hist")
    my_cleanup.append(target)
    engine.restore(my_spec(target), io.BytesIO(data))
    assert mariadb(history, target) == before
    mariadb("UPDATE h SET v = 13;", target)
    engine.restore(my_spec(target), io.BytesIO(data), overwrite=True)
    assert mariadb(history, target) == before
    mariadb("CREATE TABLE x (id INT PRIMARY KEY, v INT, s BIGINT UNSIGNED GENERATED ALWAYS AS "
            "ROW START, e BIGINT UNSIGNED GENERATED ALWAYS AS ROW END, PERIOD FOR "
            "SYSTEM_TIME(s, e)) WITH SYSTEM VERSIONING ENGINE=InnoDB; INSERT INTO x (id, v) "
            "VALUES (1, 1); UPDATE x SET v = 2;", my_database)  # fmt: skip
    data, _ = dump_bytes(my_spec(my_database))
    assert b"CREATE TABLE `x`" in data


def test_a_dump_cut_after_the_trailers_words_in_a_row_is_refused(
    my_database: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The trailer check looked for '-- Dump completed' anywhere in the last 4 KiB, so a
    mariadb-dump cut short (exit 0) right after a row holding those words (a comment any
    user of the application can type) was recorded as whole: found with a wrapper that
    stopped there, 'snapshot saved' with every later row gone. The last line counts now."""
    mariadb("CREATE TABLE t (id INT PRIMARY KEY, s TEXT); INSERT INTO t VALUES (1, 'a'), "
            "(2, 'note-- Dump completed'), (3, 'lost');", my_database)  # fmt: skip
    script = tmp_path / "mariadb-dump"
    script.write_text(
        '#!/bin/sh\ncase "$*" in *--version*) exec /usr/bin/mariadb-dump "$@";; esac\n'
        '/usr/bin/mariadb-dump "$@" > "$0.out" || exit 1\n'
        "n=$(grep -boa 'note-- Dump completed' \"$0.out\" | head -1 | cut -d: -f1)\n"
        'head -c $((n + 21)) "$0.out"\nexit 0\n'
    )
    script.chmod(0o755)
    dump_bytes(my_spec(my_database))  # the real tool: whole
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(DatabaseError, match=r"no '-- Dump completed' trailer \(truncated\)"):
        dump_bytes(my_spec(my_database))
