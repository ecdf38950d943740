"""The command notifier against hostile commands: floods of output, processes left behind,
hangs, deaths by signal, stdin never read. Each is at most a warning, in bounded memory and
bounded time, and leaves nothing of its own running after a timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from casbackup.config.model import NotifierConfig
from casbackup.notify import Event, dispatch
from casbackup.testing.fixtures import run_cli


def _cmd(script: str, timeout: int = 10) -> NotifierConfig:
    return NotifierConfig(type="command", command=f"sh -c '{script}'", timeout=timeout)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead too (reaped by init later).
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def test_a_flood_of_output_costs_no_memory() -> None:
    # 300 MB on stdout and on stderr: it used to be kept whole in memory (1.7 GB RSS for 800 MB).
    code = (
        "import resource, sys\n"
        "from casbackup.config.model import NotifierConfig\n"
        "from casbackup.notify import Event, dispatch\n"
        "cfg = NotifierConfig(type='command', timeout=120, command=\"sh -c '"
        "head -c 300000000 /dev/zero; head -c 300000000 /dev/zero >&2; "
        "echo >&2; echo final words >&2; exit 4'\")\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(dispatch((cfg,), Event('success', 'a'), offline_mode=True))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    ).stdout.splitlines()
    assert "exited with 4: final words" in out[0], out
    assert int(out[1]) < 50_000, out  # KiB


def test_a_process_left_behind_does_not_make_a_success_a_timeout(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    # Held by the child's stderr, it would wait for the whole timeout: 300 s, far beyond a
    # hang guard that a loaded machine never reaches (a tight limit is no test of ours).
    cfg = _cmd(f"sleep 600 & echo $! > {pid_file}; exit 0", timeout=300)
    start = time.monotonic()
    assert dispatch((cfg,), Event("success", "a"), offline_mode=True) == []
    assert time.monotonic() - start < 60  # a hang guard
    os.kill(int(pid_file.read_text()), 9)


def test_a_hang_is_killed_with_every_process_it_started(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    cfg = _cmd(f"sleep 600 & echo $! > {pid_file}; sleep 600", timeout=1)
    start = time.monotonic()
    (warning,) = dispatch((cfg,), Event("success", "a"), offline_mode=True)
    assert time.monotonic() - start < 60  # a hang guard: unkilled, it would take 600 s
    assert warning.endswith("sh did not finish within 1 s: stopped"), warning
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 60  # a hang guard
    while _alive(child):
        assert time.monotonic() < deadline, "the hook's child is still running"
        time.sleep(0.05)


def test_death_by_signal_is_named() -> None:
    (warning,) = dispatch((_cmd("kill -9 $$"),), Event("success", "a"), offline_mode=True)
    assert warning.endswith("sh was killed by signal SIGKILL"), warning


def test_stdin_never_read_does_not_block() -> None:
    # An event carrying 20 long warnings is larger than a pipe's buffer.
    event = Event("warning", "a", warnings=tuple("x" * 8000 for _ in range(20)))
    start = time.monotonic()
    assert dispatch((_cmd("exit 0", timeout=300),), event, offline_mode=True) == []
    assert time.monotonic() - start < 60  # a hang guard: blocked, it would take 300 s


def test_missing_and_not_executable_commands_are_warnings(tmp_path: Path) -> None:
    script = tmp_path / "hook.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    missing = NotifierConfig(type="command", command=str(tmp_path / "nope"))
    not_exec = NotifierConfig(type="command", command=str(script))
    w1, w2 = dispatch((missing, not_exec), Event("success", "a"), offline_mode=True)
    assert "No such file or directory" in w1 and "Permission denied" in w2


def test_cli_says_a_notifier_failed_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("x")
    cfg = tmp_path / "casbackup.toml"
    cfg.write_text(
        f'[repository]\nlocation = "{tmp_path / "repo"}"\n'
        f'[[applications]]\nname = "a"\nsources = ["{data}"]\n'
        '[[applications.notify]]\ntype = "command"\ncommand = "sh -c \'echo oops >&2; exit 3\'"\n'
    )
    assert run_cli("--config", str(cfg), "init", "--insecure-test-kdf").code == 0
    res = run_cli("--config", str(cfg), "backup", "--app", "a")
    assert res.code == 0, res
    lines = [line for line in res.err.splitlines() if "notifier" in line]
    assert lines == [
        "warning: notifier command(sh) failed for event success: sh exited with 3: oops"
    ], res.err
