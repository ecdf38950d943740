"""Small promises found by trying the CLI as a new user (init, backup, forget, prune)."""

from __future__ import annotations

from pathlib import Path

from casbackup.testing.fixtures import run_cli
from tests.cli.conftest import init_repo


def test_prune_says_one_snapshot_uses(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    repo = init_repo(str(tmp_path / "repo"))
    assert run_cli("backup", str(src), repo=repo).code == 0
    res = run_cli("prune", "--dry-run", repo=repo)
    assert res.code == 0, res.err
    assert res.out.splitlines()[0].startswith("1 snapshot uses ")
    assert run_cli("backup", str(src), repo=repo).code == 0
    res = run_cli("prune", "--dry-run", repo=repo)
    assert res.out.splitlines()[0].startswith("2 snapshots use ")
