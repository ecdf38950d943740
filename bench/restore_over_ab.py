"""Restore --overwrite onto a full copy already in the target (a resume, or a nightly
re-restore), A/B between code trees through the real CLI.

    python -m bench.restore_over_ab --repo REPO --snapshot ID[:PATH] [--reps 5]
                                    [--code /work/main --code .] [--target DIR]

The repository and its passphrase come from the caller (CASBACKUP_PASSWORD and the like
in the environment). The target is filled once, by the first tree, then every timed
restore replaces every file of it; the trees take turns (ABAB, then BABA), so a drift in
the machine's load falls on both. Per tree: wall and CPU (user+sys of the command and its
writers, from the children's rusage), medians and ranges, and the load average.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def _restore(code: str, repo: str, snapshot: str, target: str) -> tuple[float, float]:
    """(wall s, CPU s) of one ``restore --overwrite`` run from the tree ``code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "casbackup.cli.main", "--no-progress", "-q", "-r",
                    repo, "restore", snapshot, "-t", target, "--overwrite"], cwd=code,
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", required=True)
    parser.add_argument("--snapshot", required=True)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--code", action="append", default=[])
    parser.add_argument("--target")
    args = parser.parse_args()
    codes = [os.path.abspath(c) for c in (args.code or ["/work/main", "."])]
    target = args.target or tempfile.mkdtemp(prefix="restore-over-")
    _restore(codes[0], args.repo, args.snapshot, target)  # the copy every run replaces
    runs: dict[str, list[tuple[float, float]]] = {code: [] for code in codes}
    for rep in range(args.reps):
        for code in codes if rep % 2 == 0 else codes[::-1]:
            runs[code].append(_restore(code, args.repo, args.snapshot, target))
    for code, results in runs.items():
        walls, cpus = [w for w, _ in results], [c for _, c in results]
        print(f"{code}: wall {_summary(walls)}, CPU {_summary(cpus)}, n={len(results)}")
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
