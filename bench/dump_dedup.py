"""How much a second nightly backup of a database adds, per engine and dump chunker.

For SQLite, PostgreSQL and MariaDB: fill a table to a dump of about --mb MB, then take five
dumps with the real engines: the original, again unchanged, after updating 1% of the rows in one
block (clustered: recent rows, values grow), after updating 1% spread evenly (scattered,
values grow), and after rewriting 1% of the rows picked at random with values of the same
length (in place: SQLite's pages change where they are). Each dump is backed up, in order, by
the real backup pipeline into one repository per chunker setting and format: version 2 (no
delta blobs, the behaviour before issue 16), version 3 (new dump chunks stored as deltas of
the parent's, repo/delta.py), version 4 (also trees over 4 KiB as deltas of the parent's:
the dump's node lists every chunk id, repo/snapshotstore.py) and version 6 (equally long
chunks changed in place stored as aligned deltas, repo/aligned_delta.py). The table shows what each
backup stored (after compression and encryption) and its CPU time. ``--nights N`` then
adds N nights of 1% random in-place changes and reports the repository's size against the
first night's, and the CPU time to read back the first and the last night's dump, and the
floor: the rows those nights changed, each night's compressed on its own, added to the
first night's size.

SQLite's dump is a page image, which the backup cuts every 1 MiB whatever the dump chunker
(chunking.FixedChunker, since 2026-12-05): its rows' chunker labels name the repository's
setting, not its cut.

Each dump is taken once, written to a temporary file and backed up into every repository
from it (the backup reads the file instead of the tool's pipe; the chunking, dedup and
storage path is the same).

    .venv/bin/python bench/dump_dedup.py [--mb 100] [--engines sqlite,postgresql,mysql]
        [--nights 30] [--all-chunkers | --chunkers 64K/128K/2M,256K/768K/8M]
"""

from __future__ import annotations

import argparse
import os
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import zstandard

from casbackup.archiver.backup import BackupOptions, StreamSpec, run_backup
from casbackup.archiver.stream import ChunkReader
from casbackup.crypto.keyfile import WEAK_KDF
from casbackup.crypto.keys import MasterKey
from casbackup.engines import DumpInfo, get_engine
from casbackup.engines.base import DatabaseSpec
from casbackup.repo import delta
from casbackup.repo.config import DUMP_CHUNKER, ChunkerParams, RepoConfig
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.store.local import LocalBackend

KIB = 1024
CHUNKERS = {
    "16K/32K/512K": ChunkerParams(min_size=16 * KIB, avg_size=32 * KIB, max_size=512 * KIB),
    f"{DUMP_CHUNKER.min_size // KIB}K/{DUMP_CHUNKER.avg_size // KIB}K/"
    f"{DUMP_CHUNKER.max_size // KIB}K (current)": DUMP_CHUNKER,
    "64K/128K/2M": ChunkerParams(min_size=64 * KIB, avg_size=128 * KIB, max_size=2048 * KIB),
    "256K/768K/8M (files)": ChunkerParams(),
}
STEPS = ("first", "unchanged", "1% clustered", "1% scattered", "1% random in place")
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

    def _update(self, sql: str, mysql_sql: str | None = None) -> None:
        """Run one UPDATE on this database, whatever its engine (MariaDB may need its own
        spelling of the statement)."""
        if self.engine == "sqlite":
            conn = sqlite3.connect(self.spec.path or "")
            conn.execute(sql)
            conn.commit()
            conn.close()
        elif self.engine == "postgresql":
            pg_sql(sql, self.name)
        else:
            my_sql(mysql_sql or sql, self.name)

    def change(self, where: str) -> None:
        sql = f"UPDATE t SET body = body || ' edited', k = k + 1 WHERE {where};"
        self._update(sql, sql.replace("body || ' edited'", "CONCAT(body, ' edited')"))

    def change_in_place(self, where: str) -> None:
        """Rewrite each chosen row's body with a value of the same length (upper case)."""
        flip = "CASE WHEN body = lower(body) THEN upper(body) ELSE lower(body) END"
        self._update(f"UPDATE t SET body = {flip} WHERE {where};")

    def changed_rows(self, where: str) -> bytes:
        """The rows ``where`` selects, as text lines (id, k, body): the floor of what a
        night that changed them must store is these, compressed."""
        sql = f"SELECT id, k, body FROM t WHERE {where} ORDER BY id"
        if self.engine == "sqlite":
            conn = sqlite3.connect(self.spec.path or "")
            rows = conn.execute(sql).fetchall()
            conn.close()
            return "".join(f"{i}\t{k}\t{body}\n" for i, k, body in rows).encode()
        if self.engine == "postgresql":
            argv = ["psql", "-X", "-q", "-h", "127.0.0.1", "-U", "postgres", "-d", self.name,
                    "-c", f"COPY ({sql}) TO STDOUT"]  # fmt: skip
        else:
            argv = ["mariadb", "-h", "127.0.0.1", "-u", "root", "-N", "-B",
                    f"--database={self.name}", "-e", sql]  # fmt: skip
        return subprocess.run(argv, capture_output=True, check=True).stdout

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


MODES = {
    "no deltas (format 2)": 2,
    "deltas (format 3)": 3,
    "+ tree deltas (format 4)": 4,
    "+ aligned deltas (format 6)": 6,
}


def random_rows(seed: int) -> str:
    """About 1% of the ids, spread at random (a hash of id and seed), as SQL."""
    return f"((id * 2654435761 + {seed * 40503}) % 1000003) % 100 = 0"


# One master key for every repository of a run: the key seeds the chunker, so formats
# compared side by side cut the same dump into the same chunks (with a key each, a night's
# delta varied by 30% from repository to repository: bench/DUMPS.md "Aligned deltas").
SHARED_KEY = MasterKey.generate()


class Run:
    """One repository (a chunker and a format version) receiving every dump in order."""

    def __init__(self, params: ChunkerParams, version: int, work: Path) -> None:
        repo_dir = tempfile.mkdtemp(dir=work, prefix="repo-")
        self.repo = Repository.init(LocalBackend(repo_dir), b"bench", kdf=WEAK_KDF,
                                    config=RepoConfig(dump_chunker=params, version=version),
                                    key=SHARED_KEY)  # fmt: skip
        self.dir = repo_dir
        self.empty = work / "empty-source"
        self.empty.mkdir(exist_ok=True)
        self.snaps: list[Snapshot] = []

    def backup(self, dump: FileDump) -> tuple[int, float]:
        """Back the dump up; return (bytes stored, CPU seconds of this process)."""
        spec = StreamSpec("bench", "bench.dump", dump.info.engine, dump.open)
        opts = BackupOptions(paths=(str(self.empty),), app="bench", streams=(spec,))
        cpu = _cpu()
        snap = run_backup(self.repo, opts).snapshot
        cpu = _cpu() - cpu
        assert snap is not None
        self.snaps.append(snap)
        return snap.summary.bytes_stored, cpu

    def restore_times(self, snap: Snapshot, reps: int = 3) -> tuple[float, float]:
        """(CPU seconds, wall seconds) to read the snapshot's dump back (ChunkReader, as db
        restore and dump do), medians of ``reps`` reads (the
        repository's files in the page cache)."""
        node = self.repo.find_node(snap.root, "/.databases/bench.dump")
        assert node is not None
        cpus, walls = [], []
        for _ in range(reps):
            cpu, wall = _cpu(), time.perf_counter()
            with ChunkReader(self.repo, node.content, size=node.size,
                             content_hash=node.content_hash) as reader:  # fmt: skip
                while reader.read(1 << 20):
                    pass
            cpus.append(_cpu() - cpu)
            walls.append(time.perf_counter() - wall)
        return statistics.median(cpus), statistics.median(walls)

    def size(self) -> int:
        return sum(
            os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(self.dir) for f in fs
        )


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="approximate dump size in MB")
    parser.add_argument("--engines", default="sqlite,postgresql,mysql")
    parser.add_argument("--nights", type=int, default=0,
                        help="then this many nights of 1%% random in-place changes")  # fmt: skip
    parser.add_argument("--max-depth", type=int, default=delta.MAX_DEPTH,
                        help="longest delta chain (repo/delta.py MAX_DEPTH)")  # fmt: skip
    parser.add_argument(
        "--all-chunkers", action="store_true", help="every chunker, not only the current one"
    )
    parser.add_argument("--formats", default=",".join(str(v) for v in MODES.values()),
                        help="repository format versions to compare (comma-separated)")  # fmt: skip
    parser.add_argument("--chunkers", default="",
                        help="these chunkers (comma-separated, as the table names them)")  # fmt: skip
    args = parser.parse_args()
    delta.MAX_DEPTH = args.max_depth
    rows = args.mb * 1_000_000 // ROW_BYTES
    chunkers = (
        CHUNKERS
        if args.all_chunkers
        else {
            k: v
            for k, v in CHUNKERS.items()
            if any(k.startswith(name) for name in args.chunkers.split(",") if name)
        }
        if args.chunkers
        else {k: v for k, v in CHUNKERS.items() if "current" in k}
    )
    with tempfile.TemporaryDirectory(prefix="casb-dump-dedup-") as tmp:
        work = Path(tmp)
        os.environ["CASBACKUP_CACHE_DIR"] = str(work / "cache")
        os.environ.setdefault("CASBACKUP_STATE_DIR", str(work / "state"))
        print(f"{'engine':<11} {'chunker / format':<44} {'dump MB':>8} "
              + " ".join(f"{s:>19}" for s in STEPS))  # fmt: skip
        for engine in args.engines.split(","):
            subject = Subject(engine, rows, work)
            t0 = time.monotonic()
            subject.create()
            runs = {(label, mode): Run(params, version, work)
                    for label, params in chunkers.items() for mode, version in MODES.items()
                    if str(version) in args.formats.split(",")}  # fmt: skip
            cells: dict[tuple[str, str], list[tuple[int, float]]] = {key: [] for key in runs}
            size = 0.0
            try:
                for i, step in enumerate(STEPS):
                    if step == "1% clustered":  # the newest 1% of rows, as an app edits recent data
                        subject.change(f"id > {rows - rows // 100}")
                    elif step == "1% scattered":
                        subject.change("id % 100 = 37")
                    elif step == "1% random in place":
                        subject.change_in_place(random_rows(0))
                    path = work / f"{engine}-{i}.dump"
                    dump = FileDump(path, subject.dump_to(path))
                    size = size or path.stat().st_size / 1e6
                    for key, run in runs.items():
                        cells[key].append(run.backup(dump))
                    path.unlink()
                print(f"# {engine}: {rows} rows, dumps and backups in {time.monotonic() - t0:.0f}s",
                      file=sys.stderr)  # fmt: skip
                for (label, mode), row in cells.items():
                    text = " ".join(f"{a / 1e6:>8.3f} ({c:>6.2f}s)" for a, c in row)
                    print(f"{engine:<11} {label + ' ' + mode:<44} {size:>8.1f} {text}", flush=True)
                for (_label, mode), row in cells.items():  # the <= 10 kB bar, to the byte
                    print(f"# {engine} {mode}: unchanged night stored {row[1][0]:,} bytes",
                          file=sys.stderr)  # fmt: skip
                floor = 0
                for night in range(1, args.nights + 1):
                    subject.change_in_place(random_rows(night))
                    floor += len(zstandard.ZstdCompressor(level=3).compress(
                        subject.changed_rows(random_rows(night))))  # fmt: skip
                    path = work / f"{engine}-night.dump"
                    dump = FileDump(path, subject.dump_to(path))
                    stored = [run.backup(dump)[0] for run in runs.values()]
                    path.unlink()
                    print(f"# night {night}: stored " + ", ".join(f"{b / 1e6:.3f} MB" for b in stored),
                          file=sys.stderr)  # fmt: skip
                if args.nights:
                    stored_first = min(cells[key][0][0] for key in cells)
                    print(f"{engine:<11} floor: the rows changed in the {args.nights} nights, "
                          f"each night's compressed alone (zstd 3): {floor / 1e6:.1f} MB; with "
                          f"the first night's {stored_first / 1e6:.1f} MB, a repository of at least "
                          f"{(stored_first + floor) / stored_first:.2f}x the first night's", flush=True)  # fmt: skip
                    for (label, mode), run in runs.items():
                        first, last = (
                            run.restore_times(run.snaps[0]),
                            run.restore_times(run.snaps[-1]),
                        )
                        print(f"{engine:<11} {label + ' ' + mode:<44} after {args.nights} more nights: "
                              f"repository {run.size() / 1e6:.1f} MB = "
                              f"{run.size() / cells[(label, mode)][0][0]:.2f}x the first night's "
                              f"{cells[(label, mode)][0][0] / 1e6:.1f} MB stored; reading the first "
                              f"night's dump {first[0]:.2f}s CPU {first[1]:.2f}s wall, the last "
                              f"night's {last[0]:.2f}s CPU {last[1]:.2f}s wall ({last[1] / first[1]:.2f}x)",
                              flush=True)  # fmt: skip
            finally:
                subject.drop()
                for run in runs.values():
                    run.repo.close()
        print(
            "cells: MB stored (after zstd + encryption) by each backup, in order, and the "
            "backup's CPU time (user+sys of this process)"
        )


if __name__ == "__main__":
    main()
