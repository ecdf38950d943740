"""A backup paused (SIGSTOP: a laptop asleep, a VM suspended) past the stale limit while
another client runs forget + prune, on a local folder and on S3 (moto). The prune takes the
paused backup's lock for stale, removes it and deletes the packs of the forgotten
snapshot, which the backup had deduplicated against. Before, the backup then committed a
snapshot naming those deleted blobs ('check': 1 damaged file); now it stops with one line
and exit 11, commits nothing, and the repository checks clean.

Both CLI processes run with a 2-second stale limit (the real one is 30 minutes); the backup
stops itself right before it commits, so the pause lands at the worst moment every time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from casbackup.testing.fixtures import PASSWORD

_CLI = """
import os, signal, sys
from casbackup.repo import lock
from casbackup.repo.snapshotstore import SnapshotStore
lock.STALE_AFTER = 2.0
if os.environ.get("CLOCK_BEHIND"):  # this client's clock runs behind the others'
    import time, types
    behind = float(os.environ["CLOCK_BEHIND"])
    lock.time = types.SimpleNamespace(
        time=lambda: time.time() - behind, monotonic=time.monotonic
    )
if os.environ.get("PAUSE_BEFORE_COMMIT"):
    save = SnapshotStore.save_snapshot
    def paused(self, snap):
        os.kill(os.getpid(), signal.SIGSTOP)
        return save(self, snap)
    SnapshotStore.save_snapshot = paused
if os.environ.get("PAUSE_BEFORE_PRUNING"):  # prune: its plan made, nothing deleted yet
    from casbackup.cli import cmd_prune
    execute = cmd_prune.execute_prune
    def paused_prune(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGSTOP)
        return execute(*args, **kwargs)
    cmd_prune.execute_prune = paused_prune
if os.environ.get("PAUSE_BEFORE_READING"):  # check --read-data: its plan made, no pack read
    from casbackup.verify.check import Checker
    read = Checker._read_packs
    def paused_read(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGSTOP)
        return read(self, *args, **kwargs)
    Checker._read_packs = paused_read
from casbackup.cli.main import main
sys.argv[0] = "casbackup"
main()
"""


def _cli(repo: str, *args: str, pause: bool = False, behind: float = 0) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CASBACKUP_PASSWORD": PASSWORD}
    env.pop("PAUSE_BEFORE_COMMIT", None)
    env.pop("CLOCK_BEHIND", None)
    env.pop("PAUSE_BEFORE_READING", None)
    env.pop("PAUSE_BEFORE_PRUNING", None)
    if pause:
        where = {"check": "READING", "prune": "PRUNING"}.get(args[0], "COMMIT")
        env[f"PAUSE_BEFORE_{where}"] = "1"
    if behind:
        env["CLOCK_BEHIND"] = str(behind)
    return subprocess.Popen(
        [sys.executable, "-c", _CLI, "-r", repo, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip


def _ok(repo: str, *args: str) -> str:
    proc = _cli(repo, *args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, (args, err.decode())
    return out.decode()


def _wait_stopped(pid: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
        if state in (b"T", b"t"):
            return
        if state == b"Z":
            raise AssertionError("the backup ended before its pause")
        time.sleep(0.05)
    raise AssertionError("the backup never paused")


@pytest.fixture(params=["local", "s3"])
def location(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "repo")
    return str(request.getfixturevalue("moto_location"))


@pytest.mark.slow
def test_a_backup_paused_past_the_stale_limit_while_prune_runs_commits_nothing(
    location: str, tmp_path: Path
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept.bin").write_bytes(os.urandom(300_000))
    _ok(location, "init", "--pack-size", "4")
    first = json.loads(_ok(location, "--json", "backup", str(src)).splitlines()[-1])
    (src / "new.bin").write_bytes(os.urandom(100_000))
    backup = _cli(location, "backup", str(src), pause=True)
    try:
        _wait_stopped(backup.pid)  # kept.bin deduplicated against the first snapshot
        time.sleep(2.5)  # past the stale limit: its lock looks stale
        pruned = _cli(location, "forget", first["snapshot_id"], "--prune")
        out, err = pruned.communicate(timeout=120)
        assert pruned.returncode == 0, err.decode()
        assert "removed a stale lock" in err.decode()
    finally:
        backup.send_signal(signal.SIGCONT)
    out, err = backup.communicate(timeout=120)
    lines = err.decode().strip().splitlines()
    assert backup.returncode == 11, err.decode()
    assert len(lines) == 1 and lines[0].startswith("error: this process's repository lock was")
    assert "nothing more was committed" in lines[0]
    assert json.loads(_ok(location, "--json", "snapshots")) == []
    _ok(location, "check", "--read-data")
    # The next run goes on: it stores again what the prune removed.
    second = json.loads(_ok(location, "--json", "backup", str(src)).splitlines()[-1])
    _ok(location, "check", "--read-data")
    target = tmp_path / "restored"
    _ok(location, "restore", second["snapshot_id"], "--target", str(target))
    assert (target / src.relative_to("/") / "kept.bin").read_bytes() == (
        src / "kept.bin"
    ).read_bytes()


@pytest.mark.slow
def test_a_backup_whose_clock_runs_behind_commits_nothing_after_a_prune(tmp_path: Path) -> None:
    """Its lock looks older than the stale limit to the others from the start: a prune
    removes it at once. The backup (stopped before it commits, so that the prune surely
    lands inside it) then refuses to commit, as a paused one does."""
    location = str(tmp_path / "repo")
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept.bin").write_bytes(os.urandom(300_000))
    _ok(location, "init")
    first = json.loads(_ok(location, "--json", "backup", str(src)).splitlines()[-1])
    (src / "new.bin").write_bytes(os.urandom(100_000))
    backup = _cli(location, "backup", str(src), pause=True, behind=3600)
    try:
        _wait_stopped(backup.pid)
        _ok(location, "forget", first["snapshot_id"], "--prune")
    finally:
        backup.send_signal(signal.SIGCONT)
    _out, err = backup.communicate(timeout=120)
    assert backup.returncode == 11, err.decode()
    assert "nothing more was committed" in err.decode()
    _ok(location, "check", "--read-data")


@pytest.mark.slow
def test_a_check_paused_while_prune_repacked_reports_no_false_damage(tmp_path: Path) -> None:
    """A check --read-data paused past the stale limit after listing the packs: a prune
    takes its lock for stale and repacks. Before, the check went on and reported every
    pack the prune had deleted as damage (exit 29, 'the repository has 6 problems'),
    inviting a 'repair' of a healthy repository; now it says its lock was taken and to
    check again (exit 11)."""
    location = str(tmp_path / "repo")
    src = tmp_path / "src"
    src.mkdir()
    _ok(location, "init", "--pack-size", "1")
    for i in range(3):
        (src / f"f{i}.bin").write_bytes(os.urandom(400_000))
        _ok(location, "backup", str(src))
        (src / f"f{i}.bin").unlink()
    check = _cli(location, "check", "--read-data", pause=True)
    try:
        _wait_stopped(check.pid)
        time.sleep(2.5)
        _ok(location, "forget", "--keep-last", "1", "--prune", "--max-unused", "0")
    finally:
        check.send_signal(signal.SIGCONT)
    _out, err = check.communicate(timeout=120)
    assert check.returncode == 11, err.decode()
    errors = [line for line in err.decode().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not damage; run check again" in errors[0], err.decode()
    _ok(location, "check", "--read-data")


@pytest.mark.slow
def test_a_prune_paused_while_a_backup_used_its_doomed_packs_deletes_nothing(
    tmp_path: Path,
) -> None:
    """The mirror case: the prune is paused past the stale limit after planning to delete
    a forgotten snapshot's packs; a backup ignores its stale lock (shared locks do not
    remove stale ones), deduplicates against those packs and commits. Before, the prune
    woke up and deleted them under the new snapshot; now it sees its lock went unrenewed
    past the limit and deletes nothing (exit 11)."""
    location = str(tmp_path / "repo")
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept.bin").write_bytes(os.urandom(300_000))
    _ok(location, "init")
    first = json.loads(_ok(location, "--json", "backup", str(src)).splitlines()[-1])
    _ok(location, "forget", first["snapshot_id"])
    prune = _cli(location, "prune", pause=True)
    try:
        _wait_stopped(prune.pid)
        time.sleep(2.5)  # its lock looks stale now
        second = json.loads(_ok(location, "--json", "backup", str(src)).splitlines()[-1])
    finally:
        prune.send_signal(signal.SIGCONT)
    _out, err = prune.communicate(timeout=120)
    assert prune.returncode == 11, err.decode()
    assert "went unrenewed" in err.decode()
    _ok(location, "check", "--read-data")
    target = tmp_path / "restored"
    _ok(location, "restore", second["snapshot_id"], "--target", str(target))
    assert (target / src.relative_to("/") / "kept.bin").read_bytes() == (
        src / "kept.bin"
    ).read_bytes()
