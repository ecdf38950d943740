"""--retry-lock (restic's option): a command waits for another process's lock instead of
failing at once with exit 11 (helper-66: a cron prune beside the service lost its run)."""

from __future__ import annotations

import threading
from pathlib import Path

from casbackup.testing.fixtures import open_repo, run_cli
from tests.cli.conftest import init_repo


def _repo(tmp_path: Path) -> tuple[str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    return init_repo(str(tmp_path / "repo")), src


def test_a_command_waits_for_the_lock_and_then_runs(tmp_path: Path) -> None:
    repo, src = _repo(tmp_path)
    holder = open_repo(repo)
    lock = holder.lock(exclusive=True, command="prune")
    release = threading.Timer(2.0, lock.release)
    release.start()
    try:
        res = run_cli("--retry-lock", "2m", "backup", str(src), repo=repo)
    finally:
        release.cancel()
        holder.close()
    assert res.code == 0, res.err
    assert "exclusive lock" in res.err and "prune" in res.err
    assert "waiting up to 2m for it" in res.err
    # after the command too, as restic takes it, and from the environment
    res = run_cli("forget", "--keep-last", "1", "--retry-lock", "10s", repo=repo)
    assert res.code == 0, res.err


def test_it_gives_up_after_the_duration_and_bad_values_are_refused(tmp_path: Path) -> None:
    repo, src = _repo(tmp_path)
    with open_repo(repo) as holder, holder.locked(exclusive=True, command="prune"):
        res = run_cli("backup", str(src), repo=repo, env={"CASBACKUP_RETRY_LOCK": "2s"})
        assert res.code == 11, res.err
        lines = [line for line in res.err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "(waited 2s for it)" in lines[0], res.err
        # without the option: at once, as before
        res = run_cli("backup", str(src), repo=repo)
        assert res.code == 11 and "waiting" not in res.err
    res = run_cli("--retry-lock", "soon", "snapshots", repo=repo)
    assert res.code == 2
    assert res.err.strip().startswith("error: --retry-lock: 'soon' is not a run time")
