"""An application's sources and databases in one snapshot; failing dumps leave no snapshot."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest

from casbackup.archiver.application import (
    app_definition,
    backup_application,
    backup_options,
    dump_filename,
    dump_size_warnings,
)
from casbackup.archiver.stream import ChunkReader
from casbackup.config.model import AppConfig, AppVerification, RetentionConfig
from casbackup.engines.base import DatabaseSpec
from casbackup.errors import DatabaseError, IntegrityError
from casbackup.repo.ids import Kind
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import DatabaseRecord, Snapshot


def make_sqlite(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i} " * 20,) for i in range(rows)])
    conn.commit()
    conn.close()


def make_app(tmp_path: Path, rows: int = 500, **kw: object) -> AppConfig:
    src = tmp_path / "src"
    (src / "logs").mkdir(parents=True, exist_ok=True)
    (src / "main.py").write_text("print('hi')\n")
    (src / "logs" / "x.log").write_text("noise\n")
    db = tmp_path / "app.sqlite3"
    if not db.exists():
        make_sqlite(db, rows)
    fields: dict[str, object] = dict(
        name="shop", sources=(str(src),), excludes=("*.log",),
        databases=(DatabaseSpec(name="main", engine="sqlite", path=str(db),
                                password_env="SHOP_PW", options={"api_token": "hunter2"}),),
        retention=RetentionConfig(keep_last=3), verification=AppVerification(("main.py",)),
    )  # fmt: skip
    fields.update(kw)
    return AppConfig(**fields)  # type: ignore[arg-type]


def test_definition_holds_no_secrets_and_is_json(tmp_path: Path) -> None:
    definition = app_definition(make_app(tmp_path))
    text = json.dumps(definition)
    assert "hunter2" not in text and "api_token" not in text
    assert definition["databases"][0]["password_env"] == "SHOP_PW"  # where, never what
    assert definition["verification"]["required_files"] == ["main.py"]


def test_dump_filenames() -> None:
    assert dump_filename(DatabaseSpec("a", "postgres")) == "a.pgdump"
    assert dump_filename(DatabaseSpec("b", "mariadb")) == "b.sql"
    assert dump_filename(DatabaseSpec("c", "sqlite3")) == "c.sqlite"


def test_sources_and_database_in_one_snapshot(repo: Repository, tmp_path: Path) -> None:
    app = make_app(tmp_path)
    outcome = backup_application(repo, backup_options(app, backup_type="full"))
    snap = outcome.snapshot
    assert snap is not None and snap.app == "shop" and snap.type == "full"
    (record,) = snap.databases
    assert (record.name, record.engine, record.format) == ("main", "sqlite", "sqlite-db")
    assert record.row_counts == {"t": 500} and record.server_version
    assert snap.app_definition == app_definition(app)
    paths = {p.decode() for p, _ in repo.walk(snap.root)}
    assert "/.databases/main.sqlite" in paths
    assert any(p.endswith("/src/main.py") for p in paths)
    assert not any(p.endswith(".log") for p in paths)
    node = repo.find_node(snap.root, record.path)
    assert node is not None
    restored = tmp_path / "restored.sqlite3"
    with ChunkReader.for_node(repo, node) as reader:
        restored.write_bytes(reader.read())
    conn = sqlite3.connect(restored)
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 500
    conn.close()


def test_failing_dump_leaves_no_snapshot(repo: Repository, tmp_path: Path) -> None:
    app = make_app(tmp_path)
    broken = DatabaseSpec(name="gone", engine="sqlite", path=str(tmp_path / "missing.sqlite3"))
    app = make_app(tmp_path, databases=(*app.databases, broken))
    with pytest.raises(DatabaseError) as err:
        backup_application(repo, backup_options(app))
    message = str(err.value)
    assert "no snapshot was saved" in message and "missing.sqlite3 does not exist" in message
    assert "\n" not in message and err.value.exit_code == 27
    assert repo.list_snapshots() == []


def test_shrunken_dump_warns_but_succeeds(repo: Repository, tmp_path: Path) -> None:
    app = make_app(tmp_path, rows=3000)
    first = backup_application(repo, backup_options(app))
    assert first.dump_warnings == []
    db = tmp_path / "app.sqlite3"
    db.unlink()
    make_sqlite(db, 10)
    second = backup_application(repo, backup_options(app))
    assert second.snapshot is not None
    (warning,) = second.dump_warnings
    assert "'main'" in warning and "less than half" in warning
    assert first.snapshot is not None and first.snapshot.short_id in warning
    third = backup_application(repo, backup_options(app))
    assert third.dump_warnings == []  # compared with the latest dump, not the largest


def test_size_guard_compares_same_database_only() -> None:
    def snap(sid: str, *records: DatabaseRecord) -> Snapshot:
        return Snapshot(time="2024-01-01T00:00:00+00:00", start_ns=0, host="h", user="u",
                        paths=(), tree="00" * 32, databases=records, id=sid)  # fmt: skip

    def rec(name: str, size: int, engine: str = "postgresql") -> DatabaseRecord:
        return DatabaseRecord(name, engine, "pg-custom", "15", f"/.databases/{name}", size)

    old = snap("a" * 64, rec("main", 1000), rec("other", 10))
    new = snap("b" * 64, rec("main", 499), rec("other", 1), rec("fresh", 1), rec("x", 5, "mysql"))
    warnings = dump_size_warnings(new, [old])
    assert len(warnings) == 2 and "'main'" in warnings[0] and "'other'" in warnings[1]
    assert dump_size_warnings(snap("c" * 64, rec("main", 500)), [old]) == []


def test_chunk_reader_streams_and_checks(repo: Repository) -> None:
    pieces = [bytes([i]) * (10_000 + i) for i in range(5)]
    ids = [repo.save_blob(Kind.DATA, p)[0] for p in pieces]
    repo.flush()
    data = b"".join(pieces)
    import blake3

    reader = ChunkReader(repo, ids, size=len(data), content_hash=blake3.blake3(data).digest())
    out = io.BytesIO()
    buf = bytearray(777)
    while n := reader.readinto(buf):
        assert n <= 777
        out.write(buf[:n])
    assert out.getvalue() == data
    wrong = ChunkReader(repo, list(reversed(ids)), size=len(data),
                        content_hash=blake3.blake3(data).digest(), name="dump")  # fmt: skip
    with pytest.raises(IntegrityError, match="dump: content does not match"):
        wrong.read()
    short = ChunkReader(repo, ids[:2], size=len(data))
    with pytest.raises(IntegrityError, match="records"):
        short.read()


def test_a_live_database_in_the_sources_is_left_to_its_dump(  # type: ignore[no-untyped-def]
    repo: Repository, tmp_path: Path, reads
) -> None:
    """The seed's demo layout: the app's SQLite database (WAL mode, written to during the
    backup) inside its folder. The walk leaves it and its companions out; the dump has it."""
    import threading

    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    (src / "main.py").write_text("print('hi')\n")
    db = src / "data" / "app.db"
    conn = sqlite3.connect(db, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.commit()
    # An empty rollback journal beside it (a non-empty one would be "hot" and block readers).
    (src / "data" / "app.db-journal").write_bytes(b"")
    stop, writing = threading.Event(), threading.Event()

    def write() -> None:
        # A busy application: a commit every 2 ms. (A writer committing back to back with
        # no pause at all can starve SQLite's online backup, which retries while busy.)
        while not stop.wait(0.002):
            conn.execute("INSERT INTO t (v) VALUES (?)", ("x" * 200,))
            conn.commit()
            writing.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        # Under load the thread may not have committed a row before the dump is taken (a
        # dump of 0 rows was seen once): the backup starts once the application is writing.
        assert writing.wait(30)
        app = make_app(tmp_path, sources=(str(src),), databases=(
            DatabaseSpec(name="main", engine="sqlite", path=str(db)),))  # fmt: skip
        outcome = backup_application(repo, backup_options(app, backup_type="full"))
    finally:
        stop.set()
        writer.join()
    assert (src / "data" / "app.db-wal").exists()  # it was live in WAL mode
    snap = outcome.snapshot
    assert snap is not None
    assert outcome.result.warnings == [] and snap.summary.errors == 0  # not "partial"
    assert snap.excluded_databases == (str(db),)
    said = [n for n in outcome.result.notes if str(db) in n]
    assert len(said) == 1 and "database dumps" in said[0]
    paths = {p.decode() for p, _ in repo.walk(snap.root)}
    assert not any("app.db" in p for p in paths), sorted(p for p in paths if "app.db" in p)
    assert any(p.endswith("/src/main.py") for p in paths)
    assert not any(b"app.db" in r for r in reads)  # never even read
    # The database comes back from its dump, consistent.
    (record,) = snap.databases
    node = repo.find_node(snap.root, record.path)
    assert node is not None
    restored = tmp_path / "restored.db"
    with ChunkReader.for_node(repo, node) as reader:
        restored.write_bytes(reader.read())
    check = sqlite3.connect(restored)
    assert check.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert check.execute("SELECT count(*) FROM t").fetchone()[0] == record.row_counts["t"] > 0
    check.close()
    conn.close()


def test_a_database_outside_the_sources_is_not_listed(repo: Repository, tmp_path: Path) -> None:
    outcome = backup_application(repo, backup_options(make_app(tmp_path)))
    assert outcome.snapshot is not None and outcome.snapshot.excluded_databases == ()
    assert not any("database dumps" in n for n in outcome.result.notes)
