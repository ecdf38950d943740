"""Several clients on one repository: two processes back up different trees into it at
the same time, three rounds in a row, on a local folder and on S3 (moto on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from casbackup.testing.fixtures import PASSWORD, run_cli
from tests.store.test_s3_cli import assert_same, make_tree, ok


@pytest.fixture(params=["local", "s3"])
def shared_repo(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "repo")
    return str(request.getfixturevalue("moto_location"))


@pytest.mark.slow
def test_two_clients_back_up_at_once_three_times(shared_repo: str, tmp_path: Path) -> None:
    repo = shared_repo
    ok("init", "--pack-size", "4", repo=repo)
    trees = {}
    for who in ("alpha", "beta"):
        trees[who] = tmp_path / who
        make_tree(trees[who], seed=len(who), files=16)
        # Shared content across the two trees: stored once (dedup across clients).
        (trees[who] / "common.bin").write_bytes(bytes(range(256)) * 8000)
    env = {**os.environ, "CASBACKUP_PASSWORD": PASSWORD}
    snapshots: dict[str, list[str]] = {"alpha": [], "beta": []}
    for round_ in range(3):
        procs = {
            who: subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "casbackup.cli.main",
                    "-r",
                    repo,
                    "--json",
                    "backup",
                    str(tree),
                    "--tag",
                    who,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            )  # fmt: skip
            for who, tree in trees.items()
        }
        for who, proc in procs.items():
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, (round_, who, err.decode())
            snapshots[who].append(json.loads(out.decode().splitlines()[-1])["snapshot_id"])
            # Each round changes every tree a little, so each snapshot is new.
            (trees[who] / f"round{round_}.bin").write_bytes(os.urandom(50_000 + round_))
    listed = {s["id"] for s in json.loads(ok("--json", "snapshots", repo=repo))}
    assert listed == set(snapshots["alpha"]) | set(snapshots["beta"]) and len(listed) == 6
    ok("check", "--read-data", repo=repo)
    for who in ("alpha", "beta"):
        target = tmp_path / f"restore-{who}"
        ok("restore", snapshots[who][-1], "--target", str(target), repo=repo)
        (trees[who] / "round2.bin").unlink()  # written after the last backup
        assert_same(trees[who], target / trees[who].relative_to("/"))
    # Every earlier snapshot restores too (its blobs are all in the repository).
    for snap in snapshots["alpha"][:-1] + snapshots["beta"][:-1]:
        res = run_cli("restore", snap, "--target", str(tmp_path / f"r-{snap[:8]}"), repo=repo)
        assert res.code == 0, res.err
