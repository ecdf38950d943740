"""One Ctrl-C stops a backup (in about a second on an idle machine; the tests only require
that it stops, not how fast), wherever its main thread waits.

A real ``casbackup backup`` to a local repository, stopped once at different moments: while
the readers chunk and the walker waits on them, and while the index is written. Each time:
exit 130, one line, the lock released, and the next backup and ``check`` pass. (The
moments that depend on an object store, a pack upload or an index write that hangs, are in
tests/store/test_s3_stop.py.)
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from casbackup.testing.fixtures import run_cli
from tests.cli.conftest import init_repo, popen_cli

# The first batch the readers send is never collected: the walker waits for free slots
# (archiver/reading.py InFlight) for as long as that lasts, far from any safe point.
_READERS_STALL = (
    "import time, casbackup.repo.blobstore as b\n"
    "def stall(self, blobs):\n"
    "    open(MARKER, 'a').close()\n"
    "    time.sleep(3600)\n"
    "b.BlobStore.store_sealed_batch = stall"
)

# The final index write (the snapshot's flush) is where the stop lands.
_INDEX_WRITE = (
    "import os, signal, time, casbackup.repo.blobstore as b\n"
    "save = b.BlobStore.save_file_object\n"
    "def stop_in_it(self, directory, kind, plaintext):\n"
    "    if directory == 'index':\n"
    "        open(MARKER, 'a').close()\n"
    "        os.kill(os.getpid(), signal.SIGINT)\n"
    "        time.sleep(30)\n"
    "    return save(self, directory, kind, plaintext)\n"
    "b.BlobStore.save_file_object = stop_in_it"
)


def _tree(src: Path, files: int) -> None:
    for i in range(files):
        folder = src / f"d{i % 8}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{i}").write_bytes(os.urandom(64 << 10))


@pytest.mark.parametrize(
    ("prelude", "signal_it"),
    [(_READERS_STALL, True), (_INDEX_WRITE, False)],
    ids=["walker-waits-on-readers", "index-write"],
)
def test_one_ctrl_c_stops_a_backup(tmp_path: Path, prelude: str, signal_it: bool) -> None:
    repo = init_repo(str(tmp_path / "repo"))
    src = tmp_path / "src"
    _tree(src, 400)
    marker = tmp_path / "reached"
    code = prelude.replace("MARKER", repr(str(marker)))
    proc = popen_cli("-q", "backup", str(src), repo=repo, prelude=code)
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists(), proc.communicate(timeout=60)
    if signal_it:
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
    try:
        # A hang guard, not a time limit (a loaded 2-core machine took 3.59 s once): what
        # the SIGINT must cut short is an hour's sleep.
        _out, err = proc.communicate(timeout=60)
    except Exception:
        proc.kill()
        proc.communicate()
        raise AssertionError("still running 60 s after one SIGINT") from None
    text = err.decode()
    assert proc.returncode == 130, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "interrupted" in lines[0], text
    assert not list((tmp_path / "repo" / "locks").iterdir())  # the lock released
    res = run_cli("backup", str(src), repo=repo)
    assert res.code == 0, res.err
    res = run_cli("check", repo=repo)
    assert res.code == 0, res.err


@pytest.mark.parametrize(
    ("signum", "args", "expected"),
    [
        (signal.SIGINT, (), "error: interrupted"),
        # SIGTERM and SIGHUP there were a death by the signal (status -15, -1), no line.
        (signal.SIGTERM, (), "error: interrupted (SIGTERM received)"),
        (signal.SIGHUP, (), "error: interrupted (SIGHUP received)"),
        # --json got the plain line; a script parses stderr as JSON there (README "Exit codes").
        (signal.SIGINT, ("--json",), {"error": "interrupted", "exit_code": 130}),
        (
            signal.SIGTERM,
            ("--json",),
            {"error": "interrupted (SIGTERM received)", "exit_code": 143},
        ),
    ],
    ids=["sigint", "sigterm", "sighup", "sigint-json", "sigterm-json"],
)
def test_one_stop_while_the_command_starts(
    tmp_path: Path, signum: int, args: tuple[str, ...], expected: str | dict[str, object]
) -> None:
    # Found by sending SIGINT 0.1-1.5 s after starting `casbackup snapshots` (and `ls`) on
    # a busy machine: a traceback of the module being imported, and a death by SIGINT
    # (status -2) instead of exit 130 with one line.
    marker = tmp_path / "importing"
    prelude = (
        "import importlib.abc, sys, time\n"
        "class Slow(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'casbackup.cli.context':\n"
        f"            open({str(marker)!r}, 'a').close()\n"
        "            time.sleep(30)\n"
        "        return None\n"
        "sys.meta_path.insert(0, Slow())"
    )
    proc = popen_cli(*args, "snapshots", repo=str(tmp_path / "repo"), prelude=prelude)
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists(), proc.communicate(timeout=60)
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 128 + signum, err
    lines = err.decode().strip().splitlines()
    if isinstance(expected, str):
        assert lines == [expected]
    else:  # the shape main() gives any failure under --json
        assert len(lines) == 1, lines
        assert json.loads(lines[0]) == {**expected, "kind": "interrupted", "message_type": "error"}


# The first application's readers stall once; every later batch is stored as usual.
_STALL_ONCE = (
    "import time, casbackup.repo.blobstore as b\n"
    "store = b.BlobStore.store_sealed_batch\n"
    "def stall(self, blobs):\n"
    "    if not MARKER.exists():\n"
    "        MARKER.touch()\n"
    "        time.sleep(3600)\n"
    "    return store(self, blobs)\n"
    "b.BlobStore.store_sealed_batch = stall"
)


def test_one_ctrl_c_stops_backup_all(tmp_path: Path) -> None:
    # Found with three applications and a Ctrl-C during the first: the stop ended that
    # application's backup as a failure like any other, and --all went on to back up the
    # other two (one 'error:' line each, then '1 of 3 applications failed', exit 130).
    repo = init_repo(str(tmp_path / "repo"))
    config = tmp_path / "casbackup.toml"
    lines = ["version = 1"]
    for name in ("one", "two", "three"):
        _tree(tmp_path / name, 60)
        lines += ["[[applications]]", f'name = "{name}"', f'sources = ["{tmp_path / name}"]']
    config.write_text("\n".join(lines) + "\n")
    marker = tmp_path / "reached"
    prelude = "import pathlib\nMARKER = pathlib.Path(" + repr(str(marker)) + ")\n" + _STALL_ONCE
    proc = popen_cli("-q", "--config", str(config), "backup", "--all", repo=repo, prelude=prelude)
    deadline = time.monotonic() + 60
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists(), proc.communicate(timeout=60)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)  # a hang guard: the stall is an hour's sleep
    assert proc.returncode == 130, err
    assert err.decode().strip().splitlines() == [
        "error: backup interrupted; the chunks stored so far are kept for the next run"
    ]
    assert not list((tmp_path / "repo" / "locks").iterdir())
    res = run_cli("snapshots", "--json", repo=repo)
    assert res.code == 0 and json.loads(res.out) == [], res.out  # no application went on
    res = run_cli("check", repo=repo)
    assert res.code == 0, res.err
