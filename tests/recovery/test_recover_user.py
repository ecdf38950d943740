"""recover run by an ordinary user (real subprocesses, tests/unprivileged.py).

Never exercised before: an ordinary user recovering an application of theirs (files and an
SQLite database in their home) in place was refused with "the target / cannot be written"
(the recovery in place checked, and would have put its journal in, the root of the machine),
and once past that, a recovery started from a folder the user cannot write put everything
back and then failed (exit 30) for want of a place for its report. What is refused is one
line saying why, before anything is touched.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.recovery.places import landed
from tests.unprivileged import OrdinaryUser, ordinary_user, root_owned


@pytest.fixture
def user() -> Iterator[OrdinaryUser]:
    yield from ordinary_user()


def _rows(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM notes").fetchone()[0])
    finally:
        conn.close()


def _app(user: OrdinaryUser, extra_source: Path | None = None) -> tuple[Path, dict[str, str]]:
    """The user's application (~/app with ~/app/data/notes.db), backed up and verified by
    the user; the environment that names its config."""
    app = user.home / "app"
    (app / "conf").mkdir(parents=True)
    (app / "conf" / "app.ini").write_text("port = 8080\n")
    (app / "data").mkdir()
    conn = sqlite3.connect(app / "data" / "notes.db")
    conn.execute("CREATE TABLE notes (body TEXT)")
    conn.executemany("INSERT INTO notes VALUES (?)", [(f"n{i}",) for i in range(30)])
    conn.commit()
    conn.close()
    os.chmod(app / "data" / "notes.db", 0o600)
    sources = ", ".join(f'"{s}"' for s in (app, *([extra_source] if extra_source else [])))
    config = user.home / "casbackup.toml"
    config.write_text(
        f'[repository]\nlocation = "{user.home / "repo"}"\n[[applications]]\nname = "notes"\n'
        f'sources = [{sources}]\n[[applications.databases]]\nname = "notes"\nengine = "sqlite"\n'
        f'path = "{app / "data" / "notes.db"}"\n'
    )
    user.give(user.home)
    env = {"CASBACKUP_CONFIG": str(config)}
    assert user.cli("init", "--insecure-test-kdf", **env).code == 0
    done = user.cli("backup", "--app", "notes", "--auto-verify", **env)
    assert done.code == 0, done.err
    return app, env


def test_a_user_recovers_their_application_below_a_target_and_in_place(
    user: OrdinaryUser,
) -> None:
    app, env = _app(user)
    target = user.home / "rebuilt"
    done = user.cli("recover", "--app", "notes", "--target", str(target), **env)
    assert done.code == 0, done.err
    back = landed(target, app)
    assert (back / "conf" / "app.ini").read_text() == "port = 8080\n"
    assert _rows(back / "data" / "notes.db") == 30
    assert not root_owned(target)
    # The machine lost the application; the user puts it back where it was, from a folder
    # they cannot write (the fixture's base folder is root's).
    shutil.rmtree(app)
    done = user.cli("recover", "--app", "notes", "--in-place", **env)
    assert done.code == 0, (done.out, done.err)
    assert _rows(app / "data" / "notes.db") == 30
    assert (app / "data" / "notes.db").stat().st_uid == user.uid
    report = user.home / ".local" / "state" / "casbackup" / "recovery-report-notes.json"
    assert f"report: {report} and " in done.out and report.exists()
    assert not (user.home / ".local" / "state" / "casbackup" / "recover-in-place.json").exists()


def test_what_a_user_cannot_write_is_refused_in_one_line(user: OrdinaryUser) -> None:
    theirs = user.base / "rootplace" / "cfg"  # the user's folder in a folder of root's
    theirs.mkdir(parents=True)
    (theirs / "x.conf").write_text("x\n")
    user.give(theirs)
    app, env = _app(user, theirs)
    cases = [
        (("--target", "/root/elsewhere"),
         "the target /root/elsewhere cannot be written: no permission to write in /root"),
        (("--target", str(user.home / "t"), "--db-into", "notes=/etc/notes.db"),
         "database 'notes': cannot write /etc/notes.db: /etc is not writable"),
    ]  # fmt: skip
    for args, why in cases:
        res = user.cli("recover", "--app", "notes", *args, **env)
        assert res.code == 30, (res.out, res.err)
        assert res.err == f"error: nothing was changed: {why}\n", res.err
    assert not (user.home / "t").exists()
    shutil.rmtree(theirs)
    shutil.rmtree(app)
    res = user.cli("recover", "--app", "notes", "--in-place", **env)
    assert res.code == 30, (res.out, res.err)
    assert res.err == (
        f"error: nothing was changed: source {theirs} cannot go back in place: the target "
        f"{theirs} cannot be written: no permission to write in {theirs.parent}\n"
    )
    assert not app.exists()  # the source it could write was not restored either
    # As root (who can), the same recovery puts both back.
    subprocess.run(["chown", "-R", "root:root", str(user.home / "repo")], check=True)
    env_root = {**user.env(str(user.base / "root-home")), **env}
    env_root["CASBACKUP_CACHE_DIR"] = str(user.base / "root-cache")
    env_root["CASBACKUP_STATE_DIR"] = str(user.base / "root-state")
    done = user.root_cli("recover", "--app", "notes", "--in-place", env=env_root)
    assert done.code == 0, done.err
    assert (theirs / "x.conf").read_text() == "x\n" and _rows(app / "data" / "notes.db") == 30
