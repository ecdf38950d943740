"""How much a second nightly backup of a database adds, per engine and dump chunker.

For SQLite, PostgreSQL and MariaDB: fill a table to a dump of about --mb MB, then take four
dumps with the real engines: the original, again unchanged, after updating 1% of the rows in one
block (clustered: recent rows), and after updating 1% spread evenly (scattered). Each dump
sequence is then backed up, in order, by the real backup pipeline into a fresh repository per
chunker setting; the table shows what each backup added (plaintext bytes of new chunks, and
bytes stored after compression and encryption).

The dumps are taken once and kept in a temporary folder so every chunker sees the same bytes
(the backup reads them from those files instead of the tool's pipe; the chunking, dedup and
storage path is the same).

    .venv/bin/python bench/dump_dedup.py [--mb 100] [--engines sqlite,postgresql,mysql]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from casbackup.archiver.backup import BackupOptions, StreamSpec, run_backup
from casbackup.crypto.keyfile import WEAK_KDF
from casbackup.engines import DumpInfo, get_engine
from casbackup.engines.base import DatabaseSpec
from casbackup.repo.config import DUMP_CHUNKER, ChunkerParams, RepoConfig
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalBackend

KIB = 1024
CHUNKERS = {
    "16K/32K/512K": ChunkerParams(min_size=16 * KIB, avg_size=32 * KIB, max_size=512 * KIB),
    f"{DUMP_CHUNKER.min_size // KIB}K/{DUMP_CHUNKER.avg_size // KIB}K/"
    f"{DUMP_CHUNKER.max_size // KIB}K (current)": DUMP_CHUNKER,
    "64K/128K/2M": ChunkerParams(min_size=64 * KIB, avg_size=128 * KIB, max_size=2048 * KIB),
    "256K/768K/8M (files)": ChunkerParams(),
}
STEPS = ("first", "unchanged", "1% clustered", "1% scattered")
ROW_BYTES = 85  # a row's share of the dump, roughly: sizes the table for --mb


def pg_sql(sql: str, db: str = "postgres") -> None:
    subprocess.run(["psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", db,
                    "-v", "ON_ERROR_STOP=1"], input=sql.encode(), check=True)  # fmt: skip


def my_sql(sql: str, db: str | None = None) -> None:
    argv = ["mariadb", "-h", "127.0.0.1", "-u", "root"] + ([f"--database={db}"] if db else [])
    subprocess.run(argv, input=sql.encode(), check=True)


class Subject:
    """One engine's database: create, change, dump, drop."""

    def __init__(self, engine: str, rows: int, work: Path) -> None:
        self.engine, self.rows = engine, rows
        name = f"casb_bench_{os.getpid()}"
        if engine == "sqlite":
            self.spec = DatabaseSpec("bench", "sqlite", path=str(work / "bench.sqlite3"))
        elif engine == "postgresql":
            self.spec = DatabaseSpec("bench", "postgresql", host="127.0.0.1", port=5432,
                                     user="postgres", database=name)  # fmt: skip
        else:
            self.spec = DatabaseSpec("bench", "mysql", host="127.0.0.1", port=3306, user="root",
                                     database=name)  # fmt: skip
        self.name = name

    def create(self) -> None:
        n = self.rows
        body = "md5(i::text) || ' ' || md5((i * 7)::text) || ' note'"
        if self.engine == "sqlite":
            conn = sqlite3.connect(self.spec.path or "")
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, k INTEGER, body TEXT)")
            conn.executemany("INSERT INTO t VALUES (?, ?, ?)",
                             ((i, i * 31 % 1000, f"{i:032x} {i * 7:032x} note") for i in range(1, n + 1)))  # fmt: skip
            conn.commit()
            conn.close()
        elif self.engine == "postgresql":
            pg_sql(f"CREATE DATABASE {self.name};")
            pg_sql("CREATE TABLE t (id int PRIMARY KEY, k int, body text);"
                   f"INSERT INTO t SELECT i, i * 31 % 1000, {body} FROM generate_series(1, {n}) i;",
                   self.name)  # fmt: skip
        else:
            my_sql(f"CREATE DATABASE {self.name};")
            my_sql("CREATE TABLE t (id INT PRIMARY KEY, k INT, body TEXT) ENGINE=InnoDB;"
                   "INSERT INTO t SELECT seq, seq * 31 % 1000, CONCAT(MD5(seq), ' ', MD5(seq * 7), ' note') "
                   f"FROM seq_1_to_{n};", self.name)  # fmt: skip

    def change(self, where: str) -> None:
        sql = f"UPDATE t SET body = body || ' edited', k = k + 1 WHERE {where};"
        if self.engine == "sqlite":
            conn = sqlite3.connect(self.spec.path or "")
            conn.execute(sql)
            conn.commit()
            conn.close()
        elif self.engine == "postgresql":
            pg_sql(sql, self.name)
        else:
            my_sql(sql.replace("body || ' edited'", "CONCAT(body, ' edited')"), self.name)

    def dump_to(self, path: Path) -> DumpInfo:
        with get_engine(self.engine).dump(self.spec) as stream, open(path, "wb") as out:
            while data := stream.read(1 << 20):
                out.write(data)
            return stream.finish()

    def drop(self) -> None:
        get_engine(self.engine).drop(self.spec)


@dataclass
class FileDump:
    """A stored dump replayed as a DumpSource."""

    path: Path
    info: DumpInfo

    def open(self) -> FileDump:
        self._f = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        return self

    def readinto(self, b: bytearray) -> int:
        return self._f.readinto(b)

    def finish(self) -> DumpInfo:
        return self.info

    def close(self) -> None:
        self._f.close()


def measure(dumps: list[FileDump], params: ChunkerParams, work: Path) -> list[tuple[int, int]]:
    repo_dir = tempfile.mkdtemp(dir=work, prefix="repo-")
    repo = Repository.init(LocalBackend(repo_dir), b"bench", kdf=WEAK_KDF,
                           config=RepoConfig(dump_chunker=params))  # fmt: skip
    empty = work / "empty-source"
    empty.mkdir(exist_ok=True)
    added = []
    try:
        for dump in dumps:
            spec = StreamSpec("bench", "bench.dump", dump.info.engine, dump.open)
            opts = BackupOptions(paths=(str(empty),), app="bench", streams=(spec,))
            snap = run_backup(repo, opts).snapshot
            assert snap is not None
            added.append((snap.summary.bytes_added, snap.summary.bytes_stored))
    finally:
        repo.close()
    return added


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="approximate dump size in MB")
    parser.add_argument("--engines", default="sqlite,postgresql,mysql")
    args = parser.parse_args()
    rows = args.mb * 1_000_000 // ROW_BYTES
    with tempfile.TemporaryDirectory(prefix="casb-dump-dedup-") as tmp:
        work = Path(tmp)
        os.environ["CASBACKUP_CACHE_DIR"] = str(work / "cache")
        print(
            f"{'engine':<11} {'chunker':<24} {'dump MB':>8} " + " ".join(f"{s:>18}" for s in STEPS)
        )
        for engine in args.engines.split(","):
            subject = Subject(engine, rows, work)
            t0 = time.monotonic()
            subject.create()
            dumps = []
            try:
                for i, step in enumerate(STEPS):
                    if step == "1% clustered":  # the newest 1% of rows, as an app edits recent data
                        subject.change(f"id > {rows - rows // 100}")
                    elif step == "1% scattered":
                        subject.change("id % 100 = 37")
                    path = work / f"{engine}-{i}.dump"
                    dumps.append(FileDump(path, subject.dump_to(path)))
            finally:
                subject.drop()
            size = dumps[0].path.stat().st_size / 1e6
            print(
                f"# {engine}: {rows} rows, dumps taken in {time.monotonic() - t0:.0f}s",
                file=sys.stderr,
            )
            for label, params in CHUNKERS.items():
                cells = measure(dumps, params, work)
                text = " ".join(f"{a / 1e6:>8.2f} ({s / 1e6:>6.2f})" for a, s in cells)
                print(f"{engine:<11} {label:<24} {size:>8.1f} {text}", flush=True)
            for d in dumps:
                d.path.unlink()
        print("cells: MB added (MB stored after zstd + encryption) by each backup, in order")


if __name__ == "__main__":
    main()
