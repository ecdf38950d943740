"""A lock whose owner is gone does not stay in ``locks/`` until someone runs `casbackup
unlock`: the next exclusive-lock command removes it with a one-line note. Found by a
newcomer: a SIGKILLed backup's lock stayed forever (ignored, but never removed).

A live lock is never removed, and a lock of another host counts as stale only when it has
not been refreshed for STALE_AFTER seconds (its pid means nothing here)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casbackup.errors import LockError
from casbackup.repo.ids import Kind
from casbackup.repo.lock import STALE_AFTER, list_locks
from casbackup.testing.fixtures import make_repo, open_repo, run_cli

_HOLD = """
import sys, time
from casbackup.testing.fixtures import open_repo
repo = open_repo(sys.argv[1])
repo.lock(command="casbackup backup")
print("locked", flush=True)
time.sleep(600)
"""


def _locks(path: Path) -> list[str]:
    return sorted(os.listdir(path / "locks")) if (path / "locks").is_dir() else []


def _killed_lock(path: Path) -> int:
    """A shared lock of a process on this host that was then killed with SIGKILL."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"locked\n", proc.stderr.read() if proc.stderr else ""
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(_locks(path)) == 1  # SIGKILL gave it no chance to remove its lock
    return proc.pid


def test_a_sigkilled_backups_lock_is_removed_by_the_next_exclusive_command(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "repo"
    make_repo(str(path)).close()
    pid = _killed_lock(path)

    shared = run_cli("snapshots", repo=str(path))  # a shared lock ignores it, and leaves it
    assert shared.code == 0, shared.err
    assert len(_locks(path)) == 1

    res = run_cli("forget", "--keep-last", "1", repo=str(path))
    assert res.code == 0, res.err
    notes = [line for line in res.err.splitlines() if "stale lock" in line]
    assert len(notes) == 1, res.err
    assert notes[0].startswith("warning: removed a stale lock: ") and f"pid {pid}" in notes[0]
    assert _locks(path) == []


def _foreign_lock(repo, *, age: float, pid: int = 1) -> str:  # type: ignore[no-untyped-def]
    doc = {
        "host": "another-host.invalid", "pid": pid, "user": "someone",
        "time": time.time() - age, "exclusive": False, "command": "casbackup backup",
    }  # fmt: skip
    name = f"locks/{os.urandom(16).hex()}"
    repo.put_encrypted(name, Kind.LOCK, json.dumps(doc).encode(), create_only=True)
    return name


def test_another_hosts_lock_not_refreshed_for_the_stale_limit_is_removed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo(str(tmp_path / "repo"))
    _foreign_lock(repo, age=STALE_AFTER + 60)
    held = repo.lock(exclusive=True, command="prune")
    assert [i.name for i in list_locks(repo)] == [held.name]
    assert len(held.removed) == 1 and "someone@another-host.invalid" in held.removed[0]
    held.release()
    assert list_locks(repo) == []
    repo.close()


def test_a_live_lock_is_kept_and_still_excludes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo(str(tmp_path / "repo"))
    # Another host's recent lock: its pid (dead or not here) proves nothing.
    name = _foreign_lock(repo, age=60, pid=2**22 + 12345)
    own = repo.lock(command="casbackup backup")  # this process's, alive
    other = open_repo(str(tmp_path / "repo"))
    with pytest.raises(LockError):
        other.lock(exclusive=True, command="prune")
    assert {i.name for i in list_locks(repo)} == {name, own.name}
    own.release()
    other.close()
    repo.close()


def test_a_shared_lock_leaves_stale_locks_alone(tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo = make_repo(str(tmp_path / "repo"))
    name = _foreign_lock(repo, age=STALE_AFTER + 60)
    with repo.locked(command="backup"):
        assert name in {i.name for i in list_locks(repo)}
    assert [i.name for i in list_locks(repo)] == [name]
    repo.close()


def _local_lock(repo, *, pid: int, extra: dict[str, object], exclusive: bool = True) -> str:  # type: ignore[no-untyped-def]
    """A recent lock of this host, as process ``pid`` wrote it, with ``extra`` fields
    (boot, pidns, start: none of them from versions before these fields)."""
    import socket

    doc: dict[str, object] = {
        "host": socket.gethostname(), "pid": pid, "user": "root", "time": time.time() - 5,
        "exclusive": exclusive, "command": "casbackup prune", **extra,
    }  # fmt: skip
    name = f"locks/{os.urandom(16).hex()}"
    repo.put_encrypted(name, Kind.LOCK, json.dumps(doc).encode(), create_only=True)
    return name


def test_a_lock_left_by_an_earlier_process_with_this_pid_is_stale(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A prune killed outright in a container, run again: the new process often gets the
    same pid (the entrypoint's), and the killed one's lock, 'held by a live pid', refused
    every backup and prune for 30 minutes ('repository is locked: exclusive lock by ...
    pid N'). Also for locks of versions before the process fields (pid alone)."""
    from casbackup import liveness

    me = liveness.this_process()
    earlier = {"boot": me.boot, "pidns": me.pidns, "start": (me.start or 0) + 1}
    repo = make_repo(str(tmp_path / "repo"))
    for extra in (earlier, {}):
        name = _local_lock(repo, pid=os.getpid(), extra=extra)
        with repo.locked(command="backup"):  # a shared lock ignores it
            pass
        held = repo.lock(exclusive=True, command="prune")  # an exclusive one removes it
        assert [i.name for i in list_locks(repo)] == [held.name]
        assert len(held.removed) == 1 and f"pid {os.getpid()}" in held.removed[0]
        held.release()
        assert name not in {i.name for i in list_locks(repo)}
    repo.close()


@pytest.mark.skipif(not os.path.exists("/proc/1/stat"), reason="no /proc: start times unknown")
def test_a_lock_is_judged_by_which_process_had_its_pid(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """pid 1 exists. As the lock's pid it is stale when pid 1 started at another time, or
    the lock is from another boot; live (it excludes) when it is pid 1's own; and a lock of
    another pid namespace (a container with the same host name) is judged by its age
    only, even when that pid does not exist here."""
    from casbackup import liveness

    me = liveness.this_process()
    real = liveness.start_ticks(1)
    if real is None or me.boot is None or me.pidns is None:
        pytest.skip("process identities cannot be read here")
    repo = make_repo(str(tmp_path / "repo"))
    for stale in ({"boot": me.boot, "pidns": me.pidns, "start": real + 1},
                  {"boot": "another-boot", "pidns": me.pidns, "start": real}):  # fmt: skip
        _local_lock(repo, pid=1, extra=stale)
        held = repo.lock(exclusive=True, command="prune")
        assert len(held.removed) == 1
        held.release()
    for live in ({"boot": me.boot, "pidns": me.pidns, "start": real},
                 {"boot": me.boot, "pidns": "pid:[1]", "start": 5},
                 {"boot": me.boot, "pidns": "pid:[1]"}):  # fmt: skip
        pid = 1 if live["pidns"] == me.pidns else 2**22 + 12345  # no such pid here
        name = _local_lock(repo, pid=pid, extra=live)
        with pytest.raises(LockError, match=f"pid {pid}"):
            repo.lock(exclusive=True, command="prune")
        assert name in {i.name for i in list_locks(repo)}
        repo.backend.delete(name)
    repo.close()
