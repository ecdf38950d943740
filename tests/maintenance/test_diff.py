"""diff: every kind of change, and equal subtrees are never read."""

from __future__ import annotations

import json
import os

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.maintenance.diff import diff_snapshots
from casbackup.testing.fixtures import run_cli


def test_every_kind_of_change(repo, repo_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    for d in ("same/deep/deeper", "gone", "changes"):
        (src / d).mkdir(parents=True)
    for i in range(20):
        (src / "same" / "deep" / "deeper" / f"f{i}").write_bytes(os.urandom(100))
    (src / "gone" / "x").write_bytes(b"x")
    (src / "changes" / "content").write_bytes(b"old")
    (src / "changes" / "meta").write_bytes(b"meta")
    (src / "changes" / "kind").write_bytes(b"file")
    os.symlink("a", src / "changes" / "link")
    old = run_backup(repo, BackupOptions(paths=(str(src),))).snapshot

    (src / "gone" / "x").unlink()
    (src / "gone").rmdir()
    (src / "changes" / "content").write_bytes(b"new content")
    os.chmod(src / "changes" / "meta", 0o600)
    (src / "changes" / "kind").unlink()
    (src / "changes" / "kind").mkdir()
    (src / "changes" / "kind" / "inside").write_bytes(b"i")
    (src / "changes" / "link").unlink()
    os.symlink("b", src / "changes" / "link")
    (src / "added").write_bytes(b"+")
    new = run_backup(repo, BackupOptions(paths=(str(src),))).snapshot

    base = str(src).encode()
    differ, changes = diff_snapshots(repo, old.root, new.root, str(src))
    got = {(c.code, c.path[len(base) :].decode()) for c in changes}
    assert got == {
        ("+", "/added"), ("-", "/gone"), ("-", "/gone/x"), ("M", "/changes/content"),
        ("U", "/changes/meta"), ("T", "/changes/kind"), ("+", "/changes/kind/inside"),
        ("M", "/changes/link"), ("U", "/changes"),
        ("U", ""),  # the source folder itself: its mtime changed
    }  # fmt: skip
    # The unchanged folder was compared by id only: its three levels were never read.
    assert differ.trees_loaded <= 7

    res = run_cli("diff", old.short_id, new.short_id, str(src / "changes"), repo=repo_path)
    assert res.code == 0, res.err
    assert f"M    {src}/changes/content\n" in res.out and f"T    {src}/changes/kind/\n" in res.out
    # The folder named is compared too (its mtime changed), nothing outside it.
    assert "1 added, 0 removed, 2 modified, 2 metadata only, 1 type changes" in res.out
    assert "/added" not in res.out
    res = run_cli("--json", "diff", old.short_id, "latest", repo=repo_path)
    lines = [json.loads(line) for line in res.out.splitlines()]
    assert lines[-1]["message_type"] == "statistics" and lines[-1]["removed"] == 2
    assert run_cli("diff", old.short_id, "latest", "/no/such", repo=repo_path).code == 23
    assert run_cli("diff", "ffffff", "latest", repo=repo_path).code == 23


def test_identical_snapshots_read_nothing(repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "f").write_bytes(b"x")
    a = run_backup(repo, BackupOptions(paths=(str(tmp_path / "f"),))).snapshot
    b = run_backup(repo, BackupOptions(paths=(str(tmp_path / "f"),))).snapshot
    # Below the test's own folder: the machine's /tmp may change between the two backups
    # (other processes), and the root tree records it.
    differ, changes = diff_snapshots(repo, a.root, b.root, str(tmp_path))
    assert list(changes) == [] and differ.trees_loaded == 0
