"""``casbackup dump SNAPSHOT:FOLDER``: a folder (or a whole snapshot) as one tar or zip stream.

restic users write ``restic dump latest /etc > etc.tar`` and borg users ``borg export-tar``;
casbackup's dump refused anything but a file, and only the service could download a folder
(as a tar without owners' group names, nanoseconds, hard links, attributes or special files).
The tar is checked the way a user would use it: GNU tar extracts it, and the result is
compared with the source entry by entry (contents, modes, owners, times to the nanosecond,
symbolic and hard links, FIFOs, extended attributes and ACLs).
"""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from casbackup.repo.ids import Kind
from casbackup.testing.fixtures import PASSWORD, flip_stored_byte, open_repo, run_cli
from tests.archiver.nasty import MTIME_NS, assert_same_tree, make_nasty_tree
from tests.cli.conftest import assert_one_error


@pytest.fixture
def backed_up(cli_repo: str, tmp_path: Path) -> tuple[str, bytes]:
    src = os.fsencode(tmp_path / "src")
    os.mkdir(src)
    make_nasty_tree(src, big_size=3 * 1024 * 1024)
    os.utime(src, ns=(MTIME_NS, MTIME_NS))
    res = run_cli("backup", os.fsdecode(src), repo=cli_repo)
    assert res.code == 0, res.err
    return cli_repo, src


def test_a_folder_as_tar_extracts_to_the_same_tree(backed_up: tuple[str, bytes], tmp_path: Path) -> None:  # fmt: skip
    repo, src = backed_up
    archive = tmp_path / "src.tar"
    res = run_cli("dump", f"latest:{os.fsdecode(src)}", "--target", str(archive), repo=repo)
    assert res.code == 0 and res.out == "" and res.err == "", res
    out = tmp_path / "out"
    out.mkdir()
    extract = ["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf", str(archive)]
    done = subprocess.run([*extract, "-C", str(out)], capture_output=True)
    assert done.returncode == 0, done.stderr
    assert_same_tree(src, os.path.join(os.fsencode(out), b"src"), xattrs=True)
    # Python's reader, streaming (as from a pipe), agrees on every name.
    with tarfile.open(fileobj=io.BytesIO(archive.read_bytes()), mode="r|") as tf:
        names = {m.name for m in tf}
    assert "src/links-b/deeper/three" in names and os.fsdecode(b"src/latin1-\xe9\xff\xfe") in names


def test_standard_output_the_whole_snapshot_and_zip(backed_up: tuple[str, bytes]) -> None:
    repo, src = backed_up
    proc = subprocess.run(
        [sys.executable, "-m", "casbackup.cli.main", "-r", repo, "dump", "latest", "/"],
        capture_output=True, env={**os.environ, "CASBACKUP_PASSWORD": PASSWORD},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tf:
        member = tf.getmember(os.fsdecode(src).lstrip("/") + "/compressible.txt")
        assert tf.extractfile(member).read() == b"the same line again and again\n" * 200_000  # type: ignore[union-attr]
        assert member.mtime == MTIME_NS / 1e9 or int(member.mtime) == MTIME_NS // 10**9
    zipped = subprocess.run(
        [sys.executable, "-m", "casbackup.cli.main", "-r", repo, "dump", "--archive", "zip",
         f"latest:{os.fsdecode(src)}/sub"],
        capture_output=True, env={**os.environ, "CASBACKUP_PASSWORD": PASSWORD},
    )  # fmt: skip
    assert zipped.returncode == 0, zipped.stderr
    with zipfile.ZipFile(io.BytesIO(zipped.stdout)) as zf:
        assert (
            zf.read("sub/inner/small.bin")
            == open(os.path.join(src, b"sub/inner/small.bin"), "rb").read()
        )


def test_a_folder_is_not_written_to_a_terminal(backed_up: tuple[str, bytes]) -> None:
    repo, src = backed_up
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "casbackup.cli.main", "-r", repo, "dump", f"latest:{os.fsdecode(src)}"],
            stdout=follower, stderr=subprocess.PIPE, env={**os.environ, "CASBACKUP_PASSWORD": PASSWORD},
        )  # fmt: skip
    finally:
        os.close(follower)
        os.close(leader)
    assert proc.returncode == 2
    assert b"would go to the terminal" in proc.stderr and b"--target" in proc.stderr


def test_a_damaged_file_fails_the_dump_and_leaves_no_archive(backed_up: tuple[str, bytes], tmp_path: Path) -> None:  # fmt: skip
    repo, src = backed_up
    handle = open_repo(repo)
    try:
        snap = handle.load_snapshot(handle.snapshot_ids()[-1])
        node = handle.find_node(snap.root, os.fsdecode(src) + "/big.bin")
        assert node is not None
        loc = handle.locate(node.content[0])
        assert loc.kind == Kind.DATA
    finally:
        handle.close()
    flip_stored_byte(repo, loc.pack, loc.offset, loc.stored_len, 0x40)
    archive = tmp_path / "out" / "src.tar"
    archive.parent.mkdir()
    res = run_cli("dump", f"latest:{os.fsdecode(src)}", "--target", str(archive), repo=repo)
    assert_one_error(res, 22, "big.bin")
    assert os.listdir(archive.parent) == []  # neither the archive nor its temporary file
    # The undamaged files of the snapshot still come out, one by one.
    ok = run_cli("dump", f"latest:{os.fsdecode(src)}/sub/inner/small.bin", repo=repo)
    assert ok.code == 0, ok.err


def test_what_is_neither_file_nor_folder_is_refused(backed_up: tuple[str, bytes]) -> None:
    repo, src = backed_up
    res = run_cli("dump", f"latest:{os.fsdecode(src)}/a fifo", repo=repo)
    assert_one_error(res, 23, "not a file or folder")
