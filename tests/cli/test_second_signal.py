"""A second stop signal during a backup exits at once with 128 + that signal's number."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.cli.conftest import init_repo, popen_cli


def _slow_backup_prelude(marker: Path, handled: Path) -> str:
    """Python run before the CLI: the backup's first progress report marks that the pipeline
    (and its deferred stop handler) is running, then sleeps so the signals land mid-backup.
    Every signal handler installed marks ``handled`` once it has run: the second signal is
    sent only then (sent earlier, two of one kind may merge into one)."""
    return (
        "import signal, time, casbackup.cli.render as r\n"
        "def slow(self, p):\n"
        f"    open({str(marker)!r}, 'a').close()\n"
        "    time.sleep(30)\n"
        "r.CliReporter.progress = slow\n"
        "_install = signal.signal\n"
        "def install(signum, handler):\n"
        "    if not callable(handler):\n"
        "        return _install(signum, handler)\n"
        "    def noted(n, frame):\n"
        "        handler(n, frame)\n"
        f"        open({str(handled)!r}, 'a').close()\n"
        "    return _install(signum, noted)\n"
        "signal.signal = install"
    )


@pytest.mark.parametrize(
    ("first", "second", "code"),
    [
        (signal.SIGTERM, signal.SIGTERM, 143),
        (signal.SIGINT, signal.SIGINT, 130),
        (signal.SIGHUP, signal.SIGHUP, 129),
        (signal.SIGINT, signal.SIGTERM, 143),
    ],
    ids=["SIGTERM-twice", "SIGINT-twice", "SIGHUP-twice", "SIGINT-then-SIGTERM"],
)
def test_second_signal_exits_with_its_own_number(
    tmp_path: Path, first: int, second: int, code: int
) -> None:
    repo = init_repo(str(tmp_path / "repo"))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20):
        (src / f"f{i}").write_bytes(os.urandom(4096))
    marker, handled = tmp_path / "started", tmp_path / "handled"
    prelude = _slow_backup_prelude(marker, handled)
    proc = popen_cli("-q", "backup", str(src), repo=repo, prelude=prelude)
    started = time.monotonic()
    while not marker.exists() and proc.poll() is None and time.monotonic() - started < 60:
        time.sleep(0.01)
    assert marker.exists(), proc.communicate(timeout=60)
    proc.send_signal(first)
    # The first one is handled (the cancel flag set) before the second comes (not a fixed
    # 0.5 s wait: a loaded machine may not have run the handler by then).
    while not handled.exists() and proc.poll() is None and time.monotonic() - started < 120:
        time.sleep(0.01)
    assert handled.exists() and proc.poll() is None
    proc.send_signal(second)
    _out, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == code, text
    assert "Traceback" not in text
    lines = text.strip().splitlines()
    assert lines == [
        f"error: interrupted twice ({signal.Signals(second).name} received); stopped at once"
    ]
