"""Backups and restores run by an ordinary user (real subprocesses, tests/unprivileged.py).

Restore as a user cannot give files their owners (restic and GNU tar do not try, and
say nothing): they become the restoring user's. A setuid or setgid bit would then make
root's setuid program (or a colleague's) a setuid program of the restoring user, that
anyone who can reach it runs as that user. Like GNU tar and libarchive, the bit is left
out unless the file's owner (group) is the snapshot's, and the restore says so per file
(a warning: exit 0). A folder keeps its setgid bit: it only passes the group on.
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


def _root_env(user: OrdinaryUser) -> dict[str, str]:
    env = user.env(str(user.base / "root-home"))
    env.update(CASBACKUP_CACHE_DIR=str(user.base / "root-cache"),
               CASBACKUP_STATE_DIR=str(user.base / "root-state"))  # fmt: skip
    return env


def test_set_id_bits_come_back_only_with_their_owner(user: OrdinaryUser) -> None:
    src = user.base / "src"
    src.mkdir()
    for name, mode, owner in (("roots-setuid", 0o4755, (0, 0)),
                              ("roots-setgid", 0o2755, (0, 0)),
                              ("users-own-setuid", 0o4750, (user.uid, user.gid)),
                              ("plain", 0o640, (0, 0))):  # fmt: skip
        path = src / name
        path.write_text(name)
        os.chown(path, *owner)
        os.chmod(path, mode)  # after the chown, which clears the bits
    shared = src / "shared"
    shared.mkdir()
    os.chmod(shared, 0o2775)
    os.mkfifo(src / "fifo")
    os.mknod(src / "null", 0o644 | stat.S_IFCHR, os.makedev(1, 3))
    repo = str(user.base / "repo")
    env = _root_env(user)
    assert user.root_cli("-r", repo, "init", env=env).code == 0
    assert user.root_cli("-r", repo, "backup", str(src), env=env).code == 0
    user.give(repo)
    target = user.home / "out"
    res = user.cli("-r", repo, "restore", "latest", "--target", str(target))
    assert res.code == 0, res.err
    out = target / str(src).lstrip("/")
    modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in out.iterdir()}
    assert modes == {"roots-setuid": 0o755, "roots-setgid": 0o755, "users-own-setuid": 0o4750,
                     "plain": 0o640, "shared": 0o2775, "fifo": 0o644}  # fmt: skip
    assert {p.lstat().st_uid for p in out.iterdir()} == {user.uid}
    rel = str(src).lstrip("/")
    ug = f"{user.uid}:{user.gid}"
    assert sorted(res.err.splitlines()) == [
        # said once: the user's own file is not counted
        "note: 5 files of other users in the snapshot are yours here: owners are restored"
        " only by a restore run as root",
        f"warning: {rel}/null: device node skipped (needs root)",
        f"warning: {rel}/roots-setgid: setgid bit not restored: owner 0:0 in the snapshot,"
        f" {ug} here (a restore as root keeps them)",
        f"warning: {rel}/roots-setuid: setuid bit not restored: owner 0:0 in the snapshot,"
        f" {ug} here (a restore as root keeps them)",
    ], res.err
    # Root's restore gives owners and bits back.
    again = user.base / "as-root"
    assert user.root_cli("-r", repo, "restore", "latest", "--target", str(again), env=env).code == 0
    back = again / rel
    assert stat.S_IMODE((back / "roots-setuid").stat().st_mode) == 0o4755
    assert (back / "users-own-setuid").stat().st_uid == user.uid


def test_what_the_user_cannot_read_is_named_once_and_read_next_time(user: OrdinaryUser) -> None:
    src = user.home / "project"
    (src / "ok" / "deep").mkdir(parents=True)
    (src / "ok" / "deep" / "d.txt").write_text("deep")
    (src / "ok" / "a.txt").write_text("a")
    for folder in ("no-search", "no-list"):
        (src / folder).mkdir()
        (src / folder / "inner.txt").write_text(folder)
    (src / "locked.txt").write_text("locked")
    (src / "roots.txt").write_text("root's")
    user.give(src)
    os.chown(src / "roots.txt", 0, 0)
    os.chmod(src / "roots.txt", 0o600)
    os.chmod(src / "locked.txt", 0)
    os.chmod(src / "no-search", 0o644)  # may list names, may not reach them
    os.chmod(src / "no-list", 0o311)  # may reach names, may not list them
    repo = str(user.home / "repo")
    assert user.cli("-r", repo, "init").code == 0
    res = user.cli("-r", repo, "backup", str(src))
    assert res.code == 3, res.err
    named = [line for line in res.err.splitlines() if line.startswith("warning: ")]
    assert sorted(named) == [f"warning: {src}/{name}: Permission denied" for name in
                             ("locked.txt", "no-list", "no-search/inner.txt", "roots.txt")]  # fmt: skip
    listed = user.cli("-r", repo, "ls", "latest").out.split()
    assert f"{src}/ok/deep/d.txt" in listed and f"{src}/locked.txt" not in listed
    # Readable now: the next backup reads them, none taken from the parent as it was.
    os.chmod(src / "roots.txt", 0o644)
    os.chmod(src / "locked.txt", 0o600)
    os.chmod(src / "no-search", 0o755)
    os.chmod(src / "no-list", 0o755)
    res = user.cli("-r", repo, "backup", str(src))
    assert res.code == 0, res.err
    out = user.home / "out"
    assert user.cli("-r", repo, "restore", "latest", "--target", str(out)).code == 0
    back = out / str(src).lstrip("/")
    for rel, text in (("locked.txt", "locked"), ("roots.txt", "root's"),
                      ("no-search/inner.txt", "no-search"), ("no-list/inner.txt", "no-list"),
                      ("ok/deep/d.txt", "deep")):  # fmt: skip
        assert (back / rel).read_text() == text, rel


def test_umask_changes_neither_repository_nor_restored_modes(user: OrdinaryUser) -> None:
    # The repository is private whatever the umask (restic's 0700/0600); restored entries
    # get the snapshot's modes, as restic's do (GNU tar applies the umask for a user).
    src = user.home / "src"
    src.mkdir()
    (src / "shared.txt").write_text("x")
    os.chmod(src / "shared.txt", 0o664)
    user.give(src)
    repo = str(user.home / "repo")
    for umask, name in ((0o000, "open"), (0o077, "closed")):
        old = os.umask(umask)  # the subprocess inherits it
        try:
            assert user.cli("-r", f"{repo}-{name}", "init").code == 0
            assert user.cli("-r", f"{repo}-{name}", "backup", str(src)).code == 0
            out = user.home / f"out-{name}"
            res = user.cli("-r", f"{repo}-{name}", "restore", "latest", "--target", str(out))
            assert res.code == 0, res.err
        finally:
            os.umask(old)
        modes = {stat.S_IMODE(p.lstat().st_mode) for p in Path(f"{repo}-{name}").rglob("*")}
        assert modes <= {0o700, 0o600}, (name, modes)
        assert stat.S_IMODE((out / str(src).lstrip("/") / "shared.txt").stat().st_mode) == 0o664


def _closed_folders_snapshot(user: OrdinaryUser) -> str:
    """A repository of the user's with root's snapshot of folders their owner may not read
    (0000, 0311) or write (0555), and a file nobody may read (0000)."""
    src = user.base / "closed"
    for folder in ("none/sub", "search-only/sub", "read-only/sub"):
        (src / folder).mkdir(parents=True)
        (src / folder / "f.txt").write_text(folder)
    (src / "none" / "z.txt").write_text("z")
    (src / "unreadable.txt").write_text("no one reads this")
    os.chmod(src / "unreadable.txt", 0)
    for folder, mode in (("none/sub", 0), ("none", 0), ("search-only", 0o311),
                         ("read-only/sub", 0o555), ("read-only", 0o555)):  # fmt: skip
        os.chmod(src / folder, mode)
    repo = str(user.base / "closed-repo")
    env = _root_env(user)
    assert user.root_cli("-r", repo, "init", env=env).code == 0
    assert user.root_cli("-r", repo, "backup", str(src), env=env).code == 0
    user.give(repo)
    return repo


def test_a_second_restore_opens_the_folders_the_first_closed(user: OrdinaryUser) -> None:
    # The first restore left 'none' 0000 and 'search-only' 0311, as the snapshot has them;
    # a second one (--overwrite, or a resume) said 'cannot open folder: Permission
    # denied' for each, exit 26, and restored nothing below them.
    repo = _closed_folders_snapshot(user)
    target = user.home / "out"
    for extra in ((), ("--overwrite",)):
        res = user.cli("-r", repo, "restore", "latest", "--target", str(target), *extra)
        assert res.code == 0, (extra, res.err)
    top = target / str(user.base / "closed").lstrip("/")
    modes = {str(p.relative_to(top)): stat.S_IMODE(p.lstat().st_mode) for p in [
        top / "none", top / "search-only", top / "read-only", top / "read-only" / "sub"]}  # fmt: skip
    assert modes == {"none": 0, "search-only": 0o311, "read-only": 0o555,
                     "read-only/sub": 0o555}  # fmt: skip
    os.chmod(top / "none", 0o700)
    os.chmod(top / "none" / "sub", 0o700)
    assert (top / "none" / "sub" / "f.txt").read_text() == "none/sub"


def test_a_user_verifies_folders_and_files_their_owner_may_not_read(user: OrdinaryUser) -> None:
    # The service verifies as its own user: the sandbox's 0000 folders and file came back
    # with their modes and could not be read back ('folder was not restored: Permission
    # denied'), and a sound snapshot was recorded as FAILED (recover then skips it).
    repo = _closed_folders_snapshot(user)
    res = user.cli("-r", repo, "verify", "latest")
    assert res.code == 0, res.err
    assert "verified OK: 5 files" in res.out, res.out


def test_a_source_behind_a_closed_folder_is_not_said_to_be_missing(user: OrdinaryUser) -> None:
    # It said 'source ... does not exist' for a file that exists in a folder the user
    # may not search (a path in a script, copied from root's crontab).
    closed = user.base / "roots-only"
    (closed / "in").mkdir(parents=True)
    (closed / "in" / "f").write_text("x")
    os.chmod(closed, 0o700)
    repo = str(user.home / "repo")
    assert user.cli("-r", repo, "init").code == 0
    res = user.cli("-r", repo, "backup", str(closed / "in" / "f"))
    assert res.code == 23
    assert res.err == f"error: cannot read source {closed}/in/f: Permission denied\n", res.err
    res = user.cli("-r", repo, "backup", str(user.base / "nothing-here"))
    assert res.code == 23 and "nothing-here does not exist" in res.err
