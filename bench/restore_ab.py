"""Restore, A/B between code trees, from a local folder and from S3 (SeaweedFS on loopback),
with restic's restore of the same corpus beside them.

    python -m bench.restore_ab [--mib 256] [--files 3000] [--reps 2] [--cold]
                               [--code /work/main --code .] [--no-restic]

Every ``--code`` folder is put first on PYTHONPATH for its restores, so two checkouts of
casbackup restore the same repositories back to back (the backups are made once, by this
tree). Per restore: wall time, CPU (user+sys of the command and every helper process it
waited for), the CPU of the restoring process's walking thread (``Restorer.run``: trees,
folders, batches; with medians and ranges), peak PSS summed over the process tree
(bench/measure.py's TreeMemory), and, in a separate counted run, the requests and bytes
read from packs (a counter patched into the backends' ``get`` in the restoring process and
its forked writers). ``--cold`` drops the page cache before each timed restore (root
only), as bench/run.py does.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.corpus import CorpusSpec, build_corpus, compare_trees
from bench.measure import TIME_BIN, TreeMemory, drop_caches
from bench.s3_bench import start_weed

MiB = 1 << 20

# Run inside the restoring process: count pack reads (requests, bytes) in it and in the
# writer processes it forks (a shared-memory counter survives the fork), then restore.
_COUNTED = """
import multiprocessing, sys, threading
from casbackup.store.local import LocalBackend
from casbackup.store.s3 import S3Backend
# [0] [1]: gets and bytes for file contents (writers); [2] [3]: the walk's (trees, index)
counts = multiprocessing.Array("q", 4)
def wrap(cls):
    real = cls.get
    def get(self, name, offset=0, length=None):
        data = real(self, name, offset, length)
        if name.startswith("data/"):
            walk = (multiprocessing.parent_process() is None
                    and threading.current_thread() is threading.main_thread())
            with counts.get_lock():
                counts[2 * walk] += 1
                counts[2 * walk + 1] += len(data)
        return data
    cls.get = get
wrap(LocalBackend)
wrap(S3Backend)
import os
if os.environ.get("BENCH_GAP"):  # --gaps: one hole size for every backend
    from casbackup.archiver import restore_files, writers
    gap = int(os.environ["BENCH_GAP"])
    restore_files.LOCAL_GAP = restore_files.REMOTE_GAP = writers.LOCAL_GAP = gap
from casbackup.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    if exc.code:
        raise
finally:
    print("COUNTED", *counts[:], file=sys.stderr)
"""

# Run inside the restoring process for the timed runs: the CPU time of the thread that walks
# the snapshot (trees, folders, batches for the writers), which on 2 cores competes with
# the writers; printed for the parent to collect. Restorer.run is that thread's whole part.
_MAIN_CPU = """
import sys, time
from casbackup.archiver import restore
real = restore.Restorer.run
spent = []
def run(self):
    start = time.thread_time()
    try:
        return real(self)
    finally:
        spent.append(time.thread_time() - start)
restore.Restorer.run = run
from casbackup.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    if exc.code:
        raise
finally:
    print("MAINCPU", sum(spent), file=sys.stderr)
"""


def casbackup(
    code: str | None, repo: str, *args: str, counted: bool = False, gap: int | None = None
) -> dict[str, float]:
    """Run one casbackup command with ``code`` first on PYTHONPATH; its costs."""
    env = dict(os.environ)
    if code:
        env["PYTHONPATH"] = os.path.abspath(code)
    if gap is not None:
        env["BENCH_GAP"] = str(gap)
        counted = True
    argv = ["-r", repo, *args]
    cmd = [sys.executable, "-c", _COUNTED if counted else _MAIN_CPU, *argv]
    return timed(cmd, env)


def timed(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # Under /usr/bin/time (silent): TreeMemory charges everything below it, the command
    # and its helpers, and nothing else this script started (the S3 server).
    # cwd "/": the current folder comes first on sys.path (-m, -c) and would shadow
    # PYTHONPATH's checkout.
    proc = subprocess.Popen([TIME_BIN, "-f", "", *cmd], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd="/")  # fmt: skip
    memory = TreeMemory(proc.pid)
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    memory.stop()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[-6:])} failed: {err.decode()[-2000:]}")
    out = {
        "wall": wall,
        "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "sys": after.ru_stime - before.ru_stime,
        "pss_mib": memory.peak_pss_kib / 1024,
    }
    for line in err.decode().splitlines():
        if line.startswith("MAINCPU "):
            out["main_cpu"] = float(line.split()[1])
        if line.startswith("COUNTED "):
            n, b, walk_n, walk_b = map(int, line.split()[1:])
            out["requests"], out["mib_read"] = n, b / MiB
            out["walk_requests"], out["walk_mib"] = walk_n, walk_b / MiB
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--files", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--code", action="append", help="casbackup source folders to compare")
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each restore")
    ap.add_argument("--no-restic", action="store_true")
    ap.add_argument("--no-s3", action="store_true")
    ap.add_argument("--gaps", default="", help="comma-separated hole sizes (bytes) to compare "
                    "on the last --code, counted runs only")  # fmt: skip
    ap.add_argument("--target-root", type=Path, help="restore under this folder instead of "
                    "the temporary one (another file system; see below)")  # fmt: skip
    opts = ap.parse_args()
    codes = opts.code or ["."]
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret",
                      AWS_DEFAULT_REGION="us-east-1", CASBACKUP_PASSWORD="bench",
                      RESTIC_PASSWORD="bench")  # fmt: skip
    restic = None if opts.no_restic else shutil.which("restic")
    with tempfile.TemporaryDirectory(prefix="restore-ab-") as tmp:
        work = Path(tmp)
        src = work / "src"
        # Each restore goes where the previous one was deleted a moment before. On an ext4
        # without a journal (this VM's root file system), the inode allocator skips every
        # inode freed in the last minute or so (recently_deleted() in ext4's ialloc.c), one
        # buffer look-up per skipped inode per new file: after a 60,000-file tree is
        # deleted, the next restore took 4-5 times the system time (15-18 s against 3.8 s;
        # restic alike).
        # --target-root on a journaled file system leaves that out.
        out = (opts.target_root or work) / "out"
        build_corpus(src, CorpusSpec(total_bytes=opts.mib * MiB, n_files=opts.files))
        repos = {"local": str(work / "repo")}
        weed = None
        if not opts.no_s3:
            import boto3

            weed, endpoint = start_weed(work / "weed")
            bucket = f"b{uuid.uuid4().hex[:12]}"
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(
                Bucket=bucket
            )
            repos["s3"] = f"s3:{endpoint}/{bucket}/repo"
        try:
            for kind, repo in repos.items():
                os.environ["CASBACKUP_CACHE_DIR"] = str(work / f"cache-{kind}")
                casbackup(None, repo, "init")
                casbackup(None, repo, "backup", str(src))
            if restic:
                subprocess.run([restic, "-r", str(work / "restic"), "init"], check=True,
                               capture_output=True)  # fmt: skip
                subprocess.run([restic, "-r", str(work / "restic"), "backup", str(src)],
                               check=True, capture_output=True)  # fmt: skip
            rows: dict[str, list[dict[str, float]]] = {}
            for rep in range(opts.reps):
                order = [(c, k) for c in codes for k in repos]
                if rep % 2:
                    order.reverse()
                for code, kind in order:
                    os.environ["CASBACKUP_CACHE_DIR"] = str(work / f"cache-{kind}")
                    target = out
                    shutil.rmtree(target, ignore_errors=True)
                    if opts.cold:
                        drop_caches()
                    got = casbackup(code, repos[kind], "restore", "latest", "--target", str(target))
                    if rep == 0:
                        diffs = compare_trees(src, target / src.relative_to("/"))
                        if diffs:
                            raise SystemExit(f"{code} {kind}: restored tree differs: {diffs[:3]}")
                    rows.setdefault(f"{code} {kind}", []).append(got)
                if restic:
                    target = out
                    shutil.rmtree(target, ignore_errors=True)
                    if opts.cold:
                        drop_caches()
                    cmd = [restic, "-r", str(work / "restic"), "restore", "latest",
                           "--target", str(target)]  # fmt: skip
                    rows.setdefault("restic local", []).append(timed(cmd, dict(os.environ)))
            gaps = [int(g) for g in opts.gaps.split(",") if g]
            for rep in range(opts.reps if gaps else 0):
                for gap in gaps if rep % 2 == 0 else gaps[::-1]:
                    for kind, repo in repos.items():
                        os.environ["CASBACKUP_CACHE_DIR"] = str(work / f"cache-{kind}")
                        target = out
                        shutil.rmtree(target, ignore_errors=True)
                        if opts.cold:
                            drop_caches()
                        got = casbackup(codes[-1], repo, "restore", "latest", "--target",
                                        str(target), gap=gap)  # fmt: skip
                        rows.setdefault(f"gap {gap} {kind}", []).append(got)
            counted: dict[str, dict[str, float]] = {}
            for code in codes:
                for kind, repo in repos.items():
                    os.environ["CASBACKUP_CACHE_DIR"] = str(work / f"cache-{kind}")
                    target = out
                    shutil.rmtree(target, ignore_errors=True)
                    counted[f"{code} {kind}"] = casbackup(
                        code, repo, "restore", "latest", "--target", str(target), counted=True
                    )
        finally:
            if weed is not None:
                weed.terminate()
                try:
                    weed.wait(20)
                except subprocess.TimeoutExpired:
                    weed.kill()
                    weed.wait()
    print(f"corpus: {opts.mib} MiB in {opts.files} files; {opts.reps} reps, "
          f"{'cold' if opts.cold else 'warm'} cache; min wall and its CPU/PSS")  # fmt: skip
    best: dict[str, dict[str, float]] = {}
    for name, runs in rows.items():
        run = best[name] = min(runs, key=lambda r: r["wall"])
        extra = counted.get(name, run)
        reads = (f"  files: {extra['requests']:5.0f} gets {extra['mib_read']:6.1f} MiB, "
                 f"trees: {extra['walk_requests']:5.0f} gets {extra['walk_mib']:5.1f} MiB"
                 if "requests" in extra else "")  # fmt: skip
        walls = " ".join(f"{r['wall']:.2f}" for r in runs)
        print(f"{name:40} wall {run['wall']:6.2f} s  cpu {run['cpu']:6.2f} s (sys {run['sys']:5.2f})  "
              f"pss {run['pss_mib']:6.0f} MiB{reads}   (walls {walls})")  # fmt: skip
        if "main_cpu" in runs[0]:  # every run: medians and ranges, the spread on a shared VM
            for key in ("main_cpu", "cpu", "wall"):
                values = sorted(r[key] for r in runs)
                print(f"{'':40} {key:8} median {statistics.median(values):6.2f} s "
                      f"({values[0]:.2f}-{values[-1]:.2f})")  # fmt: skip
    for code in codes:
        local, s3 = best.get(f"{code} local"), best.get(f"{code} s3")
        if local and s3:
            print(f"{code}: s3/local restore wall {s3['wall'] / local['wall']:.2f}x")
        if local and "restic local" in best:
            print(f"{code}: casbackup/restic restore wall "
                  f"{local['wall'] / best['restic local']['wall']:.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
