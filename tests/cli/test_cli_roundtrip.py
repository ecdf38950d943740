"""The nasty tree through the real ``casbackup`` command: init, backup, ls, dump, restore."""

from __future__ import annotations

import json
import os

from casbackup.testing.fixtures import run_cli
from tests.archiver.nasty import MTIME_NS, assert_same_tree, assert_sparse, make_nasty_tree
from tests.cli.conftest import assert_one_error


def test_nasty_tree_round_trip_through_the_cli(cli_repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = os.fsencode(tmp_path / "src")
    os.mkdir(src)
    make_nasty_tree(src)
    os.utime(src, ns=(MTIME_NS, MTIME_NS))
    res = run_cli("--json", "backup", os.fsdecode(src), "--type", "full", repo=cli_repo)
    assert res.code == 0, res.err
    summary = [json.loads(line) for line in res.out.splitlines()][-1]
    assert summary["message_type"] == "summary" and summary["warnings"] == []
    snap_id = summary["snapshot_id"]

    snaps = json.loads(run_cli("--json", "snapshots", repo=cli_repo).out)
    assert [s["id"] for s in snaps] == [snap_id]
    assert snaps[0]["summary"]["files_total"] == summary["files_total"]

    # ls shows the odd names; dump writes one file byte for byte.
    listing = run_cli("--json", "ls", f"{snap_id[:8]}:{os.fsdecode(src)}", repo=cli_repo)
    assert listing.code == 0, listing.err
    names = {json.loads(line)["name"] for line in listing.out.splitlines()}
    assert {"new\nline", os.fsdecode(b"latin1-\xe9\xff\xfe"), "a fifo", "dangling"} <= names
    long = run_cli("ls", "--long", f"{snap_id}:{os.fsdecode(src)}/setuid", repo=cli_repo)
    assert long.out.startswith("-rwsr-xr-x"), long.out
    dumped = run_cli("dump", f"latest:{os.fsdecode(src)}/compressible.txt", repo=cli_repo)
    assert dumped.out == "the same line again and again\n" * 200_000

    target = tmp_path / "restore"
    res = run_cli("restore", f"{snap_id[:10]}", "--target", str(target), repo=cli_repo)
    assert res.code == 0, res.err
    assert res.err == ""
    restored = os.fsencode(target) + src
    assert_same_tree(src, restored, xattrs=True)
    assert_sparse(os.path.join(restored, b"sparse.img"))

    # A second restore into the same place refuses to clobber; --overwrite replaces.
    again = run_cli("restore", snap_id, "--target", str(target), repo=cli_repo)
    assert_one_error(again, 26, "exists in the target", "--overwrite")
    with open(os.path.join(restored, b"empty"), "wb") as f:
        f.write(b"local edit")
    res = run_cli("restore", snap_id, "--target", str(target), "--overwrite", repo=cli_repo)
    assert res.code == 0, res.err
    assert_same_tree(src, restored, xattrs=True)

    # SNAPSHOT:PATH of one folder restores its contents into the target.
    sub = tmp_path / "sub-restore"
    res = run_cli("restore", f"latest:{os.fsdecode(src)}/links-b", "-t", str(sub), repo=cli_repo)
    assert res.code == 0, res.err
    assert (sub / "deeper" / "three").read_bytes() == b"hard-linked content\n" * 100
    assert os.stat(sub / "two").st_ino == os.stat(sub / "deeper" / "three").st_ino


def test_snapshot_and_path_as_two_arguments(cli_repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """restic's form, `dump latest /etc/hosts`, failed with 'got unexpected extra argument'
    (found trying the CLI as a restic user would): dump, cat, ls and restore take the path
    as a second argument as well as SNAPSHOT:PATH, and refuse it given both ways."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("alpha\n")
    assert run_cli("backup", str(src), repo=cli_repo).code == 0
    for command in ("dump", "cat"):
        out = run_cli(command, "latest", f"{src}/sub/a.txt", repo=cli_repo)
        assert (out.code, out.out) == (0, "alpha\n"), out.err
    listing = run_cli("ls", "latest", f"{src}/sub", repo=cli_repo)
    assert listing.code == 0 and listing.out.split() == [f"{src}/sub/a.txt"], listing
    target = tmp_path / "t"
    res = run_cli("restore", "latest", f"{src}/sub", "--target", str(target), repo=cli_repo)
    assert res.code == 0 and (target / "a.txt").read_text() == "alpha\n", res.err
    twice = run_cli("dump", f"latest:{src}/sub/a.txt", f"{src}/sub/a.txt", repo=cli_repo)
    assert_one_error(twice, 2, "give the path once")


def test_a_path_with_extra_slashes_or_dots_is_shown_one_way(cli_repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # 'ls latest://srv' listed '//srv/...' (and '/srv/./x' listed '/srv/./x/...'): the path
    # was printed as typed, so two spellings of one folder gave two different listings.
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("alpha\n")
    assert run_cli("backup", str(src), repo=cli_repo).code == 0
    for spelled in (f"/{src}/sub", f"{src}/./sub", f"{src}//sub/"):
        listing = run_cli("ls", f"latest:{spelled}", repo=cli_repo)
        assert listing.code == 0 and listing.out.split() == [f"{src}/sub/a.txt"], listing
