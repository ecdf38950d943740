"""A/B of one changed night's backup CPU, on kept per-night states, across code trees.

issue 16's bar "backup time of a changed night <= 1.3x today's" is a ratio of two small CPU
times (~0.4 s against ~0.5 s for a 100 MB SQLite dump), so it needs like-for-like runs:
this script first builds, once, a SQLite table dumped to about --mb MB, the dumps of nights
0..N (night 1: 1% scattered and grown, later nights: 1% random in place, bench/dump_dedup.py's
subject) and, for each format given, the repository, cache (index cache and base copies) and
state after each night, with a fixed master key (so that states built by two code trees,
whose caches differ, hold the same chunks: build once per tree when the cache's layout
changed, else once). Then ``measure`` backs night k's dump up into a fresh copy of the
state after night k-1, --reps times in one child process per code tree (after one warm-up),
and prints each night's minimum CPU seconds (user+sys of the child, the backup call only)
and minimum wall seconds (the same call: what a nightly window sees).
Code trees are folders put first on the child's PYTHONPATH (a worktree of another commit),
so "before" and "after" run alternated on the same states and the same master key.

    .venv/bin/python bench/night_ab.py build --work /tmp/nights [--mb 100] [--nights 7]
        [--formats 2,6]
    .venv/bin/python bench/night_ab.py measure --work /tmp/nights --format 6
        --trees /work/old,/work/new [--works /tmp/nights-old,/tmp/nights-new] [--reps 3]
        [--nights 2-8] [--rounds 2] [--env CASBACKUP_BASE_COPY_MIB=0]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def build(work: Path, mb: int, nights: int, versions: list[int]) -> None:
    """Dumps of nights 0..nights+1 and each format's state after each night, under ``work``."""
    sys.path.insert(0, str(HERE))
    import dump_dedup
    from dump_dedup import ROW_BYTES, FileDump, Run, Subject, random_rows

    from casbackup.crypto.keys import MasterKey
    from casbackup.repo.config import DUMP_CHUNKER

    # A fixed key: states built by two code trees (whose caches differ) cut the same chunks.
    dump_dedup.SHARED_KEY = MasterKey(bytes(range(32)))

    work.mkdir(parents=True, exist_ok=True)
    subject = Subject("sqlite", mb * 1_000_000 // ROW_BYTES, work)
    subject.create()
    runs = {}
    for version in versions:
        (work / f"f{version}").mkdir(exist_ok=True)
        os.environ["CASBACKUP_CACHE_DIR"] = str(work / f"f{version}" / "cache")
        os.environ["CASBACKUP_STATE_DIR"] = str(work / f"f{version}" / "state")
        runs[version] = Run(DUMP_CHUNKER, version, work / f"f{version}")
    meta = {"dumps": [], "repos": {v: runs[v].dir for v in versions}}
    for night in range(nights + 2):
        if night == 1:
            subject.change("id % 100 = 37")
        elif night > 1:
            subject.change_in_place(random_rows(night))
        path = work / f"night{night}.dump"
        info = subject.dump_to(path)
        (work / f"night{night}.info").write_bytes(pickle.dumps(info))
        meta["dumps"].append({"path": str(path), "engine": info.engine})
        for version, run in runs.items():
            os.environ["CASBACKUP_CACHE_DIR"] = str(work / f"f{version}" / "cache")
            os.environ["CASBACKUP_STATE_DIR"] = str(work / f"f{version}" / "state")
            stored, cpu = run.backup(FileDump(path, info))
            run.repo.close()
            saved = work / f"f{version}" / f"after{night}"
            shutil.rmtree(saved, ignore_errors=True)
            saved.mkdir()
            for part in ("cache", "state"):
                if (work / f"f{version}" / part).exists():
                    shutil.copytree(work / f"f{version}" / part, saved / part, symlinks=True)
            shutil.copytree(run.dir, saved / "repo", symlinks=True)
            run.repo = run.repo.open(run.repo.backend, b"bench")
            print(f"night {night} format {version}: {stored / 1e6:.3f} MB {cpu:.2f} s", flush=True)
    (work / "meta.json").write_text(json.dumps(meta))


def child(work: Path, version: int, nights: list[int], reps: int) -> None:
    """In the child: for each night, min CPU and min wall seconds of backing its dump up
    onto the state before it."""
    sys.path.insert(0, str(HERE))
    from dump_dedup import FileDump

    from casbackup.archiver.backup import BackupOptions, StreamSpec, run_backup
    from casbackup.repo.repository import Repository
    from casbackup.store.local import LocalBackend

    meta = json.loads((work / "meta.json").read_text())
    empty = work / "empty-source"
    empty.mkdir(exist_ok=True)
    out = {}
    for night in nights:
        dump = meta["dumps"][night]
        info = pickle.loads((work / f"night{night}.info").read_bytes())  # our own file
        times = []
        for rep in range(reps + 1):
            with tempfile.TemporaryDirectory(dir=work, prefix="m-") as tmp:
                shutil.copytree(work / f"f{version}" / f"after{night - 1}", tmp, symlinks=True,
                                dirs_exist_ok=True)  # fmt: skip
                os.environ["CASBACKUP_CACHE_DIR"] = os.path.join(tmp, "cache")
                os.environ["CASBACKUP_STATE_DIR"] = os.path.join(tmp, "state")
                repo = Repository.open(LocalBackend(os.path.join(tmp, "repo")), b"bench")
                spec = StreamSpec("bench", "bench.dump", dump["engine"],
                                  FileDump(Path(dump["path"]), info).open)  # fmt: skip
                opts = BackupOptions(paths=(str(empty),), app="bench", streams=(spec,))
                cpu, wall = _cpu(), time.perf_counter()
                run_backup(repo, opts)
                cpu, wall = _cpu() - cpu, time.perf_counter() - wall
                repo.close()
                if rep:
                    times.append((cpu, wall))
        out[night] = [min(t[0] for t in times), min(t[1] for t in times)]
    print(json.dumps(out))


def measure(works: list[Path], version: int, trees: list[str], nights: list[int], reps: int,
            rounds: int, env: dict[str, str]) -> None:  # fmt: skip
    """Run the child once per tree per round, alternated (tree ``i`` on the states in
    ``works[i]``, or all on ``works[0]``); print per-night minima."""
    best: dict[str, dict[int, float]] = {t: {} for t in trees}
    best_wall: dict[str, dict[int, float]] = {t: {} for t in trees}
    for _ in range(rounds):
        for n, tree in enumerate(trees):
            work = works[n] if len(works) > 1 else works[0]
            cmd = [sys.executable, str(Path(__file__).resolve()), "_child", "--work", str(work),
                   "--format", str(version), "--nights", ",".join(map(str, nights)),
                   "--reps", str(reps)]  # fmt: skip
            child_env = dict(os.environ, PYTHONPATH=tree, **env)
            res = subprocess.run(cmd, env=child_env, capture_output=True, text=True, check=False)
            if res.returncode:
                sys.exit(f"child for {tree} failed:\n{res.stderr[-3000:]}")
            got = json.loads(res.stdout.strip().splitlines()[-1])
            for night, (cpu, wall) in got.items():
                n = int(night)
                best[tree][n] = min(best[tree].get(n, cpu), cpu)
                best_wall[tree][n] = min(best_wall[tree].get(n, wall), wall)
    for tree in trees:
        for what, table in (("cpu", best), ("wall", best_wall)):
            cells = " ".join(f"{table[tree][n]:.3f}" for n in nights)
            print(f"{tree} {what}: {cells} sum {sum(table[tree].values()):.2f}")


def _nights(text: str) -> list[int]:
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(n) for n in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--work", type=Path, required=True)
    b.add_argument("--mb", type=int, default=100)
    b.add_argument("--nights", type=int, default=7, help="nights of in-place changes")
    b.add_argument("--formats", default="2,6")
    for name in ("measure", "_child"):
        m = sub.add_parser(name)
        m.add_argument("--work", type=Path, required=True)
        m.add_argument("--works", default="", help="a states folder per tree (comma-separated)")
        m.add_argument("--format", type=int, default=6)
        m.add_argument("--nights", default="2-8")
        m.add_argument("--reps", type=int, default=3)
        m.add_argument("--trees", default=str(ROOT))
        m.add_argument("--rounds", type=int, default=1)
        m.add_argument("--env", action="append", default=[], help="NAME=VALUE for the child")
    args = parser.parse_args()
    if args.cmd == "build":
        build(args.work, args.mb, args.nights, [int(v) for v in args.formats.split(",")])
    elif args.cmd == "_child":
        child(args.work, args.format, _nights(args.nights), args.reps)
    else:
        env = dict(e.split("=", 1) for e in args.env)
        works = [Path(w) for w in args.works.split(",")] if args.works else [args.work]
        measure(works, args.format, args.trees.split(","), _nights(args.nights), args.reps,
                args.rounds, env)  # fmt: skip


if __name__ == "__main__":
    main()
