"""Cold re-backups (bench/run.py scenarios 3 and 4), A/B between two code trees.

    python -m bench.rebackup_ab --a /path/to/old/tree --b . [--reps 5] [--nice -20]

Each run starts from the same repository: a first backup of the corpus made once by tree
B (hard-linked per run: repository files are never changed in place; the index cache and
the local state are copied). Scenario 3 backs up the unchanged corpus again; scenario 4
backs it up after bench/corpus.py's 1 % mutation (made after every scenario 3 run, and
undone at the end). The page cache is dropped before every timed run (unless ``--warm``),
A and B alternate, and each run is measured as bench/run.py measures it (wall, user+sys
CPU of the process tree, peak PSS summed over it). ``--nice`` runs the timed commands at
that priority, so a busy machine's other work disturbs them less (root only); it says so
in the output.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from bench import corpus
from bench.measure import Command, Measurement, drop_caches, run_timed

PASSWORD = "bench-passphrase-not-secret"
SCRIPT = Path(sys.executable).parent / "casbackup"


def env_for(tree: Path, home: Path) -> dict[str, str]:
    return {
        "PYTHONPATH": str(tree),
        "CASBACKUP_PASSWORD": PASSWORD,
        "XDG_CACHE_HOME": str(home / "cache"),
        "XDG_CONFIG_HOME": str(home / "config"),
        "XDG_STATE_HOME": str(home / "state"),
    }


def backup_argv(repo: Path, src: Path, kind: str) -> list[str]:
    return [str(SCRIPT), "-r", str(repo), "backup", "--type", kind, str(src)]


def prepare(work: Path, src: Path, tree: Path) -> Path:
    """The pristine repository (and its home) after one full backup of ``src``."""
    base = work / "pristine"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    env = {**os.environ, **env_for(tree, base / "home")}
    for argv in (
        [str(SCRIPT), "-r", str(base / "repo"), "init"],
        backup_argv(base / "repo", src, "full"),
    ):
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return base


def fresh_copy(base: Path, run: Path) -> None:
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    subprocess.run(["cp", "-al", str(base / "repo"), str(run / "repo")], check=True)
    shutil.copytree(base / "home", run / "home", symlinks=True)


def one_run(
    tree: Path, base: Path, work: Path, src: Path, nice: int | None, cold: bool
) -> Measurement:
    run = work / "run"
    fresh_copy(base, run)
    if not cold:  # the repository copy, the corpus and the program read once, untimed
        subprocess.run(["cat", *map(str, (run / "repo").rglob("*"))], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)  # fmt: skip
    argv = backup_argv(run / "repo", src, "incremental")
    if nice is not None:
        argv = ["nice", "-n", str(nice), *argv]
    cmd = Command(argv, env_for(tree, run / "home"))
    m = run_timed(cmd, work / "logs" / "last", timeout=600, cold=cold)
    if not m.ok:
        raise SystemExit(f"backup failed in {tree}: {m.error}")
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--a", type=Path, required=True, help="source tree A (holds casbackup/)")
    ap.add_argument("--b", type=Path, required=True, help="source tree B")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--scenarios", default="3,4")
    ap.add_argument("--work", type=Path, default=Path("/tmp/rebackup-ab"))
    ap.add_argument("--corpus", type=Path, default=None, help="default: built under --work")
    ap.add_argument("--nice", type=int, default=None, help="niceness of the timed commands")
    ap.add_argument("--warm", action="store_true", help="keep the page cache (default: drop it)")
    args = ap.parse_args(argv)
    if not drop_caches():
        raise SystemExit("the page cache cannot be dropped (root only): cold runs impossible")
    work = args.work.resolve()
    spec = corpus.DEFAULT_SPEC
    src = (args.corpus or work / "corpus").resolve()
    if not src.exists():
        corpus.build_corpus(src, spec)
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    base = prepare(work, src, trees["B"])
    scenarios = [s for s in args.scenarios.split(",") if s in ("3", "4")]
    results: dict[tuple[str, str], list[Measurement]] = {}
    print(f"corpus {src}, nice {args.nice}, {'warm' if args.warm else 'cold'}, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    undo, mutation = work / "undo", None
    try:
        for scenario in scenarios:
            if scenario == "4":
                shutil.rmtree(undo, ignore_errors=True)
                mutation = corpus.mutate_corpus(src, spec, undo)
            for rep in range(args.reps):
                for side in ("A", "B") if rep % 2 == 0 else ("B", "A"):
                    m = one_run(trees[side], base, work, src, args.nice, not args.warm)
                    results.setdefault((scenario, side), []).append(m)
                    print(f"scenario {scenario} rep {rep} {side}: wall {m.wall_s:5.2f} s  "
                          f"cpu {m.cpu_s:5.2f} s  pss {m.tree_pss_kib / 1024:4.0f} MiB  "
                          f"load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    finally:
        if mutation is not None:
            corpus.revert_mutation(src, mutation, undo)
    print("medians (min-max):")
    for scenario in scenarios:
        for side in ("A", "B"):
            ms = results[(scenario, side)]
            walls, cpus = [m.wall_s for m in ms], [m.cpu_s for m in ms]
            pss = [m.tree_pss_kib / 1024 for m in ms]
            print(f"  scenario {scenario} {side}: wall {statistics.median(walls):5.2f} "
                  f"({min(walls):.2f}-{max(walls):.2f}) s  cpu {statistics.median(cpus):5.2f} "
                  f"({min(cpus):.2f}-{max(cpus):.2f}) s  pss {statistics.median(pss):4.0f} MiB")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
