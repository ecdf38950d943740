"""A second restore into a target that the first one made read-only, as an ordinary user.

The restore runs as ``nobody`` in a real subprocess (the suite runs as root, whom a
read-only mode would not stop): folders the user owns are made writable for the
restore and get their modes back; what cannot be resolved is reported by path, the
rest is restored, and the exit code is 26.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from casbackup.errors import RestoreError
from casbackup.repo.repository import Repository
from casbackup.testing.fixtures import PASSWORD, make_repo
from tests.archiver.trees import dir_node, file_node, snapshot_of

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")


class Place:
    """A folder nobody can reach (tmp_path is root's 0700), with a repository it owns."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.repo_path = str(base / "repo")
        self.target = base / "target"
        self.home = base / "home"

    def give_to_nobody(self) -> None:
        for path in (self.repo_path, self.home, self.target):
            os.makedirs(path, exist_ok=True)
            subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(path)], check=True)

    def restore(self, *args: str) -> subprocess.CompletedProcess[str]:
        # Config and cache in nobody's home: the suite's are under root's 0700 tmp folder.
        env = {**os.environ, "CASBACKUP_PASSWORD": PASSWORD, "HOME": str(self.home),
               "CASBACKUP_CACHE_DIR": str(self.home / "cache"),
               "XDG_CONFIG_HOME": str(self.home / "config"),
               "XDG_CACHE_HOME": str(self.home / "xdg-cache")}  # fmt: skip
        return subprocess.run(
            ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
             sys.executable, "-m", "casbackup.cli.main", "-r", self.repo_path, "restore", *args,
             "--target", str(self.target)],
            capture_output=True, text=True, env=env, cwd=self.base, timeout=120,
        )  # fmt: skip


@pytest.fixture
def place() -> Iterator[Place]:
    base = Path(tempfile.mkdtemp(prefix="casbackup-conflicts-"))
    os.chmod(base, 0o755)
    yield Place(base)
    subprocess.run(["chmod", "-R", "u+rwx", str(base)], check=False)
    shutil.rmtree(base)


def read_only_snapshot(repo: Repository) -> str:
    app = dir_node(repo, b"app", [
        file_node(repo, b"file", b"v1 of the file\n", mode=0o400),
        dir_node(repo, b"sub", [file_node(repo, b"deep", b"deep\n", mode=0o444)], mode=0o500),
    ], mode=0o500)  # fmt: skip
    other = dir_node(repo, b"other", [file_node(repo, b"x", b"x\n")], mode=0o755)
    top = file_node(repo, b"top.txt", b"top\n",
                    xattrs=((b"trusted.note", b"root only"), (b"user.note", b"anyone")))  # fmt: skip
    return snapshot_of(repo, [app, other, top]).id


def test_second_overwrite_into_read_only_folders(place: Place) -> None:
    repo = make_repo(place.repo_path)
    snap = read_only_snapshot(repo)
    repo.close()
    place.give_to_nobody()
    first = place.restore(snap)
    assert first.returncode == 0, first.stderr
    # trusted.* needs root: a warning naming file and attribute; the rest is applied.
    refused = "top.txt: extended attribute trusted.note not restored: Operation not permitted"
    # The snapshot's files are root's: nobody gets them, and is told so once.
    note = ("note: 4 files of other users in the snapshot are yours here: owners are restored"
            " only by a restore run as root")  # fmt: skip
    assert first.stderr.strip().splitlines() == [f"warning: {refused}", note]
    assert os.getxattr(place.target / "top.txt", "user.note") == b"anyone"
    app = place.target / "app"
    assert os.stat(app).st_mode & 0o777 == 0o500
    assert os.stat(app / "sub").st_mode & 0o777 == 0o500
    os.chmod(place.target, 0o500)  # the target itself read-only too (still nobody's)

    second = place.restore(snap, "--overwrite")
    assert second.returncode == 0, second.stderr
    assert second.stderr.strip().splitlines() == [f"warning: {refused}", note]
    assert (app / "file").read_bytes() == b"v1 of the file\n"
    assert (app / "sub" / "deep").read_bytes() == b"deep\n"
    # Every mode is back as the snapshot (or the user) had it.
    assert os.stat(app).st_mode & 0o777 == 0o500
    assert os.stat(app / "sub").st_mode & 0o777 == 0o500
    assert os.stat(app / "file").st_mode & 0o777 == 0o400
    assert os.stat(place.target).st_mode & 0o777 == 0o500
    assert [n for n in os.listdir(app) if n.startswith(".casbackup")] == []


def test_unresolvable_conflict_is_reported_by_path_and_the_rest_restored(place: Place) -> None:
    repo = make_repo(place.repo_path)
    snap = read_only_snapshot(repo)
    repo.close()
    place.give_to_nobody()
    assert place.restore(snap).returncode == 0
    # Someone else's folder now: nobody cannot replace what is in it.
    os.chown(place.target / "other", 0, 0)
    with open(place.target / "top.txt", "w") as f:
        f.write("edited since")  # the restore must still get here and put it back
    os.chown(place.target / "top.txt", NOBODY, NOBODY)

    res = place.restore(snap, "--overwrite")
    assert res.returncode == RestoreError.exit_code == 26, res.stderr
    errors = [line for line in res.stderr.splitlines() if line.startswith("error: ")]
    assert errors == ["error: other/x: cannot create: Permission denied"], res.stderr
    assert "b'" not in res.stderr and "Traceback" not in res.stderr
    assert (place.target / "top.txt").read_bytes() == b"top\n"
    assert (place.target / "other" / "x").read_bytes() == b"x\n"  # untouched
    assert os.stat(place.target / "app").st_mode & 0o777 == 0o500
    assert [n for n in os.listdir(place.target / "other") if n.startswith(".casbackup")] == []
