"""A cache folder that cannot be used never fails a command: one warning, and on without it.

Real subprocesses as an ordinary user (tests/unprivileged.py: a chmod 0555 folder bites only
when not root) and as root. Found by running ``casbackup backup`` with CASBACKUP_CACHE_DIR on
a read-only tmpfs mount: "cannot open the index cache at ...: Read-only file system", exit 25,
and the same for ls, check, restore, cat and prune. And in a shared CASBACKUP_CACHE_DIR,
another user who made our folders first could keep us from backing up (a folder of theirs we
cannot write), or read our index, or plant one of theirs (a cache saying a chunk is stored
when it is not): such folders are refused, as ssh refuses key files others could write.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unprivileged import OrdinaryUser, ordinary_user


@pytest.fixture
def user() -> Iterator[OrdinaryUser]:
    yield from ordinary_user()


def _setup(user: OrdinaryUser) -> tuple[str, Path, dict[str, str]]:
    """(repository, source, environment) of the user, with a backup made."""
    repo, src = str(user.home / "repo"), user.home / "src"
    src.mkdir()
    (src / "a.txt").write_text("a" * 3000)
    tmp = user.home / "tmp"  # where a temporary cache goes: checked empty at the end
    tmp.mkdir()
    user.give(src, tmp)
    env = {"TMPDIR": str(tmp), "CASBACKUP_STATE_DIR": str(user.home / "state")}
    assert user.cli("-r", repo, "init", "--insecure-test-kdf", **env).code == 0
    return repo, src, env


def _one_warning(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if "index cache" in line]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)
    assert "Traceback" not in err and "[Errno" not in err, err


@pytest.mark.parametrize("existing", [False, True], ids=["new-cache", "existing-cache"])
def test_every_command_goes_on_without_a_read_only_cache(
    user: OrdinaryUser, existing: bool
) -> None:
    repo, src, env = _setup(user)
    cache = user.home / "cache"
    cache.mkdir()
    user.give(cache)
    env["CASBACKUP_CACHE_DIR"] = str(cache)
    if existing:
        assert user.cli("-r", repo, "backup", str(src), **env).code == 0
    for path in [cache, *cache.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)  # 0555 folders, 0444 files: the user's own
    target = user.home / "restored"
    for args in (
        ["backup", str(src)],
        ["backup", str(src)],
        ["ls", "latest"],
        ["find", "a.txt"],
        ["cat", f"latest:{src}/a.txt"],
        ["check", "--read-data"],
        ["restore", "latest", "--target", str(target)],
        ["forget", "--keep-last", "1"],
        ["prune"],
    ):
        res = user.cli("-r", repo, *args, **env)
        assert res.code == 0, (args, res.err)
        if args[0] == "forget":  # needs no index
            assert "index cache" not in res.err and "Traceback" not in res.err, res.err
        else:
            _one_warning(res.err, str(cache), "this run keeps its index cache in")
    assert (target / str(src).lstrip("/") / "a.txt").read_text() == "a" * 3000
    assert os.listdir(user.home / "tmp") == []  # the temporary caches removed


def _repo_id(user: OrdinaryUser, repo: str, src: Path, env: dict[str, str]) -> str:
    """The repository's id: the name of its folder in a cache."""
    probe = user.home / "probe-cache"
    assert user.cli("-r", repo, "ls", "latest", **env, CASBACKUP_CACHE_DIR=str(probe)).code == 0
    (name,) = [name for name in os.listdir(probe) if len(name) == 64]
    return name


def test_folders_another_user_made_in_a_shared_cache_are_refused(user: OrdinaryUser) -> None:
    repo, src, env = _setup(user)
    assert user.cli("-r", repo, "backup", str(src), **env).code == 0
    repo_id = _repo_id(user, repo, src, env)
    shared = user.base / "shared-cache"  # root's and sticky, as /tmp
    shared.mkdir()
    shared.chmod(0o1777)
    # Root made the user's folders first: open to all (to read the user's index, or plant
    # one), and then only its own (so that the user cannot back up).
    index = shared / repo_id / "index"
    index.mkdir(parents=True)
    for mode in (0o777, 0o755):
        for path in (shared / repo_id, index):
            path.chmod(mode)
        res = user.cli("-r", repo, "backup", str(src), **env, CASBACKUP_CACHE_DIR=str(shared))
        assert res.code == 0, res.err
        _one_warning(res.err, f"{shared / repo_id} is owned by root, not by you, refused")
        assert os.listdir(index) == []  # nothing of ours went into it
    # A link planted where our folder goes, to a folder of the user's: refused as well.
    (shared / repo_id / "index").rmdir()
    (shared / repo_id).rmdir()
    elsewhere = user.home / "elsewhere"
    elsewhere.mkdir()
    user.give(elsewhere)
    (shared / repo_id).symlink_to(elsewhere)
    res = user.cli("-r", repo, "backup", str(src), **env, CASBACKUP_CACHE_DIR=str(shared))
    assert res.code == 0, res.err
    _one_warning(res.err, "is a symbolic link, refused")
    assert os.listdir(elsewhere) == []
    assert user.cli("-r", repo, "check", **env).code == 0


def test_a_shared_cache_root_others_can_swap_things_in_is_refused(user: OrdinaryUser) -> None:
    repo, src, env = _setup(user)
    shared = user.base / "open-cache"  # root's, writable by all, not sticky
    shared.mkdir()
    shared.chmod(0o777)
    res = user.cli("-r", repo, "backup", str(src), **env, CASBACKUP_CACHE_DIR=str(shared))
    assert res.code == 0, res.err
    _one_warning(res.err, f"{shared} is owned by root, not by you, refused")
    assert stat.S_IMODE(shared.stat().st_mode) == 0o777  # not ours to change
