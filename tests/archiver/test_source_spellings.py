"""One source written several ways is one source.

helper-58's weak list, reproduced: `backup /x /x/ /x/../x` stored the path list
['/x', '/x', '/x'], and that list is the group of a backup without an application: a
later `backup /x` found no parent (it read every file again) and retention counted the
two as different groups.
"""

from __future__ import annotations

import json
from pathlib import Path

from casbackup.testing.fixtures import make_repo, run_cli


def test_one_source_written_three_ways_is_one_path_and_one_group(tmp_path: Path) -> None:
    src = tmp_path / "x"
    src.mkdir()
    (src / "a.txt").write_text("hello\n")
    repo = str(tmp_path / "repo")
    make_repo(repo).close()
    first = run_cli("backup", str(src), f"{src}/", f"{src}/../x", repo=repo)
    assert first.code == 0, first.err
    (snap,) = json.loads(run_cli("--json", "snapshots", repo=repo).out)
    assert snap["paths"] == [str(src)]
    again = run_cli("--json", "backup", str(src), repo=repo)
    summary = json.loads(again.out.splitlines()[-1])
    assert summary["parent"] == snap["id"], summary  # its parent, not a first backup
    plan = json.loads(run_cli("--json", "forget", "--keep-last", "1", "--dry-run", repo=repo).out)
    assert len(plan["groups"]) == 1
