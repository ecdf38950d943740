"""Names from a source tree or a repository never reach the terminal as control characters.

issue 12, kind 8: a local user names a file ``esc\\x1b]0;title\\x07`` (an OSC sequence:
retitles the terminal; others rewrite the screen or, on some terminals, write files); `ls`,
`ls -l`, `find` and `diff` printed it raw, as did warnings and errors naming a path.
Shown escaped (``\\x1b``); ``--json`` keeps the raw name, JSON-encoded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from casbackup.testing.fixtures import run_cli

HOSTILE = "esc\x1b]0;PWNED\x07\u009b2J\u202enwo"  # OSC + BEL, C1 CSI, right-to-left override


def _raw_controls(text: str) -> list[str]:
    return [c for c in text if (ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F or c == "\u202e"]  # fmt: skip


@pytest.fixture
def hostile_repo(repo_path: str, tmp_path: Path) -> tuple[str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    (src / "plain.txt").write_bytes(b"1")
    first = run_cli("--json", "backup", str(src), repo=repo_path)
    assert first.code == 0, first.err
    (src / HOSTILE).write_bytes(b"x")
    (src / "link").symlink_to(HOSTILE)
    res = run_cli("backup", str(src), repo=repo_path)
    assert res.code == 0, res.err
    return repo_path, src


def _ids(repo_path: str) -> list[str]:
    res = run_cli("--json", "snapshots", repo=repo_path)
    docs = json.loads(res.out)
    return [d["id"] for d in sorted(docs, key=lambda d: d["time"])]


@pytest.mark.parametrize(
    "args", [("ls", "latest"), ("ls", "-l", "latest"), ("find", "esc*"), ("diff",)]
)
def test_listings_escape_names(hostile_repo: tuple[str, Path], args: tuple[str, ...]) -> None:
    repo_path, _ = hostile_repo
    if args == ("diff",):
        args = ("diff", *_ids(repo_path))
    res = run_cli(*args, repo=repo_path)
    assert res.code == 0, res.err
    assert "esc\\x1b]0;PWNED\\x07" in res.out
    assert _raw_controls(res.out + res.err) == []


def test_json_keeps_the_raw_name(hostile_repo: tuple[str, Path]) -> None:
    repo_path, src = hostile_repo
    res = run_cli("--json", "ls", "latest", repo=repo_path)
    names = [json.loads(line).get("name") for line in res.out.splitlines() if line.strip()]
    assert HOSTILE in names


def test_errors_and_warnings_escape_names(hostile_repo: tuple[str, Path], tmp_path: Path) -> None:
    repo_path, src = hostile_repo
    target = tmp_path / "t"
    assert run_cli("restore", "latest", "-t", str(target), repo=repo_path).code == 0
    restored = target / str(src).lstrip("/")
    (restored / "link").unlink()  # only the hostile name is left to conflict
    (restored / "plain.txt").unlink()
    again = run_cli("restore", "latest", "-t", str(target), repo=repo_path)
    assert again.code != 0
    assert "esc\\x1b]0;PWNED" in again.err
    assert _raw_controls(again.err) == []


def test_fields_of_a_forged_snapshot_are_escaped(repo_path: str, tmp_path: Path) -> None:
    """Host, user, app, tags and paths come from the snapshot record (forged by whoever
    holds the key): snapshots, apps and forget print them escaped."""
    from dataclasses import replace

    from casbackup.testing.fixtures import open_repo

    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"1")
    assert run_cli("backup", str(src), repo=repo_path).code == 0
    with open_repo(repo_path) as repo:
        (snap,) = repo.list_snapshots()
        repo.save_snapshot(replace(snap, host="h" + HOSTILE, user="u" + HOSTILE, app="a" + HOSTILE,
                                   tags=("t" + HOSTILE,), paths=("/p" + HOSTILE,)))  # fmt: skip
    for args in (("snapshots",), ("snapshots", "--group-by", "host"), ("apps",),
                 ("forget", "--keep-last", "5", "--dry-run"), ("check",)):  # fmt: skip
        res = run_cli(*args, repo=repo_path)
        assert "Traceback" not in res.err, (args, res.err)
        assert _raw_controls(res.out + res.err) == [], args
    assert "esc\\x1b]0;PWNED\\x07" in run_cli("snapshots", repo=repo_path).out
