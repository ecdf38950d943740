"""Cold unchanged re-backups of two applications through `backup --all`, A/B/... between
code trees (the source warmer's effect on --all: bench/RESULTS.md "Issue 17: re-backups").

    python -m bench.rebackup_all_ab --tree old=/path/to/old --tree new=. [--reps 4] [--nice -20]
        [--app web|sys]  (that application alone, with --app, instead of --all)

The corpus (bench/corpus.py, 1 GiB; built under --work if not given) is split into two
applications by its top-level folders: "web" (srv, var, opt) and "sys" (etc, home, usr).
Every run starts from the same repository (a first `backup --all --type full` by the last
tree given, hard-linked per run as bench/rebackup_ab.py does), the page cache is dropped
first, and the trees take turns (the order rotates every repetition). Measured as
bench/run.py measures: wall, user+sys CPU of the process tree, peak PSS.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
from pathlib import Path

from bench import corpus
from bench.measure import Command, Measurement, drop_caches, run_timed
from bench.rebackup_ab import SCRIPT, env_for, fresh_copy

APPS = {"web": ("srv", "var", "opt"), "sys": ("etc", "home", "usr")}


def write_config(path: Path, src: Path) -> Path:
    lines = []
    for name, folders in APPS.items():
        sources = ", ".join(f'"{src / f}"' for f in folders)
        lines += ["[[applications]]", f'name = "{name}"', f"sources = [{sources}]", ""]
    path.write_text("\n".join(lines))
    return path


def argv_for(repo: Path, cfg: Path, kind: str, app: str | None = None) -> list[str]:
    which = ["--app", app] if app else ["--all"]
    return [str(SCRIPT), "-r", str(repo), "--config", str(cfg), "-q", "backup", *which,
            "--type", kind]  # fmt: skip


def prepare(work: Path, cfg: Path, tree: Path) -> Path:
    base = work / "pristine"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(parents=True)
    env = {**os.environ, **env_for(tree, base / "home")}
    for argv in ([str(SCRIPT), "-r", str(base / "repo"), "init"],
                 argv_for(base / "repo", cfg, "full")):  # fmt: skip
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    return base


def one_run(tree: Path, base: Path, work: Path, cfg: Path, nice: int | None,
            app: str | None = None) -> Measurement:  # fmt: skip
    run = work / "run"
    fresh_copy(base, run)
    argv = argv_for(run / "repo", cfg, "incremental", app)
    if nice is not None:
        argv = ["nice", "-n", str(nice), *argv]
    m = run_timed(Command(argv, env_for(tree, run / "home")), work / "logs" / "last", 600, True)
    if not m.ok:
        raise SystemExit(f"backup failed in {tree}: {m.error}")
    return m


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tree", action="append", required=True, help="NAME=PATH (holds casbackup/)")
    ap.add_argument("--reps", type=int, default=4)
    ap.add_argument("--work", type=Path, default=Path("/tmp/rebackup-all-ab"))
    ap.add_argument("--corpus", type=Path, default=None, help="default: built under --work")
    ap.add_argument("--nice", type=int, default=None, help="niceness of the timed commands")
    ap.add_argument("--app", choices=sorted(APPS), help="back up this application alone")
    args = ap.parse_args(argv)
    if not drop_caches():
        raise SystemExit("the page cache cannot be dropped (root only): cold runs impossible")
    trees = {n: Path(p).resolve() for n, _, p in (t.partition("=") for t in args.tree)}
    work = args.work.resolve()
    src = (args.corpus or work / "corpus").resolve()
    if not src.exists():
        corpus.build_corpus(src, corpus.DEFAULT_SPEC)
    work.mkdir(parents=True, exist_ok=True)
    cfg = write_config(work / "casbackup.toml", src)
    base = prepare(work, cfg, list(trees.values())[-1])
    print(f"corpus {src}, nice {args.nice}, load average {os.getloadavg()[0]:.1f}", flush=True)
    names = list(trees)
    results: dict[str, list[Measurement]] = {n: [] for n in names}
    for rep in range(args.reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            m = one_run(trees[name], base, work, cfg, args.nice, args.app)
            results[name].append(m)
            print(f"rep {rep} {name:>8}: wall {m.wall_s:5.2f} s  cpu {m.cpu_s:5.2f} s  "
                  f"pss {m.tree_pss_kib / 1024:4.0f} MiB  load {os.getloadavg()[0]:.1f}",
                  flush=True)  # fmt: skip
    print("medians (min-max):")
    for name in names:
        walls = [m.wall_s for m in results[name]]
        cpus = [m.cpu_s for m in results[name]]
        print(f"  {name:>8}: wall {statistics.median(walls):5.2f} ({min(walls):.2f}-{max(walls):.2f}) s"
              f"  cpu {statistics.median(cpus):5.2f} ({min(cpus):.2f}-{max(cpus):.2f}) s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
