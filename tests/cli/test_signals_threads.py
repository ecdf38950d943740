"""A stop signal reaches the main thread at once, whichever thread the kernel would pick.

The kernel hands a process-directed SIGTERM to any thread that does not block it, and Python
runs handlers only in the main thread: a main thread asleep in a wait is woken only when the
signal lands on it. casbackup's own threads therefore block the stop signals
(casbackup/threadsig.py), while its helper processes must not (a pool's terminate() kills them
with SIGTERM). These tests read each thread's blocked mask from /proc (deterministic), and
stop a check whose main thread sleeps, many times over (the race itself).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casbackup.testing.fixtures import run_cli
from tests.cli.conftest import init_repo, popen_cli

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads thread signal masks from /proc (Linux)"
)

STOP_BITS = {signal.SIGHUP, signal.SIGINT, signal.SIGTERM}
# The main thread sleeps in its first progress report, with all of the command's threads up.
SLEEPY_PRELUDE = (
    "import time, casbackup.cli.render as r\n"
    "r.CliReporter.progress = lambda self, p: time.sleep(30)"
)


def blocked(status_path: str) -> set[int]:
    """The signals blocked by one thread or process, from its /proc status file."""
    with open(status_path) as f:
        for line in f:
            if line.startswith("SigBlk:"):
                mask = int(line.split()[1], 16)
                return {n for n in range(1, 65) if mask >> (n - 1) & 1}
    raise AssertionError(f"no SigBlk in {status_path}")


def threads_of(pid: int) -> dict[int, str]:
    """Thread id -> thread name, for every thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                out[int(tid)] = f.read().strip()
        except FileNotFoundError:
            pass  # the thread ended meanwhile
    return out


def children_of(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            kids.append(int(entry))
    return kids


def wait_for(what, timeout: float = 30) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    while not what():
        assert time.monotonic() - started < timeout, "timed out waiting"
        time.sleep(0.01)


def small_repo(tmp_path: Path, size: int = 4 << 20) -> tuple[str, Path]:
    repo = init_repo(str(tmp_path / "repo"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(os.urandom(size))
    assert run_cli("backup", str(src), repo=repo).code == 0
    return repo, src


def assert_masks(pid: int, *, helpers: int) -> None:
    """Every thread but the main one blocks the stop signals; no helper process does."""
    threads = threads_of(pid)
    assert len(threads) > 1, "the command started no threads: nothing is tested"
    for tid, name in threads.items():
        mask = blocked(f"/proc/{pid}/task/{tid}/status")
        if tid == pid:
            assert not mask & STOP_BITS, "the main thread must take the stop signals"
        else:
            assert STOP_BITS <= mask, f"thread {tid} ({name}) takes stop signals"
    kids = children_of(pid)
    assert len(kids) >= helpers, kids
    for kid in kids:
        # The helper may have ended meanwhile; a live one must be killable by terminate().
        try:
            mask = blocked(f"/proc/{kid}/status")
        except FileNotFoundError:
            continue
        assert signal.SIGTERM not in mask, f"helper process {kid} blocks SIGTERM"


def test_check_read_data_threads_leave_stop_signals_to_the_main_thread(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """check --read-data: lock refresher, walker and the pool's handler threads all block them,
    its pool helpers do not; SIGTERM stops it at once (143) and frees the lock."""
    repo, _src = small_repo(tmp_path)
    proc = popen_cli("check", "--read-data", "--workers", "2", repo=repo, prelude=SLEEPY_PRELUDE)
    try:
        wait_for(
            lambda: os.listdir(os.path.join(repo, "locks")) and len(children_of(proc.pid)) >= 2
        )
        time.sleep(0.3)  # into the sleeping progress report, the pool's threads up
        assert_masks(proc.pid, helpers=2)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 143, err
    assert os.listdir(os.path.join(repo, "locks")) == []


def test_backup_threads_leave_stop_signals_to_the_main_thread(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A backup's lock refresher, uploader and reader receivers block them; its readers do not."""
    repo, src = small_repo(tmp_path)
    (src / "g").write_bytes(os.urandom(4 << 20))
    proc = popen_cli("backup", "--workers", "2", str(src), repo=repo, prelude=SLEEPY_PRELUDE)
    try:
        wait_for(
            lambda: os.listdir(os.path.join(repo, "locks")) and len(children_of(proc.pid)) >= 2
        )
        time.sleep(0.3)
        assert_masks(proc.pid, helpers=2)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_sigterm_stops_a_sleeping_check_every_time(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The race itself: 10 checks, each stopped by SIGTERM while its main thread sleeps 30 s
    and its threads are up; each must exit 143 within 10 s with the lock released."""
    repo, _src = small_repo(tmp_path, size=1 << 20)
    for run in range(10):
        proc = popen_cli(
            "check", "--read-data", "--workers", "2", repo=repo, prelude=SLEEPY_PRELUDE
        )
        try:
            wait_for(
                lambda p=proc: (
                    os.listdir(os.path.join(repo, "locks")) and len(threads_of(p.pid)) > 2
                )
            )
            time.sleep(0.2)
            proc.send_signal(signal.SIGTERM)
            _out, err = proc.communicate(timeout=60)  # a hang guard, not a time limit
        except Exception:
            proc.kill()
            proc.wait()
            raise
        assert proc.returncode == 143, (run, err)
        assert os.listdir(os.path.join(repo, "locks")) == [], run


def test_obstore_runtime_threads_leave_stop_signals_to_the_main_thread() -> None:
    """obstore's tokio threads, started by the first S3 backend, block them too (a request
    to a closed port makes sure the runtime runs)."""
    pytest.importorskip("obstore")
    script = (
        "import os\n"
        "from casbackup.store.s3 import S3Backend\n"
        "b = S3Backend('s3:http://127.0.0.1:9/bucket', timeout_seconds=2)\n"
        "try:\n"
        "    b.exists('config')\n"
        "except Exception:\n"
        "    pass\n"
        "print(os.getpid())\n"
        "input()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        pid = int(proc.stdout.readline())
        names = threads_of(pid)
        assert any(name.startswith("tokio") for name in names.values()), names
        assert_masks(pid, helpers=0)
    finally:
        proc.kill()
        proc.wait()
