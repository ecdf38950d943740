"""SQLite engine: a consistent online copy under concurrent writes, and the failure cases."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casbackup.engines import get_engine
from casbackup.engines.base import DatabaseSpec
from casbackup.engines.sqlite import SqliteEngine
from casbackup.errors import DatabaseError
from tests.engines.conftest import read_in_pieces
from tests.loopfs import tmpfs

# Each transaction moves an amount between accounts and logs it: the sum of balances never
# changes, and the ledger's row count equals the number of committed transfers. A torn copy
# (half a transaction, or pages from two states) breaks one of the two.
WRITER = r"""
import random, sqlite3, sys, time
path, journal = sys.argv[1], sys.argv[2]
conn = sqlite3.connect(path, timeout=60, isolation_level=None)
conn.execute(f"PRAGMA journal_mode={journal}")
print("ready", flush=True)
n = 0
while True:
    a, b = random.randrange(500), random.randrange(500)
    amount = random.randrange(1, 100)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("UPDATE accounts SET balance = balance - ? WHERE id = ?", (amount, a))
    conn.execute("UPDATE accounts SET balance = balance + ? WHERE id = ?", (amount, b))
    conn.execute("INSERT INTO ledger (src, dst, amount, pad) VALUES (?, ?, ?, randomblob(200))",
                 (a, b, amount))
    conn.execute("UPDATE meta SET transfers = transfers + 1")
    conn.execute("COMMIT")
    n += 1
"""
TOTAL = 500 * 1000


def make_bank(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL, name TEXT);
        CREATE TABLE ledger (id INTEGER PRIMARY KEY, src INT, dst INT, amount INT, pad BLOB);
        CREATE TABLE meta (transfers INTEGER NOT NULL);
        INSERT INTO meta VALUES (0);
        """
    )
    conn.executemany(
        "INSERT INTO accounts VALUES (?, 1000, ?)", [(i, f"Zoë {i} ✓") for i in range(500)]
    )
    # Some bulk so that the copy takes long enough for writes to overlap it.
    conn.executemany(
        "INSERT INTO ledger (src, dst, amount, pad) VALUES (0, 0, 0, randomblob(4000))",
        [()] * 3000,
    )
    conn.execute("UPDATE meta SET transfers = 3000")
    conn.commit()
    conn.close()


def spec_for(path: Path, **options: str) -> DatabaseSpec:
    return DatabaseSpec(name="bank", engine="sqlite", path=str(path), options=options)


def _until_transfers_past(db: Path, count: int, writer: subprocess.Popen[str]) -> None:
    """Until the writer has committed more than ``count`` transfers in all (a hang guard)."""
    deadline = time.monotonic() + 60
    while True:
        conn = sqlite3.connect(db, timeout=60)
        try:
            if conn.execute("SELECT transfers FROM meta").fetchone()[0] > count:
                return
        finally:
            conn.close()
        assert writer.poll() is None and time.monotonic() < deadline, "the writer stalled"
        time.sleep(0.01)


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_consistent_copy_under_concurrent_writes(tmp_path: Path, journal: str) -> None:
    db = tmp_path / "bank.db"
    make_bank(db)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), journal], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        # Each copy starts once the writer has committed more (not after a fixed wait, which
        # a loaded machine can outlast before the writer's first commit): every copy races
        # a writer that is under way.
        _until_transfers_past(db, 3000, writer)
        engine = get_engine("sqlite")
        transfers_seen = []
        for i in range(4):
            with engine.dump(spec_for(db)) as stream:
                data = read_in_pieces(stream, 4093)
                info = stream.finish()
            assert data.startswith(b"SQLite format 3\x00") and info.size == len(data)
            restored = tmp_path / f"restored-{i}.db"
            result = engine.restore(spec_for(restored), io.BytesIO(data))
            assert result.row_counts == info.row_counts
            conn = sqlite3.connect(restored)
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("SELECT sum(balance) FROM accounts").fetchone()[0] == TOTAL
            transfers = conn.execute("SELECT transfers FROM meta").fetchone()[0]
            assert conn.execute("SELECT count(*) FROM ledger").fetchone()[0] == transfers
            assert info.row_counts["ledger"] == transfers
            conn.close()
            transfers_seen.append(transfers)
            _until_transfers_past(db, transfers, writer)
        assert writer.poll() is None, "the writer must have been running throughout"
    finally:
        writer.kill()
        writer.wait()
    # The writer made progress between copies: the test really raced against writes.
    assert transfers_seen[-1] > transfers_seen[0] > 3000


def test_missing_file_is_an_error_not_an_empty_database(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    with pytest.raises(DatabaseError, match="does not exist .refusing to back it up as an empty"):
        SqliteEngine().dump(spec_for(missing))
    assert not missing.exists()  # and it was not created as a side effect


def test_not_a_database(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"hello, I am a text file" * 100)
    with pytest.raises(DatabaseError, match="is not an SQLite 3 database"):
        SqliteEngine().dump(spec_for(bogus))


def test_empty_database_refused_unless_allowed(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    sqlite3.connect(db).execute("PRAGMA user_version = 1").connection.close()
    with pytest.raises(DatabaseError, match="has no tables"):
        SqliteEngine().dump(spec_for(db))
    with SqliteEngine().dump(spec_for(db, allow_empty="true")) as stream:
        stream.read()
        assert stream.finish().row_counts == {}


def test_temp_copy_never_lingers(tmp_path: Path) -> None:
    db, scratch = tmp_path / "bank.db", tmp_path / "scratch"
    scratch.mkdir()
    make_bank(db)
    with SqliteEngine().dump(spec_for(db, temp_dir=str(scratch))) as stream:
        assert os.listdir(scratch) == []  # unlinked while open: gone even if we crash now
        assert stream.read(100)
    with pytest.raises(DatabaseError):
        SqliteEngine().dump(spec_for(tmp_path / "missing.db", temp_dir=str(scratch)))
    assert os.listdir(scratch) == []


def test_finish_before_eof_fails(tmp_path: Path) -> None:
    db = tmp_path / "bank.db"
    make_bank(db)
    stream = SqliteEngine().dump(spec_for(db))
    stream.read(10)
    with pytest.raises(DatabaseError, match="before the copy was read to EOF"):
        stream.finish()


def test_restore_refuses_existing_unless_overwrite_and_drop(tmp_path: Path) -> None:
    data = _bank_dump(tmp_path)
    target = tmp_path / "target.db"
    target.write_bytes(b"precious")
    with pytest.raises(DatabaseError, match="already exists and is not empty"):
        SqliteEngine().restore(spec_for(target), io.BytesIO(data))
    assert target.read_bytes() == b"precious"
    Path(str(target) + "-wal").write_bytes(b"stale wal of the old database")
    SqliteEngine().restore(spec_for(target), io.BytesIO(data), overwrite=True)
    assert not Path(str(target) + "-wal").exists()
    assert SqliteEngine().row_counts(spec_for(target))["accounts"] == 500
    SqliteEngine().drop(spec_for(target))
    assert not target.exists()


def _bank_dump(tmp_path: Path) -> bytes:
    db = tmp_path / "bank.db"
    make_bank(db)
    with SqliteEngine().dump(spec_for(db)) as stream:
        data = stream.read()
        stream.finish()
    return data


def test_restore_over_a_symlink_restores_the_file_it_leads_to(tmp_path: Path) -> None:
    # A database kept on another disk behind a link (/var/lib/app/app.db -> /data/app.db): the
    # backup read it through the link; the restore used to replace the link by a file, leaving
    # the application's data on the wrong disk and the old file behind.
    data = _bank_dump(tmp_path)
    (tmp_path / "data").mkdir()
    real = tmp_path / "data" / "app.db"
    real.write_bytes(b"old database")
    Path(str(real) + "-wal").write_bytes(b"stale wal")
    (tmp_path / "lib").mkdir()
    link = tmp_path / "lib" / "app.db"
    link.symlink_to("../data/app.db")
    info = SqliteEngine().restore(spec_for(link), io.BytesIO(data), overwrite=True)
    assert link.is_symlink() and os.readlink(link) == "../data/app.db"
    assert info.target == str(real)
    assert any("is a symbolic link" in w and str(real) in w for w in info.warnings)
    assert not Path(str(real) + "-wal").exists()
    assert SqliteEngine().row_counts(spec_for(real))["accounts"] == 500
    # A dangling link: the file is created where it leads.
    real.unlink()
    SqliteEngine().restore(spec_for(link), io.BytesIO(data))
    assert link.is_symlink() and SqliteEngine().row_counts(spec_for(real))["accounts"] == 500


def test_restore_refuses_another_users_link_and_loops(tmp_path: Path) -> None:
    data = _bank_dump(tmp_path)
    victim = tmp_path / "victim"
    victim.write_bytes(b"someone else's file")
    link = tmp_path / "app.db"
    link.symlink_to(victim)
    if os.geteuid() == 0:
        os.lchown(link, 4242, 4242)
        with pytest.raises(DatabaseError, match="symbolic link owned by uid 4242, not followed"):
            SqliteEngine().restore(spec_for(link), io.BytesIO(data), overwrite=True)
        assert victim.read_bytes() == b"someone else's file" and link.is_symlink()
    loop = tmp_path / "loop.db"
    loop.symlink_to("loop.db")
    with pytest.raises(DatabaseError, match="symbolic link loop"):
        SqliteEngine().restore(spec_for(loop), io.BytesIO(data), overwrite=True)
    folder_link = tmp_path / "dir.db"
    folder_link.symlink_to(tmp_path)
    with pytest.raises(DatabaseError, match="exists and is not a regular file"):
        SqliteEngine().restore(spec_for(folder_link), io.BytesIO(data), overwrite=True)


def test_restore_of_garbage_leaves_target_untouched(tmp_path: Path) -> None:
    target = tmp_path / "t.db"
    with pytest.raises(DatabaseError, match="not an SQLite 3 database"):
        SqliteEngine().restore(spec_for(target), io.BytesIO(b"garbage" * 1000))
    assert os.listdir(tmp_path) == []


def test_restore_names_the_target_when_it_cannot_be_written(tmp_path: Path) -> None:
    """Not 'File exists: <a parent>' nor the temporary file's name: the target and why."""
    (tmp_path / "afile").write_text("a file where a folder goes")
    for target in (tmp_path / "afile" / "x.db", tmp_path / "afile" / "sub" / "x.db"):
        with pytest.raises(DatabaseError) as info:
            SqliteEngine().restore(spec_for(target), io.BytesIO(b"SQLite format 3\0"))
        assert str(info.value) == (
            f"database 'bank': cannot write {target}: {tmp_path / 'afile'} is a file, not a folder"
        )


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_restore_onto_a_full_disk_names_the_target_and_leaves_nothing(tmp_path: Path) -> None:
    db = tmp_path / "bank.db"
    make_bank(db)
    with SqliteEngine().dump(spec_for(db)) as stream:
        data = stream.read()
        stream.finish()
    size = max(64 * 1024, len(data) // 2 // 4096 * 4096)  # room for half the database
    with tmpfs(tmp_path / "small", f"size={size}") as small:
        target = small / "restored.db"
        with pytest.raises(DatabaseError) as info:
            SqliteEngine().restore(spec_for(target), io.BytesIO(data))
        assert str(info.value) == f"database 'bank': cannot write {target}: No space left on device"
        assert os.listdir(small) == []


_KILLED_CHILD = r"""
import io, sys, time
from casbackup.engines.base import DatabaseSpec
from casbackup.engines.sqlite import SqliteEngine

data = open(sys.argv[1], "rb").read()

class Half(io.RawIOBase):
    pos = 0
    def readable(self):
        return True
    def readinto(self, b):
        if self.pos >= len(data) // 2:
            print("HALF", flush=True)
            time.sleep(3600)
        n = min(len(b), 4096, len(data) // 2 - self.pos)
        b[:n] = data[self.pos:self.pos + n]
        self.pos += n
        return n

SqliteEngine().restore(DatabaseSpec(name="lite", engine="sqlite", path=sys.argv[2]), Half())
"""


def test_a_killed_restore_leaves_a_copy_that_the_next_restore_removes(tmp_path: Path) -> None:
    """SIGKILLed mid-write, a restore left its temporary copy of the database beside the
    target for good (a whole database's size, under a random name nobody swept)."""
    source = tmp_path / "bank.db"
    make_bank(source)
    with SqliteEngine().dump(spec_for(source)) as stream:
        data = read_in_pieces(stream)
        stream.finish()
    dump = tmp_path / "bank.dump"
    dump.write_bytes(data)
    target_dir = tmp_path / "live"
    target_dir.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, str(dump), str(target_dir / "bank.db")],
        cwd=Path(__file__).resolve().parents[2], stdout=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None and child.stdout.readline() == b"HALF\n"
    # While it runs, another restore into the folder leaves its file alone.
    SqliteEngine().restore(spec_for(target_dir / "other.db"), io.BytesIO(data))
    left = [p.name for p in target_dir.iterdir() if p.name.startswith(".casbackup-")]
    assert len(left) == 1
    child.kill()
    child.wait()
    child.stdout.close()
    assert [p.name for p in target_dir.iterdir() if p.name.startswith(".casbackup-")] == left
    info = SqliteEngine().restore(spec_for(target_dir / "bank.db"), io.BytesIO(data))
    assert not [p for p in target_dir.iterdir() if p.name.startswith(".casbackup-")]
    assert (
        f"database 'bank': removed {left[0]} from {target_dir}, left by a restore that was killed"
        in info.warnings
    )


_DUMPING_CHILD = r"""
import sys
from casbackup.engines.base import DatabaseSpec
from casbackup.engines.sqlite import SqliteEngine

spec = DatabaseSpec(name="bank", engine="sqlite", path=sys.argv[1],
                    options={"temp_dir": sys.argv[2], "busy_timeout": "600"})
SqliteEngine().dump(spec)
"""


def test_a_killed_backup_leaves_a_copy_that_the_next_dump_removes(tmp_path: Path) -> None:
    """SIGKILLed while SQLite's backup API copied the database (before the copy is
    unlinked, at the start of streaming), a backup left that copy in the temp folder for
    good: 1.5 GB a killed backup of a 1.5 GB database, under a random name nobody swept."""
    source = tmp_path / "bank.db"
    make_bank(source)
    temp = tmp_path / "tmp"
    temp.mkdir()
    (temp / "casbackup-sqlite-dump-1-0000000x-0").write_bytes(b"not ours: no token")
    # A writer holds the database: the dump waits with its copy made, as a long one does.
    holder = sqlite3.connect(source, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    child = subprocess.Popen(
        [sys.executable, "-c", _DUMPING_CHILD, str(source), str(temp)],
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while len(list(temp.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        # While it runs, another database's dump leaves its copy alone.
        other = tmp_path / "other.db"
        make_bank(other)
        with SqliteEngine().dump(spec_for(other, temp_dir=str(temp))) as stream:
            read_in_pieces(stream)
            stream.finish()
        left = sorted(p.name for p in temp.iterdir())
        assert len(left) == 2
    finally:
        child.kill()
        child.wait()
        holder.execute("ROLLBACK")
        holder.close()
    with SqliteEngine().dump(spec_for(source, temp_dir=str(temp))) as stream:
        read_in_pieces(stream)
        stream.finish()
    assert [p.name for p in temp.iterdir()] == ["casbackup-sqlite-dump-1-0000000x-0"]


def test_a_virtual_table_of_an_extension_this_sqlite_lacks_is_backed_up(tmp_path: Path) -> None:
    """Found backing up a database that an application with a loadable extension made (a
    SpatiaLite spatial index, a sqlite-vec table): every backup failed with 'cannot copy
    ...: no such module: vec0', exit 27, because counting its rows needs the extension.
    The table is left out of the counts; its pages are copied, the rest counted."""
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT) STRICT;"
        "INSERT INTO items VALUES (1, 'a'), (2, 'b');"
        "CREATE VIRTUAL TABLE docs USING fts5(body); INSERT INTO docs VALUES ('hello');"
        "PRAGMA user_version = 7; PRAGMA application_id = 1234;"
    )
    # As the extension's CREATE VIRTUAL TABLE leaves it in the file (no module here).
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute(
        "INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) VALUES ('table', "
        "'vec', 'vec', 0, 'CREATE VIRTUAL TABLE vec USING vec0(embedding float[4])')"
    )
    conn.commit()
    conn.close()
    engine = SqliteEngine()
    with engine.dump(spec_for(path)) as stream:
        data = read_in_pieces(stream)
        info = stream.finish()
    assert info.row_counts["items"] == 2 and info.row_counts["docs"] == 1
    assert "vec" not in info.row_counts
    target = tmp_path / "restored.db"
    restored = engine.restore(spec_for(target), io.BytesIO(data))
    assert restored.row_counts == info.row_counts
    conn = sqlite3.connect(target)
    try:
        assert conn.execute("PRAGMA user_version").fetchone() == (7,)
        assert conn.execute("PRAGMA application_id").fetchone() == (1234,)
        assert conn.execute("SELECT sql FROM sqlite_master WHERE name = 'vec'").fetchone() == (
            "CREATE VIRTUAL TABLE vec USING vec0(embedding float[4])",
        )
    finally:
        conn.close()


LOCKER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
conn.execute("INSERT INTO t VALUES (2)")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_source_locked_past_busy_timeout_fails_the_dump(tmp_path: Path) -> None:
    """Found with a writer holding an exclusive lock (a rollback-journal database) for 25 s
    and options.busy_timeout = 3: the backup waited the whole 25 s and saved, because
    sqlite3's backup() retries a busy source for ever whatever the timeout; a lock never
    let go hung the backup for good. The read transaction is now taken first, under the
    timeout, and a lock held past it fails the dump in one line. A busy_timeout that is
    no number was a ValueError traceback: it is refused like other options."""
    path = tmp_path / "app.db"
    conn = sqlite3.connect(path)
    conn.executescript("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
    conn.close()
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(path), "20"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
        with pytest.raises(DatabaseError, match=r"database is locked \(another process kept "
                           r"it locked for over options.busy_timeout = 1 s\)"):  # fmt: skip
            SqliteEngine().dump(spec_for(path, busy_timeout="1"))
    finally:
        locker.kill()
        locker.wait()
    with SqliteEngine().dump(spec_for(path)) as stream:  # the lock gone, the copy is taken
        read_in_pieces(stream)
        assert stream.finish().row_counts == {"t": 1}
    with pytest.raises(DatabaseError, match="options.busy_timeout must be a number of seconds"):
        SqliteEngine().dump(spec_for(path, busy_timeout="nan"))
