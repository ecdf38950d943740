"""A source that is a symlink: the link and what it points to are both backed up.

Found by helper-55's recover attack and reproduced: an application whose source is a link
(/srv/app -> /data/app) was backed up as the link alone, '0 files', exit 0, and recover
skipped it with a warning while its report said success: the application's data was never
in any snapshot.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from casbackup.testing.fixtures import make_repo, run_cli


def _repo(tmp_path: Path) -> str:
    repo = str(tmp_path / "repo")
    make_repo(repo).close()
    return repo


def test_a_symlink_source_brings_what_it_points_to(tmp_path: Path) -> None:
    data = tmp_path / "data" / "app"
    data.mkdir(parents=True)
    (data / "a.txt").write_text("hello\n")
    link = tmp_path / "link"
    link.symlink_to(data)
    repo = _repo(tmp_path)
    out = run_cli("backup", str(link), repo=repo)
    assert out.code == 0, out.err
    assert f"source {link} is a symlink to {data}: the link and what it points to" in out.err
    (snap,) = json.loads(run_cli("--json", "snapshots", repo=repo).out)
    assert snap["paths"] == [str(link), str(data)]
    listing = run_cli("ls", "latest", repo=repo).out.splitlines()
    assert str(link) in listing and str(data / "a.txt") in listing
    target = tmp_path / "restored"
    assert run_cli("restore", "latest", "--target", str(target), repo=repo).code == 0
    restored = target / str(link).lstrip("/")
    assert restored.is_symlink() and os.readlink(restored) == str(data)
    assert (target / str(data).lstrip("/") / "a.txt").read_text() == "hello\n"


def test_a_target_another_source_covers_is_not_added_twice(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "app").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(data / "app")
    repo = _repo(tmp_path)
    assert run_cli("backup", str(data), str(link), repo=repo).code == 0
    (snap,) = json.loads(run_cli("--json", "snapshots", repo=repo).out)
    assert sorted(snap["paths"]) == sorted([str(data), str(link)])


def test_a_dangling_symlink_source_is_said(tmp_path: Path) -> None:
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "gone")
    repo = _repo(tmp_path)
    out = run_cli("backup", str(link), repo=repo)
    assert out.code == 0, out.err
    assert "which does not exist: only the link is backed up" in out.err


def test_recover_of_an_application_whose_source_is_a_link(tmp_path: Path) -> None:
    data = tmp_path / "data" / "app"
    data.mkdir(parents=True)
    (data / "a.txt").write_text("hello\n")
    link = tmp_path / "link"
    link.symlink_to(data)
    repo = _repo(tmp_path)
    config = tmp_path / "c.toml"
    config.write_text(
        f'[repository]\nlocation = "{repo}"\n[[applications]]\nname = "web"\nsources = ["{link}"]\n'
    )
    env = {"CASBACKUP_CONFIG": str(config)}
    assert run_cli("backup", "--app", "web", env=env).code == 0
    target = tmp_path / "rebuilt"
    out = run_cli("recover", "--app", "web", "--target", str(target), "--allow-unverified",
                  env=env)  # fmt: skip
    assert out.code == 0, out.err
    assert "the link is not recreated in the target" in out.err
    # The link's target is the source recovered, at its own path below the target.
    assert (target / str(data).lstrip("/") / "a.txt").read_text() == "hello\n"
