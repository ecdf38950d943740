"""Running one timed step: page cache, /usr/bin/time, repository size, machine facts."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

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
    max_rss_kib: int = 0
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


def run_timed(cmd: Command, log_prefix: Path, timeout: float, cold: bool) -> Measurement:
    """Run ``cmd`` under ``/usr/bin/time``; stdout/stderr go to ``log_prefix``.{out,err}."""
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
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fo,
                stderr=fe,
                env=env,
                cwd=cmd.cwd,
                timeout=timeout,
            )
    except subprocess.TimeoutExpired:
        return Measurement(False, time.perf_counter() - t0, error=f"timeout after {timeout:.0f} s")
    except OSError as e:
        return Measurement(False, error=f"could not start: {e}")
    wall = time.perf_counter() - t0
    m = Measurement(proc.returncode == 0, wall, returncode=proc.returncode, cold=cold)
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
