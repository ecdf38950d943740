"""`forget SNAPSHOT...` removes the snapshots named, as restic's `forget ID` does: a backup made
by mistake (wrong tree, a secret included) could not be removed before, only aged out by a policy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from casbackup.testing.fixtures import run_cli
from tests.cli.conftest import assert_one_error


@pytest.fixture
def three(cli_repo: str, tmp_path: Path) -> tuple[str, list[str]]:
    src = tmp_path / "src"
    src.mkdir()
    ids = []
    for n, app in enumerate(("web", "web", "wiki")):
        (src / "f.txt").write_text(f"{n}\n")
        res = run_cli("-q", "backup", str(src), "--app", app, repo=cli_repo)
        assert res.code == 0, res.err
        ids.append(res.out.strip())
    return cli_repo, ids


def _ids(repo: str) -> list[str]:
    res = run_cli("--json", "snapshots", repo=repo)
    assert res.code == 0, res.err
    return [s["id"] for s in json.loads(res.out)]


def test_forget_removes_only_the_named_snapshots(three) -> None:  # type: ignore[no-untyped-def]
    repo, ids = three
    full = _ids(repo)
    dry = run_cli("forget", ids[0][:8], "latest", "--app", "wiki", "--dry-run", repo=repo)
    assert dry.code == 0, dry.err
    assert "would remove 2 snapshots" in dry.out and _ids(repo) == full
    res = run_cli("forget", ids[0][:8], "latest", "--app", "wiki", "--prune", repo=repo)
    assert res.code == 0, res.err
    assert "named on the command line" in res.out and "removed 2 snapshots" in res.out
    assert [i[:8] for i in _ids(repo)] == [ids[1][:8]]
    assert run_cli("check", "--read-data", repo=repo).code == 0


def test_forget_with_an_unknown_id_removes_nothing(three) -> None:  # type: ignore[no-untyped-def]
    repo, ids = three
    full = _ids(repo)
    res = run_cli("forget", ids[0][:8], "ffffffff", repo=repo)
    assert_one_error(res, 23, "no snapshot matches 'ffffffff'")
    assert _ids(repo) == full


def test_forget_refuses_ids_with_a_keep_rule(three) -> None:  # type: ignore[no-untyped-def]
    repo, ids = three
    res = run_cli("forget", ids[0][:8], "--keep-last", "1", repo=repo)
    assert_one_error(res, 2, "not both")
    assert len(_ids(repo)) == 3


def test_keep_within_daily_from_the_command_line_and_the_config(three, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """restic's --keep-within-daily (and hourly, weekly, monthly, yearly) exist here too."""
    repo, ids = three
    res = run_cli("--json", "forget", "--app", "web", "--keep-within-daily", "1d", "--dry-run",
                  repo=repo)  # fmt: skip
    assert res.code == 0, res.err
    group = json.loads(res.out)["groups"][0]
    assert group["policy"] == {"keep_within_daily": "1d"}
    assert [k["short_id"] for k in group["keep"]] == [ids[1][:8]]  # one a day: the newest
    config = tmp_path / "c.toml"
    config.write_text(
        f'[repository]\nlocation = "{repo}"\n[[applications]]\nname = "web"\n'
        f'sources = ["{tmp_path}"]\n[applications.retention]\nkeep_within_weekly = "2w"\n'
    )
    res = run_cli("--config", str(config), "--json", "forget", "--app", "web", "--dry-run",
                  repo=repo)  # fmt: skip
    assert res.code == 0, res.err
    assert json.loads(res.out)["groups"][0]["policy"] == {"keep_within_weekly": "14d"}
    assert_one_error(run_cli("forget", "--keep-within-daily", "soon", repo=repo), 2, "soon")
