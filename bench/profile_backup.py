"""Where a backup's CPU goes, per process and thread, measured in CPU time (not wall).

On a machine shared with other work, wall-clock profilers charge a thread for the time it
waited for a core. This runs one backup in-process with a CPU-time profiler (``cProfile``
with ``time.thread_time``) on the walker thread, on each receiver thread and in each reader
process, and prints the top functions of each, plus each one's total CPU.

    python -m bench.profile_backup CORPUS [--repo DIR] [--top 25] [--again]

``--again``: profile an unchanged re-backup instead (a first backup runs unprofiled first).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import tempfile
import threading
import time
from pathlib import Path

from casbackup.archiver import workers
from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.crypto.keyfile import KdfParams
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalBackend

PASSWORD = b"bench-passphrase-not-secret"


def _profiled(fn, out: Path, label: str):  # type: ignore[no-untyped-def]
    """``fn`` run under a CPU-time profiler whose stats go to ``out/label-PID-TID.prof``."""

    def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
        prof = cProfile.Profile(time.thread_time)
        prof.enable()
        try:
            return fn(*args, **kwargs)
        finally:
            prof.disable()
            prof.dump_stats(out / f"{label}-{os.getpid()}-{threading.get_ident()}.prof")

    return wrapper


def _report(path: Path, top: int) -> float:
    stream = io.StringIO()
    stats = pstats.Stats(str(path), stream=stream)
    stats.sort_stats("tottime").print_stats(top)
    print(f"==== {path.name}: {stats.total_tt:.2f} s CPU")  # type: ignore[attr-defined]
    lines = stream.getvalue().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), 0)
    print("\n".join(lines[start : start + top + 1]))
    return float(stats.total_tt)  # type: ignore[attr-defined]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--again", action="store_true")
    ap.add_argument(
        "--plain", action="store_true", help="no profiler: only the CPU of this process and readers"
    )
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="cb-prof-") as tmp:
        root = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(root / "cache")
        out = root / "profiles"
        out.mkdir()
        backend = LocalBackend(str(root / "repo"))
        repo = Repository.init(
            backend, PASSWORD, kdf=KdfParams(memory_kib=1024, iterations=1, lanes=1)
        )
        options = BackupOptions(paths=(str(args.corpus),), workers=args.workers, type="full")
        if args.again:
            run_backup(repo, options)
            options = BackupOptions(paths=(str(args.corpus),), workers=args.workers)
        receive = workers.ReaderPool._receive
        receivers: list[float] = []
        if not args.plain:
            workers._worker_main = _profiled(workers._worker_main, out, "reader")  # type: ignore[assignment]
            workers.ReaderPool._receive = _profiled(receive, out, "receiver")  # type: ignore[method-assign]
        else:

            def timed(*a, **k):  # type: ignore[no-untyped-def]
                t0 = time.thread_time()
                try:
                    return receive(*a, **k)
                finally:
                    receivers.append(time.thread_time() - t0)

            workers.ReaderPool._receive = timed  # type: ignore[method-assign]
        walker0 = time.thread_time()
        cpu0 = os.times()
        prof = cProfile.Profile(time.thread_time)
        if not args.plain:
            prof.enable()
        result = run_backup(repo, options)
        prof.disable()
        walker = time.thread_time() - walker0
        cpu1 = os.times()
        repo.close()
        if not args.plain:
            prof.dump_stats(out / "walker.prof")
        total = 0.0
        for path in sorted(out.iterdir()):
            total += _report(path, args.top)
        process = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        children = (cpu1.children_user - cpu0.children_user) + (
            cpu1.children_system - cpu0.children_system
        )
        summary = result.snapshot.summary if result.snapshot else None
        print(f"\nprofiled CPU (sum of the above): {total:.2f} s")
        if args.plain:
            print(f"walker thread {walker:.2f} s, receiver threads {sum(receivers):.2f} s")
        print(f"process CPU {process:.2f} s, reaped readers {children:.2f} s; {summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
