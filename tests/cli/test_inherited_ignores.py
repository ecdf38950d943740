"""A stop signal casbackup inherited as ignored stays ignored; the others still stop it.

``nohup casbackup backup ...`` ignores SIGHUP, and a shell without job control starts
``casbackup backup ... &`` with SIGINT and SIGQUIT ignored. Found by running both for real: the
nohup'd backup ended at the hang-up (exit 129), the ``&`` one at a SIGINT meant for the script
(exit 130), and a ``--stdin`` backup started with ``&`` ignored SIGTERM too (its SIGTERM ran
the ignored SIGINT's "handler"): ``kill`` could not stop it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from casbackup import stopsig
from casbackup.cli.signals import native_stop_signals
from casbackup.testing.fixtures import run_cli
from tests.cli.conftest import CLI, init_repo

# The readers' first batch is never collected: the backup waits, far from a safe point.
_READERS_STALL = (
    "import time, casbackup.repo.blobstore as b\n"
    "def stall(self, blobs):\n"
    "    open(MARKER, 'a').close()\n"
    "    time.sleep(3600)\n"
    "b.BlobStore.store_sealed_batch = stall\n"
    "from casbackup.cli.main import main; main()"
)


def _ignoring(*signums: int):  # noqa: ANN202 (a preexec_fn)
    def preexec() -> None:
        for signum in signums:
            signal.signal(signum, signal.SIG_IGN)

    return preexec


def _ended(proc: subprocess.Popen[bytes]) -> str:
    """stderr once ``proc`` ended; fails (and kills it) if it hangs for a minute."""
    try:
        return proc.communicate(timeout=60)[1].decode()
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("still running 60 s after SIGTERM") from None


@pytest.mark.parametrize(
    "ignored",
    [(signal.SIGHUP,), (signal.SIGINT, signal.SIGQUIT)],
    ids=["nohup", "background-in-sh"],
)
def test_an_ignored_stop_signal_does_not_stop_a_backup(
    tmp_path: Path, ignored: tuple[int, ...]
) -> None:
    repo = init_repo(str(tmp_path / "repo"))
    src = tmp_path / "src"
    src.mkdir()
    for i in range(50):
        (src / f"f{i}").write_bytes(os.urandom(64 << 10))
    marker = tmp_path / "reached"
    code = _READERS_STALL.replace("MARKER", repr(str(marker)))
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "-r", repo, "-q", "backup", str(src)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_ignoring(*ignored),
    )
    deadline = time.monotonic() + 60  # a hang guard, not a time limit
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists(), proc.communicate(timeout=60)
    # Pending signals run in the order of their numbers (SIGHUP, SIGINT before SIGTERM): had
    # the ignored one been taken, it would be the stop reported (129, 130, or "twice").
    proc.send_signal(ignored[0])
    proc.send_signal(signal.SIGTERM)
    err = _ended(proc)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == [
        "error: backup interrupted; the chunks stored so far are kept for the next run "
        "(SIGTERM received)"
    ], err
    assert not list((tmp_path / "repo" / "locks").iterdir())
    assert run_cli("check", repo=repo).code == 0


def test_sigterm_stops_a_stdin_backup_started_with_sigint_ignored(tmp_path: Path) -> None:
    repo = init_repo(str(tmp_path / "repo"))
    proc = subprocess.Popen(
        [*CLI, "-r", repo, "-q", "backup", "--stdin", "--stdin-filename", "dump"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_ignoring(signal.SIGINT, signal.SIGQUIT),
    )
    assert proc.stdin is not None
    # More than a pipe holds: written only once the backup reads, so its handlers are in.
    proc.stdin.write(os.urandom(1 << 20))
    proc.stdin.flush()
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)
    err = _ended(proc)  # the stream stays open: only the SIGTERM can end it
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["error: interrupted (SIGTERM received)"], err
    assert run_cli("check", repo=repo).code == 0


@contextlib.contextmanager
def _inherited_ignored(*signums: int) -> Iterator[None]:
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in signums}
    stopsig.keep_ignored(signums)
    try:
        yield
    finally:
        stopsig.forget_ignored()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_the_stop_handler_is_kept_aside_while_sigint_stays_ignored() -> None:
    def mine(signum: int, frame: object) -> None:
        pass

    with _inherited_ignored(signal.SIGINT):
        previous = stopsig.set_stop_handler(mine)
        assert previous is signal.default_int_handler
        assert stopsig.stop_handler() is mine
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        stopsig.set_stop_handler(previous)
    assert stopsig.set_stop_handler(mine) is signal.default_int_handler  # plain SIGINT again
    assert signal.getsignal(signal.SIGINT) is mine
    signal.signal(signal.SIGINT, signal.default_int_handler)


def test_mount_leaves_an_ignored_sighup_to_libfuse_ignored() -> None:
    # libfuse installs its handlers (which unmount) over default actions only.
    with _inherited_ignored(signal.SIGHUP), native_stop_signals():
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_serve_leaves_ignored_stop_signals_ignored() -> None:
    uvicorn = pytest.importorskip("uvicorn")
    from casbackup.cli.cmd_serve import _server

    server = _server(uvicorn, uvicorn.Config(app=None))
    with _inherited_ignored(signal.SIGINT):
        with server.capture_signals():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            assert signal.getsignal(signal.SIGTERM) == server.handle_exit
            assert stopsig.stop_handler() == server.handle_exit  # what a SIGHUP runs
        assert stopsig.stop_handler() is signal.default_int_handler
