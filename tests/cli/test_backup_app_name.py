"""`backup --app NAME` with paths takes a name the config would refuse nowhere else: it is
stored in the snapshot for good and becomes a folder name in `mount`, so it gets the config's
rule (found by a newcomer: `--app ..`, `--app a/b` and `--app ''` were saved as is)."""

from __future__ import annotations

from pathlib import Path

import pytest

from casbackup.testing.fixtures import run_cli
from tests.cli.conftest import assert_one_error


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.txt").write_text("a\n")
    return root


@pytest.mark.parametrize("name", ["", "..", "a/b", "x\ny", " shop", "a,b", "db:1", "caf\udce9"])
def test_backup_refuses_an_app_name_the_config_would_refuse(cli_repo, src, name) -> None:  # type: ignore[no-untyped-def]
    res = run_cli("backup", str(src), "--app", name, repo=cli_repo)
    assert_one_error(res, 2, "is not a valid application name")
    listed = run_cli("--json", "snapshots", repo=cli_repo)
    assert listed.code == 0, listed.err
    assert listed.out.strip() == "[]", listed.out


def test_backup_keeps_a_valid_app_name(cli_repo, src) -> None:  # type: ignore[no-untyped-def]
    res = run_cli("-q", "backup", str(src), "--app", "shop-1.2_x", repo=cli_repo)
    assert res.code == 0, res.err
    listed = run_cli("snapshots", "--app", "shop-1.2_x", repo=cli_repo)
    assert "1 snapshot" in listed.out, listed.out
