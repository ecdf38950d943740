"""A SQLite database file backed up night after night, 1% of its rows rewritten in place.

Issue 16's first bar: a SQLite database of about 100 MB with 1% of its rows updated in
place at random; the second backup adds <= 3 MB (casbackup without deltas stored 48.9 MB,
restic 48.1 MB). Here the database *file* is backed up (as a folder of files, no dump),
by three tools in turn after each change: casbackup as it is by default, casbackup with
``--delta-files 16M`` (archiver/delta_files.py), and restic when it is installed. Each
night rewrites 1% of the rows at random with values of the same length (SQLite's pages
change where they are), the same rows for every tool.

Printed per night and tool: bytes the repository grew by (apparent size of its folder),
the backup's wall and CPU time (user+sys of the whole process tree, ``/usr/bin/time``).
At the end: each repository's size against the first night's, and the time to restore
the first and the last night's file (median wall of 3, warm cache).

    .venv/bin/python -m bench.delta_files [--mb 100] [--nights 10] [--tools casbackup,delta,restic]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench.dump_dedup import ROW_BYTES, Subject, random_rows
from bench.measure import Command, Measurement, dir_size, run_plain, run_timed
from bench.tools import Casbackup, Repo, Restic, Tool

DELTA_OPTION = ["--delta-files", "16M"]


class Run:
    """One tool's repository receiving the database file each night."""

    def __init__(self, label: str, tool: Tool, extra: list[str], work: Path) -> None:
        self.label, self.tool, self.extra = label, tool, extra
        self.repo = Repo(label, work / label)
        self.repo.home.mkdir(parents=True)
        self.work = work
        proc = run_plain(tool.init(self.repo))
        if proc.returncode != 0:
            raise SystemExit(f"{label}: init failed: {proc.stderr.strip()}")
        self.sizes: list[int] = []
        self.times: list[Measurement] = []

    def backup(self, src: Path) -> tuple[int, Measurement]:
        cmd = self.tool.backup(self.repo, src)
        if self.extra:
            cmd = Command([*cmd.argv, *self.extra], cmd.env, cmd.cwd)
        n = len(self.times)
        m = run_timed(cmd, self.work / "logs" / f"{self.label}-{n}", 3600, cold=False)
        if not m.ok:
            raise SystemExit(f"{self.label}: backup {n} failed: {m.error}")
        self.repo.backups += 1
        before = self.sizes[-1] if self.sizes else 0
        self.sizes.append(dir_size(self.repo.path)[0])
        self.times.append(m)
        return self.sizes[-1] - before, m

    def snapshot_ids(self) -> list[str]:
        proc = run_plain(self.tool.snapshots(self.repo))
        return [s.get("id") or s.get("snapshot_id") for s in json.loads(proc.stdout)]

    def restore_wall(self, snapshot: str, reps: int = 3) -> float:
        """Median wall seconds of ``reps`` restores of ``snapshot`` into an empty folder
        (warm cache: what is compared is the work of resolving the chunks, not the disk)."""
        walls = []
        for _ in range(reps):
            target = self.work / f"restore-{self.label}"
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            cmd = self.tool.restore(self.repo, target)
            argv = [snapshot if a == "latest" else a for a in cmd.argv]
            log = self.work / "logs" / "restore"
            m = run_timed(Command(argv, cmd.env, cmd.cwd), log, 3600, False)
            if not m.ok:
                raise SystemExit(f"{self.label}: restore failed: {m.error}")
            shutil.rmtree(target)
            walls.append(m.wall_s)
        return statistics.median(walls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="approximate database size in MB")
    parser.add_argument("--nights", type=int, default=10, help="nights of 1%% changes")
    parser.add_argument("--tools", default="casbackup,delta,restic")
    parser.add_argument("--workdir", default=None, help="where repositories go (default: /tmp)")
    args = parser.parse_args()
    rows = args.mb * 1_000_000 // ROW_BYTES
    with tempfile.TemporaryDirectory(prefix="casb-delta-files-", dir=args.workdir) as tmp:
        work = Path(tmp)
        src = work / "src"
        src.mkdir()
        subject = Subject("sqlite", rows, src)
        subject.create()
        mb = Path(subject.spec.path or "").stat().st_size / 1e6
        tools: dict[str, tuple[Tool, list[str]]] = {
            "casbackup": (Casbackup(), []),
            "delta": (Casbackup(), DELTA_OPTION),
            "restic": (Restic(), []),
        }
        runs = []
        for name in args.tools.split(","):
            tool, extra = tools[name]
            if name == "restic" and shutil.which("restic") is None:
                print("# restic is not installed: left out", file=sys.stderr)
                continue
            runs.append(Run(name, tool, extra, work))
        print(f"# SQLite file {mb:.1f} MB ({rows} rows); {args.nights} nights of 1% in place")
        print(f"{'night':>5} " + " ".join(f"{r.label:>34}" for r in runs))
        for night in range(args.nights + 1):
            if night:
                subject.change_in_place(random_rows(night))
            cells = []
            for run in runs:
                added, m = run.backup(src)
                cells.append(
                    f"{added / 1e6:9.3f} MB {m.wall_s:6.2f}s {m.user_s + m.sys_s:6.2f}s CPU"
                )
            print(f"{night:>5} " + " ".join(f"{c:>34}" for c in cells), flush=True)
        for run in runs:
            ids = run.snapshot_ids()
            first, last = run.restore_wall(ids[0]), run.restore_wall(ids[-1])
            growth = run.sizes[-1] / run.sizes[0]
            print(f"{run.label:>9}: repository {run.sizes[-1] / 1e6:.1f} MB = {growth:.2f}x the "
                  f"first night's; restore night 0 {first:.2f}s, night {args.nights} {last:.2f}s "
                  f"({last / first:.2f}x)", flush=True)  # fmt: skip
        print(
            "cells: bytes the repository grew by, backup wall time, CPU (user+sys, all processes)"
        )


if __name__ == "__main__":
    main()
