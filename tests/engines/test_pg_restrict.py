"""The globals file's `\\restrict` key is derived from its content (pg_restrict.py).

pg_dumpall 15.14+/16.10+/17.6+ writes a random key into every globals file, which made the
file new every night: two backups of an unchanged database never deduplicated it.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from pathlib import Path

import pytest

from casbackup.engines.base import DumpInfo, DumpStream
from casbackup.engines.pg_restrict import StableKeyStream
from casbackup.engines.postgresql import PostgresEngine, conninfo
from casbackup.errors import DatabaseError
from tests.engines.conftest import PG_HOST, PG_PORT, PG_USER, pg_spec, psql, read_in_pieces
from tests.engines.test_backup_integration import cli, db_entry, write_config

HEAD = b"--\n-- PostgreSQL database cluster dump\n--\n\n"
BODY = b"SET x = 1;\nCREATE ROLE a;\n"
TAIL = b"--\n-- PostgreSQL database cluster dump complete\n--\n\n"


class Canned(DumpStream):
    """A dump stream over fixed bytes whose finish() reports their size."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data = io.BytesIO(data)
        self.size = len(data)

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        return self._data.readinto(b)

    def finish(self) -> DumpInfo:
        return DumpInfo("postgresql", "pg-globals-sql", "15", {}, "sql", self.size)


def script(key: bytes, body: bytes = BODY) -> bytes:
    return HEAD + b"\\restrict " + key + b"\n\n" + body + b"\\unrestrict " + key + b"\n\n" + TAIL


def rewritten(data: bytes) -> tuple[bytes, DumpInfo]:
    stream = StableKeyStream(Canned(data), "globals of database 'x'")
    try:
        out = read_in_pieces(stream, piece=7)
        return out, stream.finish()
    finally:
        stream.close()


def test_random_keys_give_one_file_and_content_changes_the_key() -> None:
    one, info = rewritten(script(b"Rand0mKeyOne"))
    two, _ = rewritten(script(b"OtherRandomKey42"))
    assert one == two and info.size == len(one)
    key = hashlib.sha256(b"casbackup pg restrict key v1\0" + script(b"")).hexdigest().encode()
    assert one == script(key)
    changed, _ = rewritten(script(b"Rand0mKeyOne", BODY + b"CREATE ROLE b;\n"))
    assert b"\\restrict " + key not in changed and changed.count(b"restrict ") == 2


def test_only_the_tools_own_key_lines_change() -> None:
    # Content cannot hold the tool's random key; a key line of its own is kept as it is
    # (it is hashed with the rest, so it cannot name the derived key).
    planted = BODY + b"\\unrestrict abc\n\\restrict abc\n"
    out, _ = rewritten(script(b"Rand0mKey", planted))
    assert b"\\unrestrict abc\n\\restrict abc\n" in out and b"Rand0mKey" not in out
    crlf, _ = rewritten(script(b"Rand0mKey").replace(b"\n", b"\r\n"))
    assert b"Rand0mKey" not in crlf and crlf.count(b"\r\n") == script(b"").count(b"\n")


def test_a_script_without_a_key_passes_unchanged() -> None:
    old = HEAD + BODY + TAIL  # pg_dumpall before 15.14 writes no key
    assert rewritten(old) == (old, DumpInfo("postgresql", "pg-globals-sql", "15", {}, "sql",
                                            len(old)))  # fmt: skip


def test_finish_before_eof_is_refused() -> None:
    stream = StableKeyStream(Canned(script(b"k")), "globals of database 'x'")
    try:
        stream.read(10)
        with pytest.raises(DatabaseError, match="before the dump was read to EOF"):
            stream.finish()
    finally:
        stream.close()


def globals_of(spec_db: str = "postgres") -> bytes:
    stream = PostgresEngine().dump_globals(pg_spec(spec_db))
    try:
        data = read_in_pieces(stream)
        info = stream.finish()
    finally:
        stream.close()
    assert info.size == len(data)
    return data


def without_keys(data: bytes) -> bytes:
    return b"".join(ln for ln in data.splitlines(True) if b"restrict " not in ln)


def test_two_globals_dumps_of_an_unchanged_server_are_identical(pg_server: None) -> None:
    # Other tests share the server and may add a role between the two dumps: then the
    # files differ for a real reason, and the pair is taken again.
    for _ in range(5):
        first, second = globals_of(), globals_of()
        if without_keys(first) == without_keys(second):
            break
    assert first == second
    # psql accepts the derived key: the script's own \restrict/\unrestrict pair runs clean.
    keys = b"".join(ln for ln in first.splitlines(True) if ln.startswith(b"\\"))
    assert keys.startswith(b"\\restrict ") and keys.count(b"\n") == 2
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", conninfo(pg_spec("postgres"))],
                   input=keys + b"SELECT 1;\n", capture_output=True, check=True)  # fmt: skip


def test_two_backups_of_an_unchanged_database_keep_one_globals_file(
    tmp_path: Path, pg_database: str
) -> None:
    psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);", pg_database)
    entry = db_entry("main", "postgresql", host=PG_HOST, port=PG_PORT, user=PG_USER,
                     database=pg_database)  # fmt: skip
    config = write_config(tmp_path, {"shop": entry})
    for _ in range(5):  # as above: a role another test adds meanwhile changes the file
        ids = []
        for _ in range(2):
            result = cli(config, "--json", "backup", "--app", "shop")
            assert result.code == 0, result.err
            ids.append(json.loads(result.out.strip().splitlines()[-1])["snapshot_id"])
        old, new = (cli(config, "dump", f"{i}:/.databases/main.globals.sql").out for i in ids)
        if without_keys(old.encode()) == without_keys(new.encode()):
            break
    assert old == new and "\\restrict " in new
