"""A snapshot dated in the future (its machine's clock ran ahead) is never 'latest'.

Same kind as the verification records that a wrong clock kept newest (helper-55's weak
list): a snapshot taken while the clock ran a year ahead sorted last, so after the clock
was set right `restore latest`, `dump latest`, recover and the next backup's parent all
took that old snapshot instead of the newer ones, for a year.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from casbackup.testing.fixtures import open_repo, run_cli

YEAR_NS = 365 * 86400 * 10**9


def test_a_snapshot_dated_ahead_is_not_the_latest(cli_repo: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f.txt").write_text("old\n")
    assert run_cli("backup", str(src), repo=cli_repo).code == 0
    repo = open_repo(cli_repo)
    try:
        (first,) = repo.list_snapshots()
        ahead_ns = time.time_ns() + YEAR_NS
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ahead_ns / 1e9))
        ahead = repo.save_snapshot(replace(first, start_ns=ahead_ns, time=stamp, id=""))
    finally:
        repo.close()
    (src / "f.txt").write_text("new\n")
    assert run_cli("backup", str(src), repo=cli_repo).code == 0

    dumped = run_cli("dump", "latest", f"{src}/f.txt", repo=cli_repo)
    assert (dumped.code, dumped.out) == (0, "new\n"), dumped.err
    assert f"snapshot {ahead.id[:8]} is dated" in dumped.err and "in the future" in dumped.err
    repo = open_repo(cli_repo)
    try:
        order = [s.id for s in repo.list_snapshots()]
        assert order[0] == ahead.id and order[-1] != first.id
        assert repo.resolve_snapshot("latest").id == order[-1]
    finally:
        repo.close()
