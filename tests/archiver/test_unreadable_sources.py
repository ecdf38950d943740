"""Sources that cannot be read at all, backed up by an ordinary user (real CLI,
tests/unprivileged.py) and by root.

Before, one source the user could not read failed the whole backup: a folder of mode
000 was a usage error (exit 2, from click's own readable check), a source under a folder
the user may not search was exit 23, and so was one source of several that did not
exist; nothing of the others was stored. Now, as restic and borg do: the other sources
are stored, each one not read is a warning line naming it, the snapshot records it in
its errors (partial), the exit code is 3, and the next backup reads it again. Only when
no source at all can be looked at does the backup fail (exit 23, nothing to store).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unprivileged import OrdinaryUser, ordinary_user


@pytest.fixture
def user() -> Iterator[OrdinaryUser]:
    yield from ordinary_user()


def _setup(user: OrdinaryUser) -> tuple[str, Path, Path, Path, Path]:
    """A repository of the user's; a readable source, a folder of mode 000 the user owns,
    a source below a root-only folder, and a path that does not exist."""
    repo = str(user.home / "repo")
    assert user.cli("-r", repo, "init", "--insecure-test-kdf").code == 0
    docs = user.home / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("readable")
    closed = user.home / "closed"
    closed.mkdir()
    (closed / "b.txt").write_text("behind mode 000")
    user.give(docs, closed)
    os.chmod(closed, 0)
    secret_top = user.base / "rootonly"
    (secret_top / "secret").mkdir(parents=True)
    (secret_top / "secret" / "c.txt").write_text("root's")
    os.chmod(secret_top, 0o700)
    return repo, docs, closed, secret_top / "secret", user.base / "gone"


def _snapshots(user: OrdinaryUser, repo: str) -> list[dict[str, object]]:
    res = user.cli("-r", repo, "--json", "snapshots")
    assert res.code == 0, res.err
    return json.loads(res.out)  # type: ignore[no-any-return]


def _files(user: OrdinaryUser, repo: str, snap: str) -> set[str]:
    res = user.cli("-r", repo, "ls", "--recursive", snap)
    assert res.code == 0, res.err
    return {line.split()[-1].rsplit("/", 1)[-1] for line in res.out.splitlines() if line}


def test_the_readable_sources_are_stored_and_each_other_one_is_named(user: OrdinaryUser) -> None:
    repo, docs, closed, secret, gone = _setup(user)
    res = user.cli("-r", repo, "backup", str(docs), str(closed), str(secret), str(gone))
    assert res.code == 3, (res.code, res.err)
    assert "Traceback" not in res.err
    warnings = [line for line in res.err.splitlines() if line.startswith("warning: ")]
    assert f"warning: {closed}: Permission denied" in warnings
    assert f"warning: {secret}: cannot read source: Permission denied" in warnings
    assert f"warning: {gone}: source does not exist" in warnings
    assert "error: snapshot saved, but 3 files or folders could not be read" in res.err
    (snap,) = _snapshots(user, repo)
    assert snap["summary"]["errors"] == 3  # type: ignore[index]
    assert len(snap["errors"]) == 3  # type: ignore[arg-type]
    # Every source stays in the snapshot's paths: the next run is of the same group.
    assert sorted(snap["paths"]) == sorted(map(str, (docs, closed, secret, gone)))  # type: ignore[arg-type]
    assert "a.txt" in _files(user, repo, str(snap["id"]))
    listing = user.cli("-r", repo, "snapshots").out
    assert "full (partial)" in listing, listing
    # Readable again, and back: the next backup (an incremental of this one) stores them.
    os.chmod(closed, 0o755)
    os.chmod(secret.parent, 0o755)
    gone.mkdir()
    (gone / "d.txt").write_text("back")
    user.give(gone)
    again = user.cli("-r", repo, "backup", str(docs), str(closed), str(secret), str(gone))
    assert again.code == 0, again.err
    latest = _snapshots(user, repo)[-1]
    assert latest["parent"] == snap["id"] and latest["errors"] == []
    assert (
        "(partial)" not in user.cli("-r", repo, "snapshots").out.split(str(latest["short_id"]))[1]
    )
    assert {"a.txt", "b.txt", "c.txt", "d.txt"} <= _files(user, repo, str(latest["id"]))


def test_no_source_that_can_be_looked_at_fails_the_backup(user: OrdinaryUser) -> None:
    repo, _docs, _closed, secret, gone = _setup(user)
    res = user.cli("-r", repo, "backup", str(secret), str(gone))
    assert res.code == 23, res.err
    assert res.err.strip() == (
        f"error: cannot read source {secret}: Permission denied; source {gone} does not exist"
    )
    assert _snapshots(user, repo) == []


def test_a_source_folder_of_mode_000_alone_is_a_partial_backup(user: OrdinaryUser) -> None:
    """It exists and can be looked at: as restic, a snapshot (empty) and exit 3, not the
    usage error (exit 2) click's readable check made it."""
    repo, _docs, closed, _secret, _gone = _setup(user)
    res = user.cli("-r", repo, "backup", str(closed))
    assert res.code == 3, res.err
    assert f"warning: {closed}: Permission denied" in res.err
    assert len(_snapshots(user, repo)) == 1


def test_an_application_with_an_unreadable_source(user: OrdinaryUser) -> None:
    """``backup --app``: the same rule for the sources of a config's application."""
    repo, docs, _closed, secret, _gone = _setup(user)
    config = user.home / "casbackup.toml"
    config.write_text(
        f'[repository]\nlocation = "{repo}"\npassword_env = "CASBACKUP_PASSWORD"\n\n[[applications]]\nname = "shop"\n'
        f'sources = ["{docs}", "{secret}"]\n'
    )
    user.give(config)
    res = user.cli("--config", str(config), "backup", "--app", "shop")
    assert res.code == 3, res.err
    assert f"warning: {secret}: cannot read source: Permission denied" in res.err
    (snap,) = _snapshots(user, repo)
    assert snap["app"] == "shop" and "a.txt" in _files(user, repo, str(snap["id"]))
