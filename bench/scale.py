"""Scale benchmark (issue 17): backup, check, check --read-data and prune against synthetic
repositories of 1 million and 5 million blobs.

    python -m bench.scale [--sizes 1000000,5000000] [--steps backup,check,read-data,prune]
                          [--corpus-mib 200 --corpus-files 12000] [--reps 1] [--cold]

Each size's repository is built once with ``casbackup.testing.synth_index --packs`` (real
packs of 48-byte blobs, one snapshot using 97 % of them: 2 % of the packs wholly unused,
2 % half used) and cached under bench/work/scale/ with its index cache; later runs reuse
it. Steps:

- backup: the same corpus backed up into an empty repository and into a copy of the
  large one (packs hard-linked, index cache copied): the targets are time <= 1.15x and
  peak memory <= 1.3x of the empty case;
- check, check --read-data: on the cached repository; target peak memory <= 300 MiB and
  time linear in the number of blobs (compare the sizes);
- prune: on a copy (it deletes 2 % of the packs, repacks 2 %, rewrites the index).

Every step runs in its own process under /usr/bin/time (CPU = user + sys) with the PSS of
the process tree sampled every 0.1 s (bench/measure.py). Numbers go to stdout and to
bench/results/scale-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench import corpus
from bench.measure import Command, Measurement, run_timed

BENCH_DIR = Path(__file__).resolve().parent
PASSWORD = "scale-bench"


def log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Scale:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(args.work).resolve()
        self.python = args.python
        self.records: list[dict[str, object]] = []

    def env(self, cache: Path) -> dict[str, str]:
        return {"CASBACKUP_PASSWORD": self.args.password, "CASBACKUP_CACHE_DIR": str(cache)}

    def cb(self, repo: Path, *args: str) -> list[str]:
        return [self.python, "-m", "casbackup.cli.main", "-r", str(repo), *args]

    def init(self, repo: Path, cache: Path) -> None:
        # The test KDF: opening costs milliseconds, not the 0.5 s of the default, in every step.
        subprocess.run(self.cb(repo, "init", "--insecure-test-kdf"), check=True,
                       env={**os.environ, **self.env(cache)}, capture_output=True)  # fmt: skip

    def corpus_dir(self) -> Path:
        path = self.work / f"corpus-{self.args.corpus_mib}-{self.args.corpus_files}"
        if not (path / ".complete").exists():
            shutil.rmtree(path, ignore_errors=True)
            log(f"building the corpus at {path}")
            spec = corpus.CorpusSpec(self.args.corpus_mib << 20, self.args.corpus_files)
            corpus.build_corpus(path / "data", spec)
            (path / ".complete").write_text("")
        return path / "data"

    def synthetic(self, n: int) -> tuple[Path, Path]:
        """The cached repository of ``n`` synthetic blobs and its index cache."""
        base = self.work / f"synth-{n}"
        repo, cache = base / "repo", base / "cache"
        if not (base / ".complete").exists():
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir(parents=True)
            self.init(repo, cache)
            log(f"building a synthetic repository of {n} blobs (once; cached in {base})")
            t0 = time.perf_counter()
            subprocess.run(
                [self.python, "-m", "casbackup.testing.synth_index", str(repo), str(n), "--packs"],
                check=True, env={**os.environ, **self.env(cache)}, cwd="/",
            )  # fmt: skip
            (base / ".complete").write_text(f"{time.perf_counter() - t0:.1f}\n")
        return repo, cache

    def copy(self, repo: Path, cache: Path, name: str) -> tuple[Path, Path]:
        """A copy to change: packs hard-linked (never written in place), the cache copied."""
        dest = self.work / "run" / name
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        subprocess.run(["cp", "-al", str(repo), str(dest / "repo")], check=True)
        subprocess.run(["cp", "-a", str(cache), str(dest / "cache")], check=True)
        return dest / "repo", dest / "cache"

    def step(self, label: str, n: int, rep: int, argv: list[str], cache: Path) -> Measurement:
        logs = self.work / "logs" / f"{label}-{n}-{rep}"
        m = run_timed(Command(argv, self.env(cache), Path("/")), logs, self.args.timeout,
                      cold=self.args.cold)  # fmt: skip
        self.records.append({"step": label, "blobs": n, "rep": rep, **m.as_dict()})
        state = "ok" if m.ok else f"FAILED ({m.error})"
        log(f"{label:16} {n:>9} blobs: wall {m.wall_s:7.1f} s  cpu {m.cpu_s:7.1f} s  "
            f"PSS {m.tree_pss_kib / 1024:6.0f} MiB  RSS {m.tree_rss_kib / 1024:6.0f} MiB  {state}")  # fmt: skip
        return m

    def run(self) -> None:
        steps = set(self.args.steps.split(","))
        sizes = [int(s) for s in self.args.sizes.split(",")]
        source = self.corpus_dir() if "backup" in steps else None
        for rep in range(1, self.args.reps + 1):
            for n in sizes:
                repo, cache = self.synthetic(n)
                if source is not None:
                    empty = self.work / "run" / "empty"
                    shutil.rmtree(empty, ignore_errors=True)
                    self.init(empty / "repo", empty / "cache")
                    self.step("backup-empty", n, rep,
                              self.cb(empty / "repo", "backup", str(source)), empty / "cache")  # fmt: skip
                    big, big_cache = self.copy(repo, cache, "big")
                    self.step(
                        "backup-large", n, rep, self.cb(big, "backup", str(source)), big_cache
                    )
                if "check" in steps:
                    self.step("check", n, rep, self.cb(repo, "check"), cache)
                if "read-data" in steps:
                    self.step(
                        "check-read-data", n, rep, self.cb(repo, "check", "--read-data"), cache
                    )
                if "prune" in steps:
                    pruned, pruned_cache = self.copy(repo, cache, "prune")
                    self.step("prune", n, rep, self.cb(pruned, "prune"), pruned_cache)
                shutil.rmtree(self.work / "run", ignore_errors=True)
        out = BENCH_DIR / "results" / f"scale-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"args": vars(self.args), "records": self.records}, indent=1))
        print(table(self.records))
        log(f"wrote {out}")


def table(records: list[dict[str, object]]) -> str:
    """A markdown table: medians over repetitions per (step, size)."""
    rows: dict[tuple[str, int], list[dict[str, object]]] = {}
    for r in records:
        rows.setdefault((str(r["step"]), int(r["blobs"])), []).append(r)  # type: ignore[call-overload]

    def med(key: str, rs: list[dict[str, object]]) -> float:
        values = sorted(float(r[key]) for r in rs)  # type: ignore[arg-type]
        return values[len(values) // 2]

    lines = ["| step | blobs | wall s | CPU s | peak PSS MiB | peak RSS MiB | ok |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for (step, n), rs in rows.items():
        lines.append(
            f"| {step} | {n:,} | {med('wall_s', rs):.1f} | {med('cpu_s', rs):.1f} | "
            f"{med('tree_pss_kib', rs) / 1024:.0f} | {med('tree_rss_kib', rs) / 1024:.0f} | "
            f"{all(r['ok'] for r in rs)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000000,5000000")
    p.add_argument("--steps", default="backup,check,read-data,prune")
    p.add_argument("--corpus-mib", type=int, default=200)
    p.add_argument("--corpus-files", type=int, default=12_000)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--cold", action="store_true", help="drop the page cache before each step")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--work", default=str(BENCH_DIR / "work" / "scale"))
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--password", default=PASSWORD, help="of the cached synthetic repositories")
    Scale(p.parse_args(argv)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
