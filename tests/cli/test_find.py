"""`casbackup find`: which snapshots hold a matching path, reading trees only."""

from __future__ import annotations

import json
import os
from pathlib import Path

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.repo.ids import Kind
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.testing.fixtures import run_cli
from casbackup.vfs.find import Finder, FindOptions


def backup(repo: Repository, src: Path, app: str | None) -> Snapshot:
    result = run_backup(repo, BackupOptions(paths=(str(src),), app=app, type="full"))
    assert result.snapshot is not None
    return result.snapshot


def make_tree(root: Path) -> None:
    for rel, data in {
        "etc/app.conf": b"a = 1\n",
        "etc/other.ini": b"x",
        "lib/deep/er/app.conf": b"nested = yes\n",
        "logs/app.log": b"log" * 100,
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    os.utime(root / "etc/app.conf", ns=(1_500_000_000 * 10**9, 1_500_000_000 * 10**9))


def test_find_across_snapshots_and_apps(repo: Repository, repo_path: str, tmp_path: Path) -> None:
    web, db = tmp_path / "web", tmp_path / "db"
    web.mkdir()
    db.mkdir()
    make_tree(web)
    (db / "db.conf").write_bytes(b"db")
    s1 = backup(repo, web, "web")
    (web / "etc/app.conf").write_bytes(b"a = 2, longer\n")
    s2 = backup(repo, web, "web")
    s3 = backup(repo, db, "db")

    result = run_cli("--json", "find", "*.conf", repo=repo_path)
    assert result.code == 0, result.err
    docs = [json.loads(line) for line in result.out.splitlines()]
    found = {(d["short_id"], d["path"], d["size"]) for d in docs}
    assert found == {
        (s1.short_id, f"{web}/etc/app.conf", 6),
        (s1.short_id, f"{web}/lib/deep/er/app.conf", 13),
        (s2.short_id, f"{web}/etc/app.conf", 14),
        (s2.short_id, f"{web}/lib/deep/er/app.conf", 13),
        (s3.short_id, f"{db}/db.conf", 2),
    }
    first = next(d for d in docs if d["short_id"] == s1.short_id and d["size"] == 6)
    assert first["mtime"].startswith("2017-07-14") and first["app"] == "web"
    assert first["snapshot"] == s1.id and first["type"] == "file"

    result = run_cli("find", "app.conf", "--app", "web", "--newest", "1", repo=repo_path)
    assert result.code == 0
    assert f"snapshot {s2.short_id} (app web" in result.out and s1.short_id not in result.out
    assert result.out.count("app.conf") == 2
    assert "2 matches in 1 snapshot searched" in result.err

    # A pattern with '/' matches the path; --path limits where to look.
    result = run_cli("--json", "find", "etc/*.ini", repo=repo_path)
    assert [json.loads(x)["path"] for x in result.out.splitlines()] == [f"{web}/etc/other.ini"] * 2
    result = run_cli("--json", "find", "*.conf", "--path", f"{web}/lib", repo=repo_path)
    assert {json.loads(x)["path"] for x in result.out.splitlines()} == {
        f"{web}/lib/deep/er/app.conf"
    }
    result = run_cli("--json", "find", "**/deep", repo=repo_path)
    assert [json.loads(x)["type"] for x in result.out.splitlines()] == ["dir", "dir"]


def test_no_match_and_bad_input(repo: Repository, repo_path: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    backup(repo, src, None)
    result = run_cli("find", "*.nothing", repo=repo_path)
    assert (result.code, result.out) == (0, "")
    assert "0 matches in 1 snapshot searched" in result.err
    result = run_cli("find", "x", "--path", "/does/not/exist", repo=repo_path)
    assert result.code == 0 and result.out == ""
    result = run_cli("find", "!x", repo=repo_path)
    assert result.code == 2 and result.err.startswith("error: give a pattern")
    result = run_cli("find", "[x", repo=repo_path)
    assert result.code == 2 and "unclosed '['" in result.err
    result = run_cli("find", "x", "--newest", "0", repo=repo_path)
    assert result.code == 2


def test_unchanged_subtrees_are_searched_once(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    for i in range(30):
        (src / "lib" / f"mod{i}").mkdir()
        (src / "lib" / f"mod{i}" / "app.conf").write_bytes(b"m")
    backup(repo, src, "web")
    (src / "logs/new.log").write_bytes(b"n")  # only logs/ and its ancestors change
    backup(repo, src, "web")
    backup(repo, src, "web")

    data_loads = 0
    real = repo.load_blob

    def counting(blob_id, kind=None):  # type: ignore[no-untyped-def]
        nonlocal data_loads
        data_loads += kind == Kind.DATA
        return real(blob_id, kind)

    repo.load_blob = counting  # type: ignore[method-assign]
    finder = Finder(repo, FindOptions("app.conf"))
    matches = list(finder.run())
    assert len(matches) == 3 * 32
    assert data_loads == 0  # nothing restored, no file data read
    first_walk = len(str(src).split("/")) + 3 + 30 + 4  # path folders, etc/lib/logs, mods, deep
    assert finder.stats.trees_walked < first_walk + 2 * 10
    assert finder.stats.trees_reused >= 2  # lib/ and etc/ of the later snapshots
    # The reused results are the same as walking afresh.
    again = [(m.snapshot.id, m.path) for m in Finder(repo, FindOptions("app.conf")).run()]
    assert again == [(m.snapshot.id, m.path) for m in matches]
    # A path pattern depends on where a subtree sits, and still reuses unchanged ones.
    path_finder = Finder(repo, FindOptions(f"{src}/lib/*/app.conf"))
    assert len(list(path_finder.run())) == 3 * 30
    assert path_finder.stats.trees_reused >= 2


def test_path_spelled_with_extra_slashes_or_dots(
    repo: Repository, repo_path: str, tmp_path: Path
) -> None:
    # '--path //srv' and '/srv/./x' were searched as given: matches were printed as
    # '//srv/...', and a pattern with a '/' matched nothing below them; '/srv/../srv' and a
    # path no snapshot holds gave '0 matches' without a word.
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    backup(repo, src, None)
    wanted = f"{src}/etc/app.conf"
    for spelled in (f"/{src}", f"{src}/./etc", f"{src}//etc/"):
        result = run_cli("--json", "find", "*.conf", "--path", spelled, repo=repo_path)
        assert result.code == 0, result.err
        assert wanted in [json.loads(line)["path"] for line in result.out.splitlines()], spelled
        result = run_cli("find", f"{src}/etc/*.conf", "--path", spelled, repo=repo_path)
        assert result.out.count(wanted) == 1 and "//" not in result.out, (spelled, result.out)
    result = run_cli("find", "*.conf", "--path", f"{src}/../src", repo=repo_path)
    assert result.code == 2 and "'..'" in result.err and result.err.count("\n") == 1
    result = run_cli("find", "x", "--path", "/does/not/exist", repo=repo_path)
    assert result.code == 0 and result.out == ""
    assert "warning: /does/not/exist is in none of the 1 snapshot searched" in result.err
