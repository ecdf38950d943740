"""A PostgreSQL custom dump cut short is never recorded, whatever pg_dump's exit status.

Found with a pg_dump first on PATH that passed on the first 3 MB of the real tool's output
and exited 0 (a wrapper that stops copying; a broken pipe inside a container exec): the
backup said 'snapshot saved' with a 2.9 MiB dump of a 12.4 MiB database, exit 0, because a
custom dump has no trailer and only its first bytes (PGDMP) were checked. The stream's
structure is now followed as it goes by (engines/pg_archive.py).
"""

from __future__ import annotations

import os
import random
import stat
import subprocess
from pathlib import Path

import pytest

from casbackup.engines.pg_archive import CustomDumpCheck
from casbackup.engines.postgresql import conninfo
from casbackup.errors import DatabaseError
from tests.engines.conftest import PG_HOST, PG_PORT, PG_USER, pg_spec, psql


def _real_dump(database: str) -> bytes:
    """pg_dump's custom output through a pipe, as the engine runs it."""
    psql(
        "CREATE TABLE a (id int PRIMARY KEY, s text); INSERT INTO a SELECT g, 'row ' || g "
        "FROM generate_series(1, 40) g; CREATE TABLE empty_one (id int);"
        "CREATE TABLE b (id int, v bytea); INSERT INTO b VALUES (1, '\\x00ff00');"
        "CREATE MATERIALIZED VIEW mv AS SELECT count(*) FROM a;"
        "SELECT lo_from_bytea(0, '\\x000102ff'::bytea);",
        database,
    )
    argv = ["pg_dump", "--format=custom", "--compress=0", "--no-password", "--dbname",
            conninfo(pg_spec(database))]  # fmt: skip
    return subprocess.run(argv, capture_output=True, check=True).stdout


def _check(data: bytes, pieces: list[int] | None = None) -> None:
    check = CustomDumpCheck("database 'pgtest'")
    if pieces is None:
        check.feed(data)
    else:
        pick = random.Random(len(data))
        pos = 0
        while pos < len(data):
            size = pick.choice(pieces)
            check.feed(memoryview(data)[pos : pos + size])
            pos += size
    check.finish()


def test_a_dump_cut_anywhere_is_refused_and_a_whole_one_is_not(pg_database: str) -> None:
    data = _real_dump(pg_database)
    for pieces in (None, [1], [1, 2, 3, 5, 8, 1000]):
        _check(data, pieces)  # whole: accepted however it arrives
    for cut in range(len(data)):  # every prefix: the TOC, a chunk, between blocks, LOs
        for pieces in (None, [3, 7]):
            with pytest.raises(DatabaseError, match=r"database 'pgtest': pg_dump output "):
                _check(data[:cut], pieces)
    with pytest.raises(DatabaseError, match=r"bytes after the last data block"):
        _check(data + b"\0")


def test_a_newer_archive_version_is_checked_for_its_header_only(pg_database: str) -> None:
    """A pg_dump newer than this module must not make every backup fail."""
    data = bytearray(_real_dump(pg_database))
    data[6] = 99  # archive version 1.99
    _check(bytes(data[: len(data) // 2]))
    with pytest.raises(DatabaseError, match="not a whole custom dump"):
        _check(b"PGDMX" + bytes(data[5:]))


def _half_pg_dump(tmp_path: Path) -> dict[str, str]:
    """A pg_dump first on PATH that passes on half the real tool's output and exits 0."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "pg_dump"
    script.write_text(
        '#!/bin/sh\ncase "$*" in *--version*) exec /usr/bin/pg_dump "$@";; esac\n'
        '/usr/bin/pg_dump "$@" > "$0.out" || exit 1\n'
        'head -c $(( $(wc -c < "$0.out") / 2 )) "$0.out"\nexit 0\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def test_a_pg_dump_that_stops_half_way_and_exits_0_saves_no_snapshot(
    tmp_path: Path, pg_database: str
) -> None:
    from tests.engines.test_backup_integration import cli, db_entry, snapshot_count, write_config

    psql("CREATE TABLE t (id int PRIMARY KEY, s text); INSERT INTO t SELECT g, repeat('x', 200) "
         "FROM generate_series(1, 5000) g;", pg_database)  # fmt: skip
    entry = db_entry("orders", "postgresql", host=PG_HOST, port=PG_PORT, user=PG_USER,
                     database=pg_database)  # fmt: skip
    config = write_config(tmp_path, {"shop": entry})
    out = cli(config, "backup", "--app", "shop", **_half_pg_dump(tmp_path))
    assert out.code == 27, out.err
    (line,) = [ln for ln in out.err.splitlines() if ln.startswith("error:")]
    assert "database 'orders': pg_dump output ends before the dump does (truncated)" in line
    assert "no snapshot was saved" in line and "Traceback" not in out.err
    assert snapshot_count(config) == 0
    out = cli(config, "backup", "--app", "shop")  # the real pg_dump: saved
    assert out.code == 0, out.err
    assert snapshot_count(config) == 1
