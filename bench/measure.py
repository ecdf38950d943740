"""Running one timed step: page cache, /usr/bin/time, repository size, machine facts."""

from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.slowdisk import SlowDisk

TIME_BIN = "/usr/bin/time"
DROP_FAILED_NOTE = "page cache could not be dropped: warm runs"


@dataclass
class Command:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to os.environ
    cwd: Path | None = None


@dataclass
class Measurement:
    ok: bool
    wall_s: float = 0.0  # perf_counter around the process
    user_s: float = 0.0
    sys_s: float = 0.0
    max_rss_kib: int = 0  # /usr/bin/time: the largest single process
    tree_rss_kib: int = 0  # peak of RSS summed over the tool's processes (sampled)
    tree_pss_kib: int = 0  # peak of PSS summed likewise: shared pages counted once
    returncode: int | None = None
    error: str = ""
    cold: bool = False  # the page cache was dropped just before

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["cpu_s"] = round(self.cpu_s, 3)
        return d


def drop_caches() -> bool:
    """sync, then drop page cache, dentries and inodes. False where not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


class TreeMemory:
    """Samples the memory of a process and all its descendants, every ``interval`` s.

    ``/usr/bin/time`` reports the largest single process; a tool with helper processes
    (casbackup's readers) must be charged for all of them. RSS summed over processes
    counts pages they share (forked, copy-on-write) once per process; PSS splits each
    shared page between its sharers, so the PSS sum is the memory the tool really holds.
    """

    def __init__(self, root: int, interval: float = 0.1) -> None:
        self.root = root
        self.interval = interval
        self.peak_rss_kib = 0
        self.peak_pss_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        pids: list[int] = []
        tick = 0
        while not self._stop.is_set():
            if tick % 5 == 0 or not pids:  # listing /proc costs more than reading a few
                pids = _descendants(self.root)
            tick += 1
            rss = pss = 0
            for pid in pids:
                r, p = _rss_pss_kib(pid)
                rss, pss = rss + r, pss + p
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            self.peak_pss_kib = max(self.peak_pss_kib, pss)
            self._stop.wait(self.interval)


def _descendants(root: int) -> list[int]:
    """Every process below ``root`` (not ``root`` itself: that is /usr/bin/time)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _rss_pss_kib(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return rss, pss


def run_timed(
    cmd: Command, log_prefix: Path, timeout: float, cold: bool, slow: SlowDisk | None = None
) -> Measurement:
    """Run ``cmd`` under ``/usr/bin/time``; stdout/stderr go to ``log_prefix``.{out,err}.
    ``slow``: run it (and all it starts) under that read cap (bench/slowdisk.py)."""
    log_prefix.parent.mkdir(parents=True, exist_ok=True)
    tfile = log_prefix.with_suffix(".time")
    out, err = log_prefix.with_suffix(".out"), log_prefix.with_suffix(".err")
    env = {**os.environ, **cmd.env}
    argv = [TIME_BIN, "-f", "%e %U %S %M", "-o", str(tfile), *cmd.argv]
    if cold:
        cold = drop_caches()
    t0 = time.perf_counter()
    try:
        with open(out, "wb") as fo, open(err, "wb") as fe:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, env=env, cwd=cmd.cwd,
                start_new_session=True, preexec_fn=slow.enter if slow is not None else None,
            )  # fmt: skip
            memory = TreeMemory(popen.pid)
            try:
                popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(popen.pid, 9)  # the tool and its helpers, not only /usr/bin/time
                popen.wait()
                raise
            finally:
                memory.stop()
            proc = subprocess.CompletedProcess(argv, popen.returncode)
    except subprocess.TimeoutExpired:
        return Measurement(False, time.perf_counter() - t0, error=f"timeout after {timeout:.0f} s")
    except OSError as e:
        return Measurement(False, error=f"could not start: {e}")
    wall = time.perf_counter() - t0
    m = Measurement(proc.returncode == 0, wall, returncode=proc.returncode, cold=cold)
    m.tree_rss_kib, m.tree_pss_kib = memory.peak_rss_kib, memory.peak_pss_kib
    try:
        fields = tfile.read_text().strip().splitlines()[-1].split()
        m.user_s, m.sys_s, m.max_rss_kib = float(fields[1]), float(fields[2]), int(fields[3])
    except (OSError, IndexError, ValueError):
        m.error = "no /usr/bin/time output; "
    if proc.returncode != 0:
        m.error += f"exit {proc.returncode}: {tail(err)}"
    return m


def run_plain(cmd: Command, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    """An untimed helper command (snapshot listing, setup); output captured as text."""
    return subprocess.run(
        cmd.argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, **cmd.env},
        cwd=cmd.cwd,
        timeout=timeout,
    )


def tail(path: Path, lines: int = 6, chars: int = 800) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])[-chars:]


def dir_size(path: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of every file under ``path``; symlinks not followed."""
    apparent = allocated = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            apparent += st.st_size
            allocated += st.st_blocks * 512
    return apparent, allocated


def machine_info(workdir: Path) -> dict[str, object]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    fs = subprocess.run(
        ["df", "--output=fstype,source", str(workdir)], capture_output=True, text=True
    ).stdout.split()
    return {
        "nproc": os.cpu_count(),
        "memory_bytes": mem,
        "cpu_model": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "workdir_fs": " ".join(fs[-2:]) if len(fs) >= 2 else "unknown",
    }
