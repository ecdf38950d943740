"""A SQLite application's dump, night after night, through the real CLI (issue 16's time bars).

bench/dump_dedup.py measures stored bytes and CPU inside one process; this measures what a
user waits for. An application with one SQLite database (about ``--mb`` MB, 1% of its rows
rewritten in place at random each night, values of the same length) is backed up with
``casbackup backup --app`` into two repositories after each change: format 2 (no delta
blobs: what casbackup stored before issue 16) and the current format. Then:

- backup of the changed nights: wall and CPU (user+sys of the process tree) of each, the
  two formats interleaved (their order alternates every night);
- ``casbackup db restore`` of the first and of the last night's dump from the current
  format's repository (the last one is deepest in its delta chains), each ``--reps``
  times, interleaved, medians: issue 16's "restoring the 30th night's dump takes <= 1.5x
  the time of restoring the first";
- ``casbackup copy`` of the current format's repository into a new one: its size against
  the source's (copy keeps deltas, maintenance/copy.py).

    .venv/bin/python -m bench.dump_nights_cli --mb 100 --nights 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import dump_dedup as dd
from bench.measure import dir_size as _dir_size
from casbackup.repo.config import FORMAT_VERSION, RepoConfig
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalBackend

CLI = [sys.executable, "-c", "import sys; from casbackup.cli.main import main; sys.exit(main())"]
PASSWORD = "bench"


def dir_size(path: Path) -> int:
    """Apparent bytes of every file under ``path``."""
    return _dir_size(path)[0]


def timed(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall s, CPU s of the process and its children) of one CLI run; raises on failure."""
    start = time.perf_counter()
    proc = subprocess.Popen(CLI + args, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"casbackup {' '.join(args)} failed ({status})")
    return time.perf_counter() - start, usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="approximate database size in MB")
    parser.add_argument("--nights", type=int, default=30)
    parser.add_argument("--reps", type=int, default=5, help="db restore repetitions")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="casb-dump-nights-") as tmp:
        work = Path(tmp)
        (work / "src").mkdir()
        subject = dd.Subject("sqlite", args.mb * 1_000_000 // dd.ROW_BYTES, work)
        subject.spec = dd.DatabaseSpec("db", "sqlite", path=str(work / "src" / "app.db"))
        subject.create()
        config = work / "casbackup.toml"
        config.write_text(
            f'[[applications]]\nname = "app"\nsources = ["{work}/src"]\n'
            'excludes = ["app.db", "app.db-journal"]\n'
            f'[[applications.databases]]\nname = "db"\nengine = "sqlite"\n'
            f'path = "{work}/src/app.db"\n'
        )
        envs = {}
        for version in (2, FORMAT_VERSION):
            repo = work / f"repo{version}"
            Repository.init(
                LocalBackend(str(repo)), PASSWORD.encode(), config=RepoConfig(version=version)
            ).close()
            envs[version] = dict(os.environ, CASBACKUP_REPO=str(repo), CASBACKUP_PASSWORD=PASSWORD,
                                 CASBACKUP_CONFIG=str(config),
                                 CASBACKUP_CACHE_DIR=str(work / f"cache{version}"),
                                 CASBACKUP_STATE_DIR=str(work / f"state{version}"))  # fmt: skip
        times: dict[int, list[tuple[float, float]]] = {v: [] for v in envs}
        for night in range(args.nights + 1):
            if night:
                subject.change_in_place(dd.random_rows(night))
            for version in sorted(envs, reverse=bool(night % 2)):
                wall, cpu = timed(["-q", "backup", "--app", "app"], envs[version])
                if night:
                    times[version].append((wall, cpu))
                print(f"night {night:>2} format {version}: {wall:.2f} s wall, {cpu:.2f} s CPU",
                      file=sys.stderr)  # fmt: skip
        for version, rows in times.items():
            walls, cpus = [w for w, _ in rows], [c for _, c in rows]
            print(f"format {version}: changed nights' backups {sum(walls):.1f} s wall (median "
                  f"{statistics.median(walls):.2f}), {sum(cpus):.1f} s CPU (median "
                  f"{statistics.median(cpus):.2f}); repository {dir_size(work / f'repo{version}') / 1e6:.1f} MB")  # fmt: skip
        old, new = times[2], times[FORMAT_VERSION]
        print(f"format {FORMAT_VERSION} / format 2, changed nights: wall "
              f"{sum(w for w, _ in new) / sum(w for w, _ in old):.2f}x, CPU "
              f"{sum(c for _, c in new) / sum(c for _, c in old):.2f}x")  # fmt: skip
        env = envs[FORMAT_VERSION]
        listing = subprocess.run(CLI + ["snapshots", "--json"], env=env, capture_output=True,
                                 text=True, check=True).stdout  # fmt: skip
        ids = [s["id"] for s in json.loads(listing)]
        restores: dict[str, list[float]] = {"first": [], "last": []}
        for _ in range(args.reps):
            for label, snap in (("first", ids[0]), ("last", ids[-1])):
                target = work / f"restored-{label}.db"
                wall, _ = timed(["-q", "db", "restore", snap, "--app", "app", "--database", "db",
                                 "--into", str(target), "--overwrite"], env)  # fmt: skip
                restores[label].append(wall)
        first, last = (statistics.median(restores[k]) for k in ("first", "last"))
        print(f"db restore, medians of {args.reps}: night 0 {first:.2f} s, night {args.nights} "
              f"{last:.2f} s = {last / first:.2f}x")  # fmt: skip
        copy_env = dict(env, CASBACKUP_REPO=str(work / "copy"))
        timed(["-q", "init"], copy_env)
        (work / "pw").write_text(PASSWORD)
        wall, cpu = timed(["-q", "copy", "--from-repo", str(work / f"repo{FORMAT_VERSION}"),
                           "--from-password-file", str(work / "pw")], copy_env)  # fmt: skip
        print(f"copy into a new repository: {dir_size(work / 'copy') / 1e6:.1f} MB (source "
              f"{dir_size(work / f'repo{FORMAT_VERSION}') / 1e6:.1f} MB), {wall:.1f} s wall, "
              f"{cpu:.1f} s CPU")  # fmt: skip
        print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
