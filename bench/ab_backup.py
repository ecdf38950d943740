"""A/B CPU cost of casbackup's backups: two source trees of casbackup, back to back.

On a machine shared with other work, wall time says little; the CPU time (user+sys of the
backup and every reader process it reaped) and the peak RSS of the biggest process do. Each
repetition alternates A and B, so drift in the machine's speed hits both alike.

    python -m bench.ab_backup CORPUS --a /path/to/old/tree --b . [--reps 3] [--workers 2] [--cold]

Per side and repetition: a first backup into a fresh repository, then an unchanged
re-backup (page cache warm: this measures CPU, not the disk; ``--cold``: the page cache is
dropped before each backup, as bench/run.py does, so the wall time includes the disk).
Prints one line per step and the medians with their ranges.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.measure import drop_caches

PASSWORD = "bench-passphrase-not-secret"


def run(tree: Path, workdir: Path, args: list[str]) -> tuple[float, float, float]:
    """(wall s, CPU s user+sys over the process and its reaped children, peak RSS MiB)."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(tree),
        CASBACKUP_PASSWORD=PASSWORD,
        XDG_CACHE_HOME=str(workdir / "cache"),
        XDG_CONFIG_HOME=str(workdir / "config"),
    )
    argv = [sys.executable, "-m", "casbackup.cli.main", "-r", str(workdir / "repo"), *args]
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - started
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"{' '.join(args[:2])} failed in {tree} (exit {code}): {err.strip()}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def one_side(
    tree: Path, corpus: Path, workers: int, cold: bool = False
) -> dict[str, tuple[float, float, float]]:
    with tempfile.TemporaryDirectory(prefix="cb-ab-") as tmp:
        work = Path(tmp)
        run(tree, work, ["init"])
        if cold and not drop_caches():
            raise SystemExit("--cold needs root (writing /proc/sys/vm/drop_caches)")
        first = run(
            tree, work, ["backup", "--type", "full", "--workers", str(workers), str(corpus)]
        )
        if cold:
            drop_caches()
        again = run(
            tree, work, ["backup", "--type", "incremental", "--workers", str(workers), str(corpus)]
        )
        size = sum(f.stat().st_size for f in (work / "repo").rglob("*") if f.is_file())
    print(f"    repository {size / 2**20:.1f} MiB", flush=True)
    return {"first": first, "unchanged": again}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--a", type=Path, required=True, help="source tree A (holds casbackup/)")
    ap.add_argument("--b", type=Path, required=True, help="source tree B")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each backup")
    args = ap.parse_args(argv)
    results: dict[str, dict[str, list[tuple[float, float, float]]]] = {"A": {}, "B": {}}
    for rep in range(args.reps):
        for side, tree in (
            (("A", args.a), ("B", args.b))
            if rep % 2 == 0
            else (
                ("B", args.b),
                ("A", args.a),
            )
        ):
            got = one_side(tree.resolve(), args.corpus.resolve(), args.workers, args.cold)
            for step, value in got.items():
                results[side].setdefault(step, []).append(value)
                wall, cpu, rss = value
                print(f"rep {rep} {side} {step:9} wall {wall:6.2f} s  cpu {cpu:6.2f} s  "
                      f"max rss {rss:5.0f} MiB", flush=True)  # fmt: skip
    print("medians:")
    for step in ("first", "unchanged"):
        line = [f"  {step:9}"]
        for side in ("A", "B"):
            vals = results[side][step]
            walls, cpus = [v[0] for v in vals], [v[1] for v in vals]
            line.append(
                f"{side}: wall {statistics.median(walls):6.2f} ({min(walls):.2f}-{max(walls):.2f})"
                f"  cpu {statistics.median(cpus):6.2f} ({min(cpus):.2f}-{max(cpus):.2f})"
                f"  rss {statistics.median(v[2] for v in vals):5.0f}"
            )
        print("  ".join(line))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
