"""Run a command per event: the event as JSON on stdin and as CASBACKUP_EVENT_* variables.

The command is the user's, but what it does must not cost the backup more than a warning:
its output is read and dropped as it comes (only the last 4 KiB of stderr are kept, for the
warning), so a flood of output costs no memory; stdin is a file, so a command that never
reads it cannot block us; it runs in a session of its own, so a timeout kills it with every
process it started; and a process it leaves running after it exits is not waited for.
"""

from __future__ import annotations

import json
import os
import selectors
import shlex
import signal
import subprocess
import tempfile
import time

from casbackup.config.model import NotifierConfig
from casbackup.notify import Event, NotifierFailed

TAIL_BYTES = 4096  # of stderr, for the warning's last line
_READ = 1 << 16
_DRAIN_AFTER_EXIT = 64  # reads (4 MiB) of what an exited command's pipe still holds, at most


class CommandNotifier:
    """Runs ``command`` split into words as a shell would, never by a shell; a non-zero
    exit, a death by signal or a timeout is a failure (``NotifierFailed``: logged, never
    failing the backup)."""

    uses_network = False  # what the command does is the user's own choice

    def __init__(self, config: NotifierConfig) -> None:
        self.config = config

    def send(self, event: Event) -> None:
        """Run the command for ``event`` and wait at most ``config.timeout`` seconds. Raises
        NotifierFailed (one line: exit status or signal, and stderr's last line), or OSError
        when the command cannot be started (missing, not executable)."""
        argv = shlex.split(self.config.command)
        env = dict(os.environ)
        # Our own secrets are not the command's business.
        for key in [k for k in env if k.startswith("CASBACKUP_")]:
            del env[key]
        env.update(
            CASBACKUP_EVENT=event.kind,
            CASBACKUP_EVENT_APP=event.app,
            CASBACKUP_EVENT_SNAPSHOT=event.snapshot or "",
            CASBACKUP_EVENT_MESSAGE=event.message,
        )
        with tempfile.TemporaryFile() as stdin:
            stdin.write(json.dumps(event.as_json(), sort_keys=True).encode())
            stdin.flush()
            stdin.seek(0)
            proc = subprocess.Popen(
                argv,
                stdin=stdin,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,  # its own process group: a timeout stops them all
            )
        assert proc.stderr is not None
        try:
            tail, finished = _watch(proc, self.config.timeout)
        finally:
            if proc.returncode is None:  # timed out, or we were interrupted
                _kill_group(proc)
            proc.stderr.close()
        if not finished:
            raise NotifierFailed(
                f"{argv[0]} did not finish within {self.config.timeout} s: stopped"
            )
        last = tail.decode(errors="replace").strip().splitlines()[-1:]
        said = f": {last[0][:200]}" if last else ""  # a line, not a screenful
        if proc.returncode < 0:
            name = signal.Signals(-proc.returncode).name
            raise NotifierFailed(f"{argv[0]} was killed by signal {name}{said}")
        if proc.returncode != 0:
            raise NotifierFailed(f"{argv[0]} exited with {proc.returncode}{said}")


def _watch(proc: subprocess.Popen[bytes], timeout: float) -> tuple[bytes, bool]:
    """Read ``proc``'s stderr until it exits or ``timeout`` seconds pass, keeping the last
    ``TAIL_BYTES``. Returns (that tail, whether it exited in time)."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    deadline = time.monotonic() + timeout
    tail = b""
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        reading = True
        while proc.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                return tail, False
            if not reading:  # every writer closed it: only the exit is left to wait for
                try:
                    proc.wait(timeout=left)
                except subprocess.TimeoutExpired:
                    return tail, False
                break
            if sel.select(min(left, 0.2)):
                chunk = os.read(fd, _READ)
                if chunk:
                    tail = (tail + chunk)[-TAIL_BYTES:]
                else:
                    reading = False
        # It exited: what it wrote is in the pipe already, but a process it left running
        # may hold the pipe open for good, so only what can be read without waiting.
        for _ in range(_DRAIN_AFTER_EXIT if reading else 0):
            if not sel.select(0):
                break
            chunk = os.read(fd, _READ)
            if not chunk:
                break
            tail = (tail + chunk)[-TAIL_BYTES:]
    return tail, True


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's process group (it leads its own session) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()
