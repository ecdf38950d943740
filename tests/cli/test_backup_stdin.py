"""``backup --stdin`` and ``--stdin-from-command`` (restic's options of the same names).

What users pipe in is mostly a dump (``pg_dumpall``, ``redis-cli --rdb -``, ``etcdctl snapshot``)
that changes a little each night: the next night's stream is stored against the last one's
(deltas where the repository allows them), and a command that fails half-way leaves no
snapshot at all, where ``tool | casbackup backup --stdin`` could not know.
"""

from __future__ import annotations

import json
import os
import pty
import random
import subprocess
import sys
from pathlib import Path

from casbackup.testing.fixtures import PASSWORD, run_cli
from tests.cli.conftest import assert_one_error


def _snapshots(repo: str) -> list[dict[str, object]]:
    res = run_cli("--json", "snapshots", repo=repo)
    assert res.code == 0, res.err
    return json.loads(res.out)


def _night(seed: int, base: bytes | None = None) -> bytes:
    """~2 MB of dump-like text; with ``base``, the same with 1% of its lines changed."""
    rng = random.Random(seed)
    if base is None:
        return b"".join(b"INSERT INTO t VALUES (%d, '%032x');\n" % (i, rng.getrandbits(128))
                        for i in range(40_000))  # fmt: skip
    lines = base.splitlines(keepends=True)
    for i in rng.sample(range(len(lines)), len(lines) // 100):
        lines[i] = b"INSERT INTO t VALUES (%d, 'changed %024x');\n" % (i, rng.getrandbits(96))
    return b"".join(lines)


def test_nights_of_a_piped_dump_cost_what_changed(cli_repo: str, tmp_path: Path) -> None:
    first = _night(1)
    res = run_cli("--json", "backup", "--stdin", "--stdin-filename", "all.sql", repo=cli_repo, input=first)  # fmt: skip
    assert res.code == 0, res.err
    one = json.loads(res.out.splitlines()[-1])
    second = _night(2, first)
    res = run_cli("--json", "backup", "--stdin", "--stdin-filename", "all.sql", repo=cli_repo, input=second)  # fmt: skip
    assert res.code == 0, res.err
    two = json.loads(res.out.splitlines()[-1])
    assert two["parent"] == one["snapshot_id"] and two["type"] == "incremental"
    assert two["files_changed"] == 1 and two["bytes_total"] == len(second)
    assert two["bytes_stored"] < one["bytes_stored"] / 3, (one["bytes_stored"], two["bytes_stored"])
    dumped = run_cli("dump", f"{two['snapshot_id']}:/all.sql", repo=cli_repo)
    assert dumped.code == 0 and dumped.out.encode() == second
    assert run_cli("dump", f"{one['snapshot_id']}:/all.sql", repo=cli_repo).out.encode() == first
    check = run_cli("check", "--read-data", repo=cli_repo)
    assert check.code == 0, check.err
    # Another name is another group: its own first snapshot, no parent.
    res = run_cli("--json", "backup", "--stdin", repo=cli_repo, input=b"other\n")
    assert json.loads(res.out.splitlines()[-1])["parent"] is None
    assert {tuple(s["paths"]) for s in _snapshots(cli_repo)} == {("/all.sql",), ("/stdin",)}


def test_a_command_is_kept_only_when_it_succeeds(cli_repo: str, tmp_path: Path) -> None:
    data = tmp_path / "dump.bin"
    data.write_bytes(os.urandom(300_000))
    res = run_cli("backup", "--stdin-from-command", "--stdin-filename", "d.bin", "--", "cat", str(data), repo=cli_repo)  # fmt: skip
    assert res.code == 0, res.err
    assert run_cli("dump", "latest:/d.bin", repo=cli_repo).code == 0
    # Half a dump, then a failure: exit 27 naming the command's own last words, no snapshot.
    script = "head -c 100000 /dev/urandom; echo 'pg_dump: error: connection lost' >&2; exit 1"
    res = run_cli("backup", "--stdin-from-command", "--", "sh", "-c", script, repo=cli_repo)
    assert_one_error(res, 27, "sh exited 1", "connection lost", "no snapshot")
    # Killed by a signal; a tool that writes more to stderr than a pipe holds (no hang).
    res = run_cli("backup", "--stdin-from-command", "--", "sh", "-c", "kill -9 $$", repo=cli_repo)
    assert_one_error(res, 27, "killed by signal 9")
    flood = "head -c 300000 /dev/zero | tr '\\0' x >&2; echo done"
    res = run_cli(
        "backup", "--stdin-from-command", "--", "sh", "-c", flood, repo=cli_repo, timeout=60
    )
    assert res.code == 0, res.err
    res = run_cli("backup", "--stdin-from-command", "--", str(tmp_path / "missing"), repo=cli_repo)
    assert_one_error(res, 27, "cannot run")
    assert len(_snapshots(cli_repo)) == 2
    assert run_cli("check", repo=cli_repo).code == 0


def test_what_a_stream_backup_refuses(cli_repo: str) -> None:
    cases = [
        (("--stdin", "--stdin-filename", "a/b"), "file name"),
        (("--stdin", "--stdin-filename", ".."), "file name"),
        (("--stdin", "/etc"), "give no PATHS"),
        (("--stdin", "--app", "x"), "--app"),
        (("--stdin", "--stdin-from-command", "--", "true"), "not both"),
        (("--stdin-from-command",), "command"),
    ]
    for args, fragment in cases:
        assert_one_error(run_cli("backup", *args, repo=cli_repo, input=b"x"), 2, fragment)
    res = run_cli("backup", "--stdin", "--dry-run", repo=cli_repo, input=b"data")
    assert res.code == 0 and "nothing was stored" in res.out
    assert _snapshots(cli_repo) == []
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "casbackup.cli.main", "-r", cli_repo, "backup", "--stdin"],
            stdin=follower, capture_output=True, env={**os.environ, "CASBACKUP_PASSWORD": PASSWORD},
            timeout=60,
        )  # fmt: skip
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 2 and b"terminal" in proc.stderr


def _kill_pid_in(path: Path) -> None:
    """Kill the background helper whose pid a test's command wrote to ``path``."""
    import signal

    try:
        os.kill(int(path.read_text()), signal.SIGKILL)
    except (OSError, ValueError):
        pass


def test_a_stop_does_not_wait_for_what_the_command_left_running(
    cli_repo: str, tmp_path: Path
) -> None:
    """SIGTERM while the command is silent: the backup stops at once, though a program the
    command started holds its pipes open (the ``sleep`` here; before, the stop waited for
    it to end: a stuck ``pg_dump`` wrapper kept the backup and its lock for as long)."""
    import signal
    import time

    started, helper = tmp_path / "started", tmp_path / "helper.pid"
    script = f"echo part; sleep 600 & echo $! > {helper}; : > {started}; wait"
    proc = subprocess.Popen(
        [sys.executable, "-m", "casbackup.cli.main", "-r", cli_repo, "backup",
         "--stdin-from-command", "--stdin-filename", "s.bin", "--", "sh", "-c", script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "CASBACKUP_PASSWORD": PASSWORD},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120  # a hang guard, not a timing: the start is waited for
        while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert started.exists(), proc.communicate()
        time.sleep(0.5)  # the backup reads the part and waits for more
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)  # far below the helper's 600 s
    finally:
        proc.kill()
        _kill_pid_in(helper)
    assert proc.returncode == 143, err
    assert err.decode().strip().splitlines() == ["error: interrupted (SIGTERM received)"]
    assert _snapshots(cli_repo) == []


def test_a_command_that_leaves_a_helper_running_is_saved_when_it_exits(
    cli_repo: str, tmp_path: Path
) -> None:
    """The command wrote its stream and exited 0; a program it left in the background holds
    its standard error: the backup is saved when the command exits, not when the helper
    does (before: a 600 s wait)."""
    helper = tmp_path / "helper.pid"
    data = tmp_path / "dump.bin"
    data.write_bytes(os.urandom(100_000))
    script = f"cat {data}; sleep 600 > /dev/null & echo $! > {helper}"
    try:
        res = run_cli("backup", "--stdin-from-command", "--stdin-filename", "d.bin", "--", "sh",
                      "-c", script, repo=cli_repo, timeout=120)  # fmt: skip
    finally:
        _kill_pid_in(helper)
    assert res.code == 0, res.err
    assert len(_snapshots(cli_repo)) == 1
