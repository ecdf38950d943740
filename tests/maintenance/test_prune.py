"""prune: reclaims exactly what the plan says, never loses a kept snapshot, survives crashes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime

import pytest

from casbackup.maintenance.forget import execute_forget, plan_forget
from casbackup.maintenance.prune import PruneOptions, execute_prune, plan_prune, prune
from casbackup.maintenance.retention import RetentionPolicy
from casbackup.repo.pack import pack_name
from casbackup.store.local import LocalBackend
from casbackup.testing.fixtures import make_repo, open_repo, run_cli
from casbackup.verify.check import CheckOptions, check
from tests.maintenance.history import build_history, repo_bytes

TYPICAL = RetentionPolicy(keep_daily=7, keep_weekly=4, keep_monthly=12, keep_yearly=2)
# About 40 snapshots over a year: dailies for the last ten days, then one every twelve days.
YEAR = list(range(10)) + list(range(12, 366, 12))


def forget(repo, policy):  # type: ignore[no-untyped-def]
    plan = plan_forget(repo.list_snapshots(), lambda key: policy, datetime.now(UTC), tz=UTC)
    execute_forget(repo, plan)
    return plan


def assert_clean(repo, *, read_data: bool = True) -> None:  # type: ignore[no-untyped-def]
    report = check(repo, CheckOptions(read_data=read_data))
    assert report.ok, report.errors


@pytest.mark.slow
def test_a_year_of_dailies_forget_prune_restore(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "repo")
    repo = make_repo(path)
    history = build_history(repo, str(tmp_path), YEAR)
    assert len(repo.list_snapshots()) == len(YEAR) == 40

    plan = forget(repo, TYPICAL)
    kept = repo.list_snapshots()
    assert len(plan.remove) > 10 and len(kept) == len(plan.keep)
    before = repo_bytes(path)

    pplan = plan_prune(repo)
    assert pplan.delete and pplan.repack, "the history must give prune both kinds of work"
    assert pplan.bytes_rewritten > 0
    result = execute_prune(repo, pplan)
    after = repo_bytes(path)
    freed = before - after
    expected = pplan.bytes_freed(repo.config.pack_size)
    # The plan's estimate differs from the truth only by how well pack headers and the
    # new index compress.
    assert abs(freed - expected) <= max(4096, expected // 50), (freed, expected)
    assert result.packs_deleted == len(pplan.delete) + len(pplan.repack)
    assert len(os.listdir(os.path.join(path, "index"))) == 1

    repo.close()
    repo = open_repo(path)
    assert_clean(repo)
    for i, snap in enumerate(repo.list_snapshots()):
        history.expect_restores(repo, snap, str(tmp_path / f"restore-{i}"))
    # Nothing left to do: a second prune is a no-op.
    again = plan_prune(repo)
    assert again.empty and not again.delete and not again.repack
    repo.close()


def test_max_repack_size_bounds_the_work(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "repo")
    repo = make_repo(path)
    build_history(repo, str(tmp_path), list(range(12)))
    forget(repo, RetentionPolicy(keep_last=2))
    unbounded = plan_prune(repo)
    assert len(unbounded.repack) >= 1
    smallest = min(u.size for u in unbounded.repack)
    bounded = plan_prune(repo, PruneOptions(max_repack_size=smallest))
    assert len(bounded.repack) == 1 and bounded.repack[0].size <= smallest
    none = plan_prune(repo, PruneOptions(max_unused=1.0))
    assert not none.repack and none.delete == unbounded.delete
    repo.close()


class Crash(BaseException):
    """Stands for the process dying: nothing may catch it."""


class CrashingBackend(LocalBackend):
    def __init__(self, root: str, op: str, prefix: str, after: int) -> None:
        super().__init__(root)
        self.op, self.prefix, self.left = op, prefix, after

    def _maybe_crash(self, op: str, name: str) -> None:
        if op == self.op and name.startswith(self.prefix):
            if self.left == 0:
                raise Crash(f"{op} {name}")
            self.left -= 1

    def put(self, name, data):  # type: ignore[no-untyped-def]
        self._maybe_crash("put", name)
        super().put(name, data)

    def delete(self, name):  # type: ignore[no-untyped-def]
        self._maybe_crash("delete", name)
        super().delete(name)


@pytest.fixture(scope="module")
def forgotten_repo(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A repository after forget, before prune (copied by each crash test)."""
    root = tmp_path_factory.mktemp("crash")
    os.environ["CASBACKUP_CACHE_DIR"] = str(root / "cache")
    repo = make_repo(str(root / "repo"))
    history = build_history(repo, str(root), list(range(14)))
    forget(repo, RetentionPolicy(keep_last=4))
    plan = plan_prune(repo)
    assert len(plan.repack) >= 1 and len(plan.delete) >= 1
    repo.close()
    return str(root / "repo"), history


CRASH_POINTS = [
    ("put", "data/", 0),  # before the first new pack
    ("put", "index/", 0),  # new packs written, index not
    ("delete", "index/", 1),  # new index written, one old index file deleted
    ("delete", "data/", 0),  # every index step done, no pack deleted
    ("delete", "data/", 2),  # some packs deleted
]


@pytest.mark.parametrize(("op", "prefix", "after"), CRASH_POINTS)
def test_prune_interrupted_then_check_then_prune_again(
    tmp_path, forgotten_repo, op, prefix, after
) -> None:  # type: ignore[no-untyped-def]
    source, history = forgotten_repo
    path = str(tmp_path / "repo")
    shutil.copytree(source, path)
    kept_ids = {s.id for s in open_repo(path).list_snapshots()}

    repo = open_repo(CrashingBackend(path, op, prefix, after))
    with pytest.raises(Crash):
        prune(repo)
    repo.backend.op = ""  # the process is "gone"; its cache stays as it was

    repo = open_repo(path)
    assert_clean(repo)
    assert {s.id for s in repo.list_snapshots()} == kept_ids
    plan, _ = prune(repo, PruneOptions(unindexed_margin=0))
    assert_clean(repo)
    assert plan_prune(repo, PruneOptions(unindexed_margin=0)).empty
    present = {name for name, _ in repo.backend.list("data/")}
    indexed = {pack_name(p) for f in repo.index_files() for p in repo.load_index_file(f).packs}
    assert present == indexed, "no pack left behind, none missing"
    for i, snap in enumerate(repo.list_snapshots()):
        history.expect_restores(repo, snap, str(tmp_path / f"r{i}"))
    repo.close()


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from casbackup.maintenance.prune import prune
    from casbackup.testing.fixtures import open_repo
    repo = open_repo(sys.argv[1])
    real, count, limit = repo.backend.delete, [0], int(sys.argv[2])
    def delete(name):
        if count[0] == limit:
            os.kill(os.getpid(), signal.SIGKILL)
        count[0] += 1
        real(name)
    repo.backend.delete = delete
    prune(repo)
""")


@pytest.mark.parametrize("deletes", [0, 3])
def test_prune_sigkilled_then_check_then_prune_again(tmp_path, forgotten_repo, deletes) -> None:  # type: ignore[no-untyped-def]
    source, history = forgotten_repo
    path = str(tmp_path / "repo")
    shutil.copytree(source, path)
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, path, str(deletes)], env=dict(os.environ)
    )
    assert proc.returncode == -9
    repo = open_repo(path)
    assert_clean(repo)
    prune(repo)
    assert_clean(repo)
    for i, snap in enumerate(repo.list_snapshots()):
        history.expect_restores(repo, snap, str(tmp_path / f"r{i}"))
    repo.close()


def test_duplicate_blobs_in_two_packs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "repo")
    make_repo(path).close()
    history_root = str(tmp_path)
    a, b = open_repo(path), open_repo(path)
    data = os.urandom(50_000)
    from casbackup.repo.ids import Kind

    # Two writers that do not see each other's blob store the same chunk (as two concurrent
    # backups can): two packs, two index files.
    a.save_blob(Kind.DATA, data)
    a.flush()
    b.save_blob(Kind.DATA, data)
    b.save_blob(Kind.DATA, os.urandom(1000))
    b.flush()
    a.close()
    b.close()
    repo = open_repo(path)
    history = build_history(repo, history_root, [1, 0])
    plan = plan_prune(repo)
    assert plan.duplicate_blobs == 0  # the duplicated chunk is used by no snapshot
    execute_prune(repo, plan)
    assert_clean(repo)
    for i, snap in enumerate(repo.list_snapshots()):
        history.expect_restores(repo, snap, str(tmp_path / f"r{i}"))
    repo.close()


def test_prune_cli_fails_with_11_while_a_backup_holds_its_lock(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "repo")
    repo = make_repo(path)
    build_history(repo, str(tmp_path), [2, 1])
    with repo.locked(exclusive=False, command="backup"):
        res = run_cli("prune", repo=path)
        assert res.code == 11, res.err
        assert (
            res.err.startswith("error: repository is locked: shared lock") and "backup" in res.err
        )
        assert res.err.count("\n") == 1
    res = run_cli("prune", "--dry-run", repo=path)
    assert res.code == 0, res.err
    assert "dry run: nothing was changed" in res.out
    repo.close()


def test_prune_cli_plan_and_bad_options(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "repo")
    repo = make_repo(path)
    build_history(repo, str(tmp_path), list(range(6)))
    forget(repo, RetentionPolicy(keep_last=1))
    repo.close()
    res = run_cli("--json", "prune", "--dry-run", repo=path)
    assert res.code == 0, res.err
    import json

    doc = json.loads(res.out)
    assert doc["dry_run"] and doc["packs_delete"] >= 1 and doc["bytes_freed"] > 0
    assert repo_bytes(path) > 0
    before = repo_bytes(path)
    res = run_cli("prune", repo=path)
    assert res.code == 0, res.err
    assert "deleted" in res.out and repo_bytes(path) < before
    assert run_cli("check", "--read-data", repo=path).code == 0
    for bad in (["--max-unused", "150%"], ["--max-repack-size", "lots"]):
        res = run_cli("prune", *bad, repo=path)
        assert res.code == 2 and "invalid value" in res.err


def test_a_repack_of_tiny_blobs_plans_no_negative_freed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Repacked packs of tiny blobs: their uncompressed new headers alone cost more than the
    unused blobs free, so the plan once said bytes_freed = -6130 (and the real prune freed
    about 1 KB). The estimate is now a lower bound that is never negative."""
    import json

    path, src = str(tmp_path / "repo"), tmp_path / "src"
    src.mkdir()
    for i in range(400):
        (src / f"f{i}").write_bytes(os.urandom(8))
    make_repo(path).close()
    (src / "gone").write_bytes(os.urandom(8))
    assert run_cli("backup", str(src), repo=path).code == 0
    (src / "gone").unlink()
    assert run_cli("backup", str(src), repo=path).code == 0
    assert run_cli("forget", "--keep-last", "1", repo=path).code == 0
    repo = open_repo(path)
    try:
        plan = plan_prune(repo, PruneOptions(max_unused=0.0))
        pack_size = repo.config.pack_size
        assert plan.repack and not plan.delete
        # The case itself: the new packs' data plus uncompressed headers exceed the packs
        # they replace.
        uncompressed = plan.bytes_rewritten + 41 * plan.blobs_rewritten
        assert uncompressed > sum(p.size for p in plan.repack)
        expected = plan.bytes_freed(pack_size)
        assert expected >= 0
        plan.close()
    finally:
        repo.close()
    res = run_cli("--json", "prune", "--dry-run", "--max-unused", "0", repo=path)
    assert res.code == 0 and json.loads(res.out)["bytes_freed"] == expected, res.err
    before = repo_bytes(path)
    assert run_cli("prune", "--max-unused", "0", repo=path).code == 0
    assert before - repo_bytes(path) >= expected  # a lower bound, as the plan says
