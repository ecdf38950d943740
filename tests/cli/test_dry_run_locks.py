"""Dry runs only read: at most a shared lock (so they run beside a backup, and a dry prune or
forget does not wait for one), and no lock at all on a read-only medium."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from casbackup.testing.fixtures import PASSWORD, open_repo, run_cli
from tests.cli.conftest import init_repo

CONFIG = """
[repository]
location = "{repo}"

[[applications]]
name = "notes"
sources = ["{src}"]
"""


def _unavailable(reason: str) -> None:
    """Skip without a read-only bind mount, except under CI=true (root there: a failure)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, str]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("a\n")
    (src / "b.txt").write_text("b\n")
    repo = init_repo(str(tmp_path / "repo"))
    (tmp_path / "casbackup.toml").write_text(CONFIG.format(repo=repo, src=src))
    for _ in range(2):
        assert cli(tmp_path, "backup", "--app", "notes").code == 0
    return tmp_path, repo


def cli(site: Path, *args: str):  # type: ignore[no-untyped-def]
    env = {"CASBACKUP_CONFIG": str(site / "casbackup.toml"), "CASBACKUP_PASSWORD": PASSWORD,
           "CASBACKUP_CACHE_DIR": str(site / "cache")}  # fmt: skip
    return run_cli(*args, env=env)


def dry_runs(site: Path) -> dict[str, list[str]]:
    return {
        "prune": ["prune", "--dry-run"],
        "forget": ["forget", "--app", "notes", "--keep-last", "1", "--dry-run"],
        "forget --prune": ["forget", "--app", "notes", "--keep-last", "1", "--prune", "--dry-run"],
        "recover": [
            "recover",
            "--app",
            "notes",
            "--target",
            str(site / "rec"),
            "--allow-unverified",
            "--dry-run",
        ],  # fmt: skip
        "restore": ["restore", "latest", "--target", str(site / "restored"), "--dry-run"],
        "backup": ["backup", "--app", "notes", "--dry-run"],
        "migrate": ["migrate", "--dry-run"],
    }


def test_dry_runs_run_beside_a_backup(site: tuple[Path, str]) -> None:
    root, repo = site
    with open_repo(repo) as r, r.locked(exclusive=False, command="backup"):  # a running backup
        real = cli(root, "prune")
        assert real.code == 11, real.err  # the real prune waits for no one: it refuses
        for name, args in dry_runs(root).items():
            res = cli(root, *args)
            assert res.code == 0, (name, res.code, res.err)
            assert "lock" not in res.err, (name, res.err)
        assert len(os.listdir(os.path.join(repo, "locks"))) == 1  # only the backup's
    assert os.listdir(os.path.join(repo, "locks")) == []


def test_dry_runs_wait_for_an_exclusive_lock(site: tuple[Path, str]) -> None:
    """At most a shared lock is still a lock: a running prune (exclusive) stops them."""
    root, repo = site
    with open_repo(repo) as r, r.locked(exclusive=True, command="prune"):
        assert cli(root, "prune", "--dry-run").code == 11


@pytest.fixture
def read_only_repo(site: tuple[Path, str]) -> Iterator[tuple[Path, str]]:
    """The site's repository on a read-only medium: a read-only bind mount when this runs as
    root (where permissions do not stop writes), the write bits removed otherwise."""
    root, repo = site
    if os.geteuid() != 0:
        modes = {}
        for folder, _dirs, _files in os.walk(repo):
            modes[folder] = os.stat(folder).st_mode
            os.chmod(folder, stat.S_IMODE(modes[folder]) & ~0o222)
        try:
            yield site
        finally:
            for folder, mode in modes.items():
                os.chmod(folder, stat.S_IMODE(mode))
        return
    mount = root / "ro"
    mount.mkdir()
    if shutil.which("mount") is None:
        _unavailable("no mount command for a read-only bind mount")
    bound = subprocess.run(["mount", "--bind", repo, str(mount)], capture_output=True)
    if bound.returncode != 0:
        _unavailable(f"a bind mount is not allowed here: {bound.stderr.decode().strip()}")
    try:
        ro = subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], capture_output=True)
        if ro.returncode != 0:
            _unavailable(f"cannot make the bind mount read-only: {ro.stderr.decode().strip()}")
        config = root / "casbackup.toml"
        config.write_text(config.read_text().replace(repo, str(mount)))
        yield root, str(mount)
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_dry_runs_and_reads_need_no_lock_on_a_read_only_medium(
    read_only_repo: tuple[Path, str],
) -> None:
    root, repo = read_only_repo
    runs = dry_runs(root)
    del runs["migrate"]  # takes no lock anyway
    runs["ls"] = ["ls", "latest"]
    runs["diff"] = ["diff", "latest", "latest"]
    runs["stats"] = ["stats", "latest"]
    runs["check"] = ["check", "--read-data"]
    runs["restore (real)"] = ["restore", "latest", "--target", str(root / "restored-real")]
    for name, args in runs.items():
        res = cli(root, *args)
        assert res.code == 0, (name, res.code, res.err)
        assert "Traceback" not in res.err
        if "ls" != name:
            assert "warning: no lock taken" in res.err, (name, res.err)
    # A command that changes the repository still fails, with its one line.
    real = cli(root, "prune")
    assert real.code == 25, real.err
    assert real.err.startswith("error: ") and len(real.err.strip().splitlines()) == 1
