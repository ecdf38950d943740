"""casbackup vs restic vs borg, side by side (issue 3). ``make bench`` runs ``python -m bench.run``.

Per repetition, tools are interleaved (their order rotates every repetition), each timed step
starts with a dropped page cache, and first backups go into fresh repositories.

Scenarios: 1 init, 2 first backup, 3 unchanged re-backup, 4 backup after the 1% mutation,
5 full restore (verified), 6 full data check, 7 dedup growth, 8 many small files,
9 scale (casbackup: 5M-chunk index vs empty), floors (cold tar read, cold stat walks).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

from bench import corpus, install, report, slowdisk
from bench.measure import (
    DROP_FAILED_NOTE,
    Command,
    Measurement,
    dir_size,
    drop_caches,
    machine_info,
    run_timed,
)
from bench.tools import (
    Borg,
    Casbackup,
    Repo,
    Restic,
    Tool,
    locate_restore,
    prepare_large_index,
)

BENCH_DIR = Path(__file__).resolve().parent
ALL_SCENARIOS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "floors"]
TOOL_SCENARIOS = ["1", "2", "3", "4", "5", "6", "7", "8"]
DEDUP_SIZE = 200 * corpus.MiB
DEDUP_INSERT_AT = 1 * corpus.MiB
SCANDIR_WALK = """
import os, sys
def walk(p):
    n = 0
    with os.scandir(p) as it:
        for e in it:
            e.stat(follow_symlinks=False)
            n += 1
            if e.is_dir(follow_symlinks=False):
                n += walk(e.path)
    return n
print(walk(sys.argv[1]))
"""


def _slow_disk_spec(text: str) -> str:
    try:
        slowdisk.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument(
        "--quick", action="store_true", help="~100 MiB / 6,000-file corpus, 20k small files"
    )
    ap.add_argument("--reps", type=int, default=3, help="repetitions (default 3)")
    ap.add_argument("--tools", default="casbackup,restic,borg")
    ap.add_argument("--scenarios", default=",".join(ALL_SCENARIOS),
                    help="comma list of 1-9 and 'floors' (default: all)")  # fmt: skip
    ap.add_argument("--workdir", type=Path, default=BENCH_DIR / "work")
    ap.add_argument("--keep", action="store_true", help="keep the last repetition's repositories")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--index-chunks", type=int, default=None,
                    help="scenario 9 synthetic index size (default 5M; 500k with --quick)")  # fmt: skip
    ap.add_argument("--timeout", type=float, default=7200, help="per step, seconds")
    ap.add_argument("--write-results", action="store_true", help="rewrite bench/RESULTS.md")
    ap.add_argument("--no-setup", action="store_true", help="do not apt-get/pip install anything")
    ap.add_argument("--slow-disk", nargs="?", const=slowdisk.DEFAULT, default=None,
                    type=_slow_disk_spec,
                    metavar="IOPS:MIB_S",
                    help="cap every timed step's reads from the work folder's disk (bench/"
                         f"slowdisk.py; default {slowdisk.DEFAULT}, a cloud volume's baseline)")  # fmt: skip
    args = ap.parse_args(argv)
    args.tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [t for t in args.tools if t not in report.TOOLS] + [
        s for s in args.scenarios if s not in ALL_SCENARIOS
    ]
    if bad or args.reps < 1:
        ap.error(f"unknown tools/scenarios {bad}" if bad else "--reps must be >= 1")
    return args


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work: Path = args.workdir.resolve()
        self.stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        self.logs = self.work / "logs" / self.stamp
        self.records: list[dict] = []
        self.sel = set(args.scenarios)
        base = corpus.QUICK_SPEC if args.quick else corpus.DEFAULT_SPEC
        self.spec = corpus.CorpusSpec(base.total_bytes, base.n_files, args.seed)
        self.n_small = 20_000 if args.quick else 200_000
        self.n_index = args.index_chunks or (500_000 if args.quick else 5_000_000)
        self.tools: dict[str, Tool] = {}
        self.unavailable: dict[str, str] = {}
        self.slow: slowdisk.SlowDisk | None = None  # --slow-disk: set up with the tools
        self.meta: dict = {
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "argv": sys.argv[1:],
            "tools": args.tools,
            "scenarios": args.scenarios,
            "reps": args.reps,
            "quick": args.quick,
            "seed": args.seed,
            "index_chunks": self.n_index,
            "small_files": self.n_small,
            "notes": [],
        }

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.restored_root = self.work / "restore"
        if self.restored_root.exists():  # an earlier run's (see restore)
            shutil.rmtree(self.restored_root, ignore_errors=True)
            note = ("restored trees of an earlier run were deleted at the start: the first "
                    "restores may pay for the inodes freed (see Bench.restore)")  # fmt: skip
            self.meta["notes"].append(note)
            log(note)
        self.cold = drop_caches()
        self.meta["cold"] = self.cold
        if not self.cold:
            self.meta["notes"].append(DROP_FAILED_NOTE)
            log(DROP_FAILED_NOTE)
        found = (
            {
                "restic": shutil.which("restic"),
                "borg": str(self.work / "borg-venv/bin/borg"),
                "errors": {},
            }  # fmt: skip
            if self.args.no_setup
            else install.setup(self.work)
        )
        install.compile_bytecode()
        for name in self.args.tools:
            if name == "casbackup":
                self.tools[name] = Casbackup()
            elif name == "restic" and found["restic"]:
                self.tools[name] = Restic(found["restic"])
            elif name == "borg" and found["borg"] and Path(found["borg"]).exists():
                self.tools[name] = Borg(found["borg"])
            else:
                self.unavailable[name] = found["errors"].get(name, f"{name} not installed")
        versions = {n: t.version() for n, t in self.tools.items()}
        versions.update({n: f"unavailable: {why}" for n, why in self.unavailable.items()})
        versions["python (harness)"] = sys.version.split()[0]
        self.meta["versions"] = versions
        self.meta["machine"] = machine_info(self.work)
        if self.args.slow_disk:
            self.slow = slowdisk.set_up(self.work, self.args.slow_disk)
            self.meta["slow_disk"] = self.slow.describe()
            log(f"slow disk: {self.slow.describe()}")
        for n, v in versions.items():
            log(f"{n}: {v}")

    def prepare_data(self) -> None:
        needs_corpus = self.sel & {"1", "2", "3", "4", "5", "6", "9", "floors"}
        self.corpus_dir = self.work / "corpus" / f"{self.spec.n_files}-s{self.spec.seed}" / "data"
        if needs_corpus:
            st = self._ensure(self.corpus_dir, lambda d: corpus.build_corpus(d, self.spec))
            self.meta["corpus"] = st
        self.small_dir = self.work / "smallfiles" / f"{self.n_small}-s{self.spec.seed}" / "data"
        if "8" in self.sel:
            self._ensure(self.small_dir, lambda d: corpus.build_small_files(d, self.n_small))

    def _ensure(self, data: Path, build) -> dict:
        """Build ``data`` unless a READY stamp says it is complete and unmutated."""
        ready, dirty = data.parent / "READY", data.parent / "DIRTY"
        if ready.exists() and not dirty.exists():
            return json.loads(ready.read_text())
        shutil.rmtree(data.parent, ignore_errors=True)
        data.mkdir(parents=True)
        log(f"building {data} ...")
        st = build(data)
        info = {k: v for k, v in asdict(st).items() if k != "by_kind"}
        log(f"built {info}")
        ready.write_text(json.dumps(info))
        return info

    # ------------------------------------------------------------------ steps

    def timed(self, cmd: Command, tag: str, cold: bool = True) -> Measurement:
        """Every timed command of the run goes through here: its log under ``tag``, the page
        cache dropped first (``cold`` and the machine allows it), the --slow-disk cap."""
        return run_timed(
            cmd, self.logs / tag, self.args.timeout, cold=cold and self.cold, slow=self.slow
        )

    def step(
        self,
        rep: int,
        tool: str,
        scenario: str,
        cmd: Command | None,
        record: bool = True,
        cold: bool = True,
        **extra: object,
    ) -> Measurement:
        """Run one command; with ``record`` it becomes a result row."""
        if cmd is None:
            m = Measurement(False, error=str(extra.pop("reason", "")))
            status = "skipped"
        else:
            tag = f"rep{rep}-{scenario}-{tool}" + ("" if record else "-setup")
            m = self.timed(cmd, tag, cold=cold)
            status = "ok" if m.ok else "failed"
            log(
                f"rep {rep} {tool:9} {report.SCENARIOS.get(scenario, scenario):36} "
                f"{'' if record else '(setup) '}{status} {m.wall_s:7.2f} s "
                f"{m.tree_pss_kib / 1024:6.0f} MiB PSS {m.error[:200]}"
            )
        if record:
            self.add(rep, tool, scenario, status, m, **extra)
        return m

    def add(self, rep: int, tool: str, scenario: str, status: str, m: Measurement, **extra: object):
        rec = {"rep": rep, "tool": tool, "scenario": scenario, "status": status, **m.as_dict()}
        rec.update(extra)
        self.records.append(rec)
        return rec

    def skip(self, rep: int, tool: str, scenarios: list[str], reason: str) -> None:
        for s in scenarios:
            if s in self.sel:
                self.add(rep, tool, s, "skipped", Measurement(False, error=reason))

    def fail(self, rep: int, tool: str, scenarios: list[str], reason: str) -> None:
        for s in scenarios:
            if s in self.sel:
                self.add(rep, tool, s, "failed", Measurement(False, error=reason))

    def fresh_repo(self, tool: str, label: str) -> Repo:
        root = self.work / "repos" / f"{tool}-{label}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        return Repo(tool, root)

    def backup(
        self,
        rep: int,
        name: str,
        repo: Repo,
        src: Path,
        scenario: str,
        record: bool,
        **more: object,
    ):
        """A backup step plus the guard against silent success: one more snapshot must exist."""
        tool = self.tools[name]
        before = dir_size(repo.path)[0]
        m = tool.backup(repo, src)
        res = self.timed(m, f"rep{rep}-{scenario}-{name}")
        status, extra = ("ok" if res.ok else "failed"), dict(more)
        if res.ok:
            repo.backups += 1
            count = tool.count_snapshots(repo)
            if count is not None and count != repo.backups:
                status = "failed"
                res.error = f"exit 0 but {count} snapshots listed, expected {repo.backups}"
            elif count is None:
                extra["warning"] = "snapshot count could not be read"
            size, alloc = dir_size(repo.path)
            extra.update(repo_bytes=size, repo_alloc_bytes=alloc, growth_bytes=size - before)
            extra["cache_bytes"] = dir_size(repo.home)[0]
        log(
            f"rep {rep} {name:9} {report.SCENARIOS.get(scenario, scenario):36} "
            f"{'' if record else '(setup) '}{status} {res.wall_s:7.2f} s "
            f"{res.tree_pss_kib / 1024:6.0f} MiB PSS repo {extra.get('repo_bytes', 0) / 2**20:8.1f} MiB "
            f"{res.error[:200]}"
        )
        if record:
            self.add(rep, name, scenario, status, res, **extra)
        return status == "ok", res, extra

    # ------------------------------------------------------------------ scenarios

    def floors(self, rep: int) -> None:
        d = str(self.corpus_dir)
        tar = Command(["bash", "-c", 'tar -cf - "$1" | cat > /dev/null', "tar", d])
        find = Command(["find", d, "-fprintf", "/dev/null", "%s %T@\n"])
        scandir = Command([sys.executable, "-c", SCANDIR_WALK, d])
        for sc, cmd in (("floor-tar", tar), ("floor-find", find), ("floor-scandir", scandir)):
            self.step(rep, "floor", sc, cmd)

    def main_sequence(self, rep: int, order: list[str]) -> None:
        """Scenarios 1-6 on the server corpus, one repository per tool."""
        repos = {t: self.fresh_repo(t, "main") for t in order}
        alive = set(order)
        later = ["2", "3", "4", "5", "6"]
        for t in order:  # 1 init
            if not self.step(rep, t, "1", self.tools[t].init(repos[t]), record="1" in self.sel).ok:
                alive.discard(t)
                self.skip(rep, t, later, "init failed")
        if not self.sel & set(later):
            return self.cleanup(rep, repos)
        for t in [t for t in order if t in alive]:  # 2 first backup
            if not self.backup(rep, t, repos[t], self.corpus_dir, "2", "2" in self.sel)[0]:
                alive.discard(t)
                self.skip(rep, t, later[1:], "first backup failed")
        if "3" in self.sel:
            for t in [t for t in order if t in alive]:
                self.backup(rep, t, repos[t], self.corpus_dir, "3", True)
        mutation = None
        undo = self.work / "mutation-undo"
        if "4" in self.sel:
            shutil.rmtree(undo, ignore_errors=True)
            (self.corpus_dir.parent / "DIRTY").touch()
            mutation = corpus.mutate_corpus(self.corpus_dir, self.spec, undo)
            self.meta["mutation"] = mutation.as_dict()
            for t in [t for t in order if t in alive]:
                if not self.backup(rep, t, repos[t], self.corpus_dir, "4", True)[0]:
                    alive.discard(t)
                    self.skip(rep, t, ["5", "6"], "backup after the mutation failed")
        try:
            if "5" in self.sel:
                for t in [t for t in order if t in alive]:
                    self.restore(rep, t, repos[t])
            if "6" in self.sel:
                for t in [t for t in order if t in alive]:
                    self.step(rep, t, "6", self.tools[t].check(repos[t]))
        finally:
            if mutation is not None:
                corpus.revert_mutation(self.corpus_dir, mutation, undo)
                (self.corpus_dir.parent / "DIRTY").unlink()
        self.cleanup(rep, repos)

    def restore(self, rep: int, name: str, repo: Repo) -> None:
        # Every restored tree is kept until the run ends (restored_root): ext4 without a
        # journal (this VM's root file system) skips, when it creates a file, every inode
        # freed in the last 60 s (360 s while its inode table block is dirty, which a
        # restore makes it), one buffer look-up each. A restore of the corpus after the
        # previous one was deleted took 15-18 s of system time instead of 3.8 s
        # (bench/RESULTS.md, "Issue 17: restore"), whichever tool ran; a 65 s pause was not
        # enough (2026-12-02: 7.5 s of CPU on the first repetition, 14-16 s on the next).
        target = self.restored_root / f"rep{rep}" / name
        target.mkdir(parents=True)
        cmd = self.tools[name].restore(repo, target)
        m = self.timed(cmd, f"rep{rep}-5-{name}")
        status = "ok" if m.ok else "failed"
        if m.ok:
            diffs = corpus.compare_trees(self.corpus_dir, locate_restore(target, self.corpus_dir))
            if diffs:
                status = "failed"
                m.error = f"restored tree differs ({len(diffs)}+): " + "; ".join(diffs[:5])
        log(
            f"rep {rep} {name:9} {report.SCENARIOS['5']:36} {status} {m.wall_s:7.2f} s "
            f"{m.tree_pss_kib / 1024:6.0f} MiB PSS {m.error[:200] or 'verified identical'}"
        )
        self.add(rep, name, "5", status, m)

    def dedup(self, rep: int, name: str) -> None:
        """7: back up a 200 MiB random file, insert 100 bytes at 1 MiB, back up again."""
        src = self.work / "dedup" / "data"
        shutil.rmtree(src, ignore_errors=True)
        big = src / "big.bin"
        corpus.write_random_file(big, DEDUP_SIZE, self.spec.seed)
        repo = self.fresh_repo(name, "dedup")
        tool = self.tools[name]
        if not self.step(rep, name, "7", tool.init(repo), record=False).ok:
            return self.fail(rep, name, ["7"], "init failed")
        ok, first, _ = self.backup(rep, name, repo, src, "7", record=False)
        if not ok:
            return self.fail(rep, name, ["7"], f"first backup failed: {first.error}")
        corpus.insert_bytes(big, DEDUP_INSERT_AT, b"\xa5" * 100)
        self.backup(rep, name, repo, src, "7", True, first_backup_wall_s=first.wall_s)
        self.cleanup(rep, {name: repo})

    def small_files(self, rep: int, name: str) -> None:
        repo = self.fresh_repo(name, "small")
        if not self.step(rep, name, "8", self.tools[name].init(repo), record=False).ok:
            return self.fail(rep, name, ["8"], "init failed")
        self.backup(rep, name, repo, self.small_dir, "8", True)
        self.cleanup(rep, {name: repo})

    def scale(self, rep: int) -> None:
        """9: casbackup's first backup into an empty repository vs one with a large index."""
        cb = self.tools["casbackup"]
        assert isinstance(cb, Casbackup)
        if why := cb.synth_index_missing():
            return self.skip(rep, "casbackup", ["9a", "9b"], why)
        order = ["9a", "9b"] if rep % 2 else ["9b", "9a"]
        for sc in order:
            repo = self.fresh_repo("casbackup", f"scale-{sc}")
            if not self.step(rep, "casbackup", sc, cb.init(repo), record=False).ok:
                self.fail(rep, "casbackup", [sc], "init failed")
                continue
            if sc == "9b":
                log(f"rep {rep} casbackup: synthesizing {self.n_index} index entries")
                error = prepare_large_index(repo, self.n_index, self.args.timeout)
                if error:
                    self.fail(rep, "casbackup", [sc], f"synth_index failed: {error}")
                    continue
            self.backup(rep, "casbackup", repo, self.corpus_dir, sc, True)
            self.cleanup(rep, {"casbackup": repo})

    def cleanup(self, rep: int, repos: dict[str, Repo]) -> None:
        if self.args.keep and rep == self.args.reps:
            return
        for r in repos.values():
            shutil.rmtree(r.root, ignore_errors=True)

    # ------------------------------------------------------------------ driver

    def run(self) -> None:
        self.setup()
        self.prepare_data()
        if "9" in self.sel:
            self.sel |= {"9a", "9b"}
        names = self.args.tools
        for rep in range(1, self.args.reps + 1):
            k = (rep - 1) % len(names)
            order = names[k:] + names[:k]  # rotate so that no tool always goes first
            for t in order:
                if t in self.unavailable:
                    self.fail(rep, t, TOOL_SCENARIOS, f"not available: {self.unavailable[t]}")
            order = [t for t in order if t in self.tools]
            log(f"=== repetition {rep}/{self.args.reps}, order {', '.join(order)}")
            if "floors" in self.sel:
                self.floors(rep)
            if self.sel & {"1", "2", "3", "4", "5", "6"} and order:
                self.main_sequence(rep, order)
            if "7" in self.sel:
                for t in order:
                    self.dedup(rep, t)
            if "8" in self.sel:
                for t in order:
                    self.small_files(rep, t)
            if "9" in self.sel and "casbackup" in self.tools:
                self.scale(rep)
        if not self.args.keep:
            shutil.rmtree(self.restored_root, ignore_errors=True)
        self.finish()

    def finish(self) -> None:
        table = report.render(self.meta, self.records)
        out = BENCH_DIR / "results" / f"{self.stamp}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps({"meta": self.meta, "records": self.records}, indent=1))
        print(table)
        log(f"JSON: {out}; logs: {self.logs}")
        if self.args.write_results:
            report.write_results_md(BENCH_DIR / "RESULTS.md", self.meta, self.records)
            log(f"wrote {BENCH_DIR / 'RESULTS.md'}")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    try:
        Bench(parse_args(argv)).run()
    except slowdisk.SlowDiskError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
