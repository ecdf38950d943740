"""Which snapshot an incremental builds on, when the newest one cannot be read.

Before, ``choose_parent`` listed the snapshots with their warnings thrown away: a damaged
newest snapshot was passed over in silence, the backup took an older parent and read
again everything changed since, and nothing said why it took longer. Now a warning line
names the snapshot, why it cannot be read and what the backup compares with instead
(the backup is complete all the same: exit 0).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from casbackup.testing.fixtures import run_cli
from tests.cli.conftest import init_repo


def _damage(repo: str, snap_id: str) -> None:
    path = Path(repo) / "snapshots" / snap_id
    os.chmod(path, 0o600)
    with open(path, "r+b") as f:
        f.seek(40)
        f.write(b"XXXX")


def _ids(repo: str) -> list[str]:
    res = run_cli("--json", "snapshots", repo=repo)
    return [s["id"] for s in json.loads(res.out)]


def test_an_unreadable_newest_snapshot_is_named_when_passed_over(tmp_path: Path) -> None:
    repo = init_repo(str(tmp_path / "repo"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("first")
    assert run_cli("backup", str(src), repo=repo).code == 0
    (first,) = _ids(repo)
    (src / "b").write_text("second")
    assert run_cli("backup", str(src), repo=repo).code == 0
    second = next(i for i in _ids(repo) if i != first)
    _damage(repo, second)
    (src / "c").write_text("third")
    res = run_cli("backup", str(src), repo=repo)
    assert res.code == 0, res.err
    lines = res.err.splitlines()
    named = [line for line in lines if f"snapshot {second[:8]} is unreadable" in line]
    assert len(named) == 1, res.err
    assert named[0].startswith("warning: ") and "does not match its name" in named[0]
    assert named[0].endswith(f"files are compared with snapshot {first[:8]} instead")
    assert f"parent {first[:8]}" in res.out
    # A full compares nothing with a parent: nothing to say.
    full = run_cli("backup", "--type", "full", str(src), repo=repo)
    assert full.code == 0 and "unreadable" not in full.err, full.err


def test_no_readable_parent_at_all_says_every_file_is_read(tmp_path: Path) -> None:
    repo = init_repo(str(tmp_path / "repo"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("first")
    assert run_cli("backup", str(src), repo=repo).code == 0
    (only,) = _ids(repo)
    _damage(repo, only)
    res = run_cli("backup", str(src), repo=repo)
    assert res.code == 0, res.err
    assert f"snapshot {only[:8]} is unreadable" in res.err
    assert "it may be this backup's newest: every file is read" in res.err
