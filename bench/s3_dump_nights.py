"""Nightly database backups into an object store: requests, bytes downloaded, time.

A SQLite table of --rows rows (~80 bytes each) is an application's database; each night
rewrites --share of its rows' status in place, and the CLI backs the application up into
a repository on a local SeaweedFS (bench/s3_bench.start_weed) through a counting
pass-through proxy (tests/store/conftest.FaultProxy). For each night: requests, MB down
(response bodies), MB up, wall and CPU seconds of the backup. Run with copies of the
stream on (the default) and off (``CASBACKUP_BASE_COPY_MIB=0``), each in a fresh bucket,
same database nights. ``--tree`` puts a code tree first on the CLI's PYTHONPATH (A/B).

    .venv/bin/python bench/s3_dump_nights.py [--rows 600000] [--nights 5] [--tree DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _change(db: Path, share: float, seed: int) -> None:
    conn = sqlite3.connect(db)
    n = conn.execute("SELECT max(id) FROM t").fetchone()[0]
    rng = random.Random(seed)
    ids = rng.sample(range(1, n + 1), int(n * share))
    conn.executemany("UPDATE t SET status = ? WHERE id = ?",
                     ((rng.choice("ABCDEFGH"), i) for i in ids))  # fmt: skip
    conn.commit()
    conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=600_000)
    ap.add_argument("--nights", type=int, default=5)
    ap.add_argument("--share", type=float, default=0.005)
    ap.add_argument("--tree", default=str(ROOT))
    opts = ap.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret",
                      AWS_DEFAULT_REGION="us-east-1", CASBACKUP_PASSWORD="bench")  # fmt: skip
    import boto3

    from bench.s3_bench import start_weed
    from tests.store.conftest import FaultProxy

    with tempfile.TemporaryDirectory(prefix="s3nights-") as tmp:
        work = Path(tmp)
        proc, endpoint = start_weed(work / "weed")
        proxy = FaultProxy(endpoint, lambda n: None)
        try:
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            for mode in ("copies on", "copies off"):
                bucket = f"b{uuid.uuid4().hex[:12]}"
                client.create_bucket(Bucket=bucket)
                app = work / mode.replace(" ", "-")
                shutil.rmtree(app, ignore_errors=True)
                (app / "data").mkdir(parents=True)
                db = app / "data" / "shop.sqlite"
                conn = sqlite3.connect(db)
                conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, status TEXT, body TEXT)")
                conn.executemany("INSERT INTO t VALUES (?, 'A', ?)",
                                 ((i, f"{i:032x} order {i * 7:032x}") for i in range(1, opts.rows + 1)))  # fmt: skip
                conn.commit()
                conn.close()
                config = app / "casbackup.toml"
                config.write_text(
                    f'version = 1\n[repository]\nlocation = "s3:{proxy.endpoint}/{bucket}/r"\n'
                    f'password_env = "CASBACKUP_PASSWORD"\n[[applications]]\nname = "shop"\n'
                    f'sources = ["{app / "data"}"]\nexcludes = ["*.sqlite"]\n'
                    f'[[applications.databases]]\nname = "shop"\nengine = "sqlite"\n'
                    f'path = "{db}"\n'
                )
                env = dict(os.environ, PYTHONPATH=opts.tree,
                           CASBACKUP_CACHE_DIR=str(app / "cache"),
                           CASBACKUP_STATE_DIR=str(app / "state"))  # fmt: skip
                if mode == "copies off":
                    env["CASBACKUP_BASE_COPY_MIB"] = "0"
                cli = [sys.executable, "-m", "casbackup.cli.main", "--config", str(config)]
                subprocess.run([*cli, "init", "--insecure-test-kdf"], env=env, check=True,
                               capture_output=True)  # fmt: skip
                for night in range(opts.nights + 1):
                    if night:
                        _change(db, opts.share, night)
                    count, down, up = proxy.count, proxy.bytes_down, proxy.bytes_up
                    before = resource.getrusage(resource.RUSAGE_CHILDREN)
                    start = time.perf_counter()
                    res = subprocess.run([*cli, "backup", "--app", "shop"], env=env,
                                         capture_output=True)  # fmt: skip
                    wall = time.perf_counter() - start
                    after = resource.getrusage(resource.RUSAGE_CHILDREN)
                    if res.returncode:
                        raise SystemExit(f"backup failed: {res.stderr.decode()[-2000:]}")
                    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
                    print(f"{mode}, night {night}: {proxy.count - count} requests, "
                          f"{(proxy.bytes_down - down) / 1e6:.1f} MB down, "
                          f"{(proxy.bytes_up - up) / 1e6:.2f} MB up, {wall:.1f} s, "
                          f"CPU {cpu:.2f} s", flush=True)  # fmt: skip
        finally:
            proxy.close()
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
