"""A helper process ends on SIGTERM whatever handler its parent had.

The service's job worker handles SIGTERM (a stop from systemd becomes a cancel); helpers
forked from it inherited that handler, and a check helper waiting on the pool's queue lock
(which Pool.terminate() holds) outlived terminate()'s SIGTERM: terminate() then waited for
it for ever, and the check job stayed at "read data 1/2 packs" (seen 3 times in one day of
parallel test runs; 2 in 3 runs of 40 check jobs through a real service env)."""

from __future__ import annotations

import os
import subprocess
import sys

SCRIPT = r"""
import os, signal, sys, time
from casbackup import procs

def handler(signum, frame):  # what the service worker does: no exit
    pass

signal.signal(signal.SIGTERM, handler)

def start(parent):
    procs.become_helper(parent)

def disposition(_):
    return signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

with procs.context().Pool(2, start, (os.getpid(),)) as pool:
    print(all(pool.map(disposition, range(4))))
    pool.close()
    pool.join()
"""


def test_helpers_take_the_default_sigterm_action() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True", (proc.stdout, proc.stderr)


HOLDER = r"""
import multiprocessing, os, signal, sys, threading, time
from casbackup import procs

MARKER = sys.argv[1]

def start(parent):
    procs.become_helper(parent)

def hold_result_lock(_):
    # What a helper does for a moment with every verdict it sends back (SimpleQueue.put).
    with multiprocessing.current_process()._args[1]._wlock:
        open(MARKER, "w").write(str(os.getpid()))
        time.sleep(0.5)
    return True

pool = procs.context().Pool(2, start, (os.getpid(),))
pool.apply_async(hold_result_lock, (0,))
while not os.path.exists(MARKER) or not open(MARKER).read():
    time.sleep(0.01)
os.kill(int(open(MARKER).read()), signal.SIGTERM)  # Pool.terminate()'s SIGTERM, in that moment
ender = threading.Thread(target=lambda: (pool.terminate(), pool.join()), daemon=True)
ender.start()
ender.join(20)
print("ended" if not ender.is_alive() else "terminate() hangs")
"""


def test_a_helper_never_dies_holding_the_result_lock(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Found by stopping 'check --read-data' with SIGTERM 0-100 ms after it took its lock,
    # 467 times on a machine at load 9: once it never exited. terminate() had killed a
    # helper while it sent a verdict, holding the result queue's lock; the pool's task
    # handler then waited for that lock for ever, and terminate() for the task handler.
    proc = subprocess.run([sys.executable, "-c", HOLDER, str(tmp_path / "pid")], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ))  # fmt: skip
    assert proc.stdout.strip() == "ended", (proc.stdout, proc.stderr)
