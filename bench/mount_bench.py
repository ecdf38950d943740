"""Browse a backup through FUSE: `casbackup mount` against `restic mount`, same data, same machine.

Two operations, each on a fresh mount with the page cache dropped first:
- list a folder of 10,000 entries with the attributes of each (what ``ls -l`` does);
- read a 1 GiB incompressible file sequentially (1 MiB reads).
The bytes read are checked against the source afterwards, outside the timing.

    .venv/bin/python -m bench.mount_bench [--size-mib 1024] [--entries 10000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.corpus import write_random_file
from bench.measure import drop_caches

PASSWORD = "bench-passphrase-not-secret"
READ_SIZE = 1 << 20


@dataclass
class Tool:
    name: str
    init: list[str]
    backup: list[str]
    mount: list[str]
    env: dict[str, str]
    # Where the source's absolute path starts inside the mount.
    snapshot_root: Callable[[Path], Path]
    stop_signal: int = signal.SIGTERM


def tools(work: Path) -> list[Tool]:
    cas_repo, restic_repo = work / "casbackup-repo", work / "restic-repo"
    cas = [sys.executable, "-m", "casbackup.cli.main", "-r", str(cas_repo), "--no-progress"]
    restic = ["restic", "-r", str(restic_repo)]
    host = socket.gethostname()
    return [
        Tool("casbackup", [*cas, "init", "--insecure-test-kdf"], [*cas, "-q", "backup"],
             [*cas, "mount"], {"CASBACKUP_PASSWORD": PASSWORD,
                               "CASBACKUP_CACHE_DIR": str(work / "casbackup-cache")},
             lambda mp: mp / host / "latest"),
        Tool("restic", [*restic, "init"], [*restic, "-q", "backup"], [*restic, "mount"],
             {"RESTIC_PASSWORD": PASSWORD, "RESTIC_CACHE_DIR": str(work / "restic-cache")},
             lambda mp: mp / "snapshots" / "latest", signal.SIGINT),
    ]  # fmt: skip


def build_corpus(root: Path, entries: int, size: int) -> None:
    wide = root / "wide"
    if not (wide.is_dir() and len(os.listdir(wide)) == entries):
        shutil.rmtree(wide, ignore_errors=True)
        wide.mkdir(parents=True)
        for i in range(entries):
            (wide / f"file-{i:05d}.txt").write_bytes(f"entry {i}\n".encode() * 10)
    big = root / "big.bin"
    if not (big.exists() and big.stat().st_size == size):
        write_random_file(big, size, seed=7)


def run(cmd: list[str], env: dict[str, str]) -> None:
    subprocess.run(cmd, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL)


def start_mount(tool: Tool, mp: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([*tool.mount, str(mp)], env={**os.environ, **tool.env},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 60
    while not os.path.ismount(mp):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{tool.name} mount failed: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        time.sleep(0.05)
    # restic fills snapshots/ asynchronously: wait until the snapshot is visible.
    while not tool.snapshot_root(mp).exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{tool.name}: no snapshot visible in the mount")
        time.sleep(0.1)
    return proc


def stop_mount(proc: subprocess.Popen[bytes], tool: Tool, mp: Path) -> int:
    """Stop the mount; returns its peak resident memory in KiB."""
    peak = 0
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    except (OSError, StopIteration):
        pass
    proc.send_signal(tool.stop_signal)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    if os.path.ismount(mp):
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False)
    return peak


def list_folder(folder: Path) -> int:
    count = 0
    with os.scandir(folder) as it:
        for entry in it:
            entry.stat(follow_symlinks=False)
            count += 1
    return count


def read_file(path: Path) -> int:
    total = 0
    with open(path, "rb", buffering=0) as f:
        while block := f.read(READ_SIZE):
            total += len(block)
    return total


def digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(READ_SIZE):
            h.update(block)
    return h.hexdigest()


def measure(tool: Tool, corpus: Path, mp: Path, op: str) -> tuple[float, int]:
    drop_caches()
    proc = start_mount(tool, mp)
    inside = tool.snapshot_root(mp) / str(corpus).lstrip("/")
    try:
        t0 = time.perf_counter()
        if op == "list":
            done = list_folder(inside / "wide")
        else:
            done = read_file(inside / "big.bin")
        seconds = time.perf_counter() - t0
        if op == "list" and done != len(os.listdir(corpus / "wide")):
            raise SystemExit(f"{tool.name} listed {done} entries")
        if op == "read" and digest(inside / "big.bin") != digest(corpus / "big.bin"):
            raise SystemExit(f"{tool.name} returned different bytes")
    finally:
        peak = stop_mount(proc, tool, mp)
    return seconds, peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench/work/mount"))
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--entries", type=int, default=10_000)
    args = parser.parse_args(argv)
    work = args.workdir.resolve()
    corpus, mp = work / "corpus", work / "mnt"
    mp.mkdir(parents=True, exist_ok=True)
    build_corpus(corpus, args.entries, args.size_mib << 20)
    rows = []
    for tool in tools(work):
        repo_dir = Path(tool.init[tool.init.index("-r") + 1])
        if not (repo_dir / "config").exists():
            shutil.rmtree(repo_dir, ignore_errors=True)
            run(tool.init, tool.env)
            run([*tool.backup, str(corpus)], tool.env)
        list_s, list_mem = measure(tool, corpus, mp, "list")
        read_s, read_mem = measure(tool, corpus, mp, "read")
        rows.append((tool.name, list_s, read_s, args.size_mib / read_s, max(list_mem, read_mem)))
    print(f"\nmount benchmark: list {args.entries} entries (ls -l), read {args.size_mib} MiB "
          f"sequentially; cold page cache, fresh mount each")  # fmt: skip
    print(f"{'tool':<10} {'list s':>8} {'read s':>8} {'read MiB/s':>11} {'peak RSS MiB':>13}")
    for name, list_s, read_s, rate, mem in rows:
        print(f"{name:<10} {list_s:>8.2f} {read_s:>8.2f} {rate:>11.0f} {mem / 1024:>13.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
