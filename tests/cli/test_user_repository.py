"""A user's own repository and cache, when root has been there too (``sudo casbackup``).

Real subprocesses: the CLI as an ordinary user made for the test (tests/unprivileged.py)
and as root. Found by running ``sudo casbackup backup`` into a user's repository and
with the user's HOME: root left its folders and files there (0700/0600, root's), and the
user's own next backup, check and prune failed with "writing locks/...: permission
denied", "cannot open the index cache at ...: [Errno 13] Permission denied", or picked
an older snapshot as 'latest' without a word.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unprivileged import OrdinaryUser, ordinary_user, root_owned


@pytest.fixture
def user() -> Iterator[OrdinaryUser]:
    yield from ordinary_user()


def _source(user: OrdinaryUser) -> Path:
    src = user.home / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a" * 3000)
    (src / "sub" / "b.txt").write_text("b" * 5000)
    user.give(src)
    return src


def _root_env(user: OrdinaryUser, **extra: str) -> dict[str, str]:
    """Root's environment, with a cache and state of its own (not /root's real ones)."""
    env = user.env(str(user.base / "root-home"))
    env.update(CASBACKUP_CACHE_DIR=str(user.base / "root-cache"),
               CASBACKUP_STATE_DIR=str(user.base / "root-state"), **extra)  # fmt: skip
    return env


def test_root_backup_into_a_users_repository_leaves_it_the_users(user: OrdinaryUser) -> None:
    repo, src = str(user.home / "repo"), _source(user)
    assert user.cli("-r", repo, "init").code == 0
    secret = user.base / "only-root-reads-this"
    secret.write_text("s" * 4000)
    os.chmod(secret, 0o600)
    res = user.root_cli("-r", repo, "backup", str(src), str(secret), env=_root_env(user))
    assert res.code == 0, res.err
    # New folders (data/xx, index, snapshots, locks) and files: the repository's owner's.
    assert root_owned(Path(repo)) == []
    for args in (["backup", str(src)], ["check", "--read-data"],
                 ["forget", "--keep-last", "1"], ["prune"]):  # fmt: skip
        res = user.cli("-r", repo, *args)
        assert res.code == 0, (args, res.err)
    # Root's own repository stays root's.
    own = str(user.base / "root-repo")
    assert user.root_cli("-r", own, "init", env=_root_env(user)).code == 0
    assert user.root_cli("-r", own, "backup", str(src), env=_root_env(user)).code == 0
    assert {os.lstat(p).st_uid for p in Path(own).rglob("*")} == {0}


def test_a_refusal_names_the_entry_root_owns_and_the_way_back(user: OrdinaryUser) -> None:
    # A repository written by root before this fix (or by hand): its locks folder is root's.
    repo, src = str(user.home / "repo"), _source(user)
    assert user.cli("-r", repo, "init").code == 0
    assert user.cli("-r", repo, "backup", str(src)).code == 0
    locks = Path(repo) / "locks"
    locks.mkdir(exist_ok=True)
    os.chown(locks, 0, 0)
    os.chmod(locks, 0o700)
    res = user.cli("-r", repo, "backup", str(src))
    assert res.code == 25
    assert f"locks is owned by root, not by you ({user.name})" in res.err, res.err
    assert f"'sudo chown -R {user.name}: {repo}' gives the repository back to you" in res.err
    assert "Traceback" not in res.err and len(res.err.splitlines()) == 1, res.err
    # A repository root created: said of the folder itself.
    theirs = str(user.base / "roots")
    assert user.root_cli("-r", theirs, "init", env=_root_env(user)).code == 0
    res = user.cli("-r", theirs, "snapshots")
    assert res.code == 25
    assert f"the repository folder is owned by root, not by you ({user.name})" in res.err


def test_latest_says_which_snapshot_it_could_not_read(user: OrdinaryUser) -> None:
    repo, src = str(user.home / "repo"), _source(user)
    assert user.cli("-r", repo, "init").code == 0
    assert user.cli("-r", repo, "backup", str(src)).code == 0
    (src / "a.txt").write_text("changed")
    assert user.cli("-r", repo, "backup", str(src)).code == 0
    newest = max((Path(repo) / "snapshots").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    os.chown(newest, 0, 0)  # as root's run of an older version left it
    res = user.cli("-r", repo, "restore", "latest", "--target", str(user.home / "out"))
    assert res.code == 0, res.err
    # The older snapshot comes back, and the restore says it is not the newest one.
    assert (user.home / "out" / str(src).lstrip("/") / "a.txt").read_text() == "a" * 3000
    assert f"warning: snapshot {newest.name[:8]} is unreadable: " in res.err, res.err
    assert "'latest' is the newest readable one, " in res.err


def test_root_with_the_users_home_keeps_out_of_the_users_cache(user: OrdinaryUser) -> None:
    # sudo -E, older Ubuntu's sudo: root runs with the user's HOME.
    repo, src = str(user.home / "repo"), _source(user)
    assert user.cli("-r", repo, "init").code == 0
    assert user.cli("-r", repo, "backup", str(src)).code == 0
    root_home = pwd.getpwuid(0).pw_dir
    # The repository's id names its cache and state folders (the user's, made just now).
    [repo_id] = _entries(str(user.home / ".local" / "state" / "casbackup"))
    theirs = [os.path.join(root_home, d, repo_id)
              for d in (".cache/casbackup", ".local/state/casbackup")]  # fmt: skip
    assert not any(os.path.exists(p) for p in theirs)  # not root's before: removed after
    try:
        res = user.root_cli("-r", repo, "backup", str(src), env=user.env())
        assert res.code == 0, res.err
        assert root_owned(user.home) == []
        assert all(os.path.isdir(p) for p in theirs)  # root's cache and state: root's home
        for args in (["backup", str(src)], ["check"], ["prune"]):
            res = user.cli("-r", repo, *args)
            assert res.code == 0 and "ermission denied" not in res.err, (args, res.err)
    finally:  # root's cache and state of this repository only, in root's real home
        for path in theirs:
            shutil.rmtree(path, ignore_errors=True)


def _entries(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def test_a_cache_root_made_says_whose_it_is(user: OrdinaryUser) -> None:
    repo, src = str(user.home / "repo"), _source(user)
    assert user.cli("-r", repo, "init").code == 0
    cache = user.home / ".cache" / "casbackup"
    cache.mkdir(parents=True)
    os.chown(user.home / ".cache", user.uid, user.gid)
    os.chmod(cache, 0o700)  # root's, as a root run with the user's HOME left it
    # The backup goes on without it (a temporary cache: tests/cli/test_cache_unusable.py),
    # and its warning says how to get it back.
    res = user.cli("-r", repo, "backup", str(src))
    assert res.code == 0, res.err
    assert f"{cache} is owned by root, not by you ({user.name})" in res.err, res.err
    assert f"'sudo chown -R {user.name}: {cache}' gives it back" in res.err
    assert "[Errno" not in res.err, res.err
    # A home the user cannot write (a service account's /nonexistent): where to go instead.
    res = user.cli("-r", repo, "backup", str(src), home="/nonexistent")
    assert res.code == 0, res.err
    assert "set CASBACKUP_CACHE_DIR to a folder you can write" in res.err, res.err
    assert "[Errno" not in res.err
    # With a cache elsewhere, the state cannot be saved either: a warning saying where to.
    cache_dir = user.home / "elsewhere"
    cache_dir.mkdir()
    user.give(cache_dir)
    res = user.cli("-r", repo, "backup", str(src), home="/nonexistent",
                   CASBACKUP_CACHE_DIR=str(cache_dir))  # fmt: skip
    assert res.code == 0, res.err
    assert "state.json: permission denied (set CASBACKUP_STATE_DIR to a folder" in res.err


def test_a_lock_root_left_ages_like_any_other(user: OrdinaryUser) -> None:
    # A 'sudo casbackup backup' killed before this fix left its lock, 0600 and root's, in
    # the user's locks folder: the user could not read it, and it stayed "0s old" for ever.
    repo, src = str(user.home / "repo"), _source(user)
    assert user.cli("-r", repo, "init").code == 0
    assert user.cli("-r", repo, "backup", str(src)).code == 0
    lock = Path(repo) / "locks" / ("ab" * 16)
    lock.write_bytes(os.urandom(200))
    os.chmod(lock, 0o600)
    res = user.cli("-r", repo, "backup", str(src))
    assert res.code == 11
    assert f"locks/{lock.name} is owned by root, not by you ({user.name})" in res.err, res.err
    hour_ago = time.time() - 3600
    os.utime(lock, (hour_ago, hour_ago))
    res = user.cli("-r", repo, "unlock")
    age = re.search(r"removed exclusive lock by .*, (\d+)s old", res.out)
    assert res.code == 0 and age is not None and int(age.group(1)) >= 3600, res
    assert not lock.exists()
    assert user.cli("-r", repo, "backup", str(src)).code == 0


def test_a_home_backed_up_leaves_out_its_repository_and_the_cache(user: OrdinaryUser) -> None:
    # The repository in the home it backs up, the cache under ~/.cache: each backup
    # stored the packs the one before had written, and the cache changing as it was read.
    repo, src = str(user.home / "repo"), _source(user)
    assert user.cli("-r", repo, "init").code == 0
    first = user.cli("-r", repo, "backup", str(user.home))
    assert first.code == 0, first.err
    assert f"the repository {repo} is inside the sources: it is left out" in first.err
    second = user.cli("-r", repo, "backup", str(user.home))
    assert second.code == 0, second.err
    listed = user.cli("-r", repo, "ls", "latest").out.splitlines()
    assert f"{src}/sub/b.txt" in listed
    cache = str(user.home / ".cache")
    inside = [p for p in listed if p.startswith((repo, cache + "/casbackup"))]
    assert inside == [], inside
