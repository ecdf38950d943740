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
