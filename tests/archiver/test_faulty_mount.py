"""A backup of a real FUSE mount whose entries fail with EIO (tests/archiver/faultyfs.py):
a read that fails (under a UTF-8 name and under one that is not), a stat that fails, a
listing that fails, an attribute that cannot be read. Each is one warning line naming
it, the snapshot holds everything else and is listed as partial, the exit code is 3,
and the next backup (an incremental) tries each one again rather than keeping the
parent's incomplete record."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from casbackup.testing.fixtures import run_cli
from tests.archiver.faultyfs import faulty_mount
from tests.cli.conftest import init_repo


@pytest.fixture
def faulty(tmp_path: Path) -> Iterator[Path]:
    yield from faulty_mount(tmp_path)


def test_entries_failing_with_eio_are_named_and_the_rest_is_stored(
    faulty: Path, tmp_path: Path
) -> None:
    repo = init_repo(str(tmp_path / "repo"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "o.txt").write_text("other source")
    expected = [
        f"warning: {faulty}/badstat: Input/output error",
        f"warning: {faulty}/badxattr.txt: extended attribute user.broken: Input/output error",
        f"warning: {faulty}/unlistable: Input/output error",
        f"warning: {faulty}/eio.txt: Input/output error",
        f"warning: {faulty}/eio-\\xe9.txt: Input/output error",  # as the CLI shows bytes
    ]
    for run in range(2):  # the second, an incremental, tries each one again
        res = run_cli("backup", str(faulty), str(other), repo=repo)
        assert res.code == 3, (run, res.err)
        assert "Traceback" not in res.err
        warned = sorted(line for line in res.err.splitlines() if line.startswith("warning: "))
        assert warned == sorted(expected), (run, res.err)
        assert "error: snapshot saved, but 5 files or folders could not be read" in res.err
    snaps = json.loads(run_cli("--json", "snapshots", repo=repo).out)
    assert [s["summary"]["errors"] for s in snaps] == [5, 5]
    assert snaps[1]["parent"] == snaps[0]["id"]
    listing = run_cli("ls", "--recursive", "latest", repo=repo).out
    names = {line.split()[-1] for line in listing.splitlines() if line.strip()}
    for present in ("good.txt", "badxattr.txt", "sub/ok.txt", "o.txt"):
        assert any(n.endswith(present) for n in names), (present, listing)
    assert not any(n.endswith(("eio.txt", "badstat", "never.txt")) for n in names), listing
    dumped = run_cli("dump", f"latest:{faulty}/good.txt", repo=repo)
    assert dumped.code == 0 and dumped.out == "good\n", dumped.err
    assert "incremental (partial)" in run_cli("snapshots", repo=repo).out
