"""A file whose read fails part-way (EIO after its first chunks): named once, left out,
the rest stored, exit 3; the next backup reads it again instead of taking it from the
parent. The failing file is real: one served by a casbackup mount whose pack is damaged
at its fifth chunk (the mount answers EIO there, its first chunks read fine)."""

from __future__ import annotations

from pathlib import Path

from casbackup.repo.pack import pack_name
from casbackup.testing.fixtures import make_repo, run_cli
from casbackup.vfs import Vfs
from tests.cli.conftest import init_repo
from tests.cli.test_mount import fuse, mounted, snap_backup  # noqa: F401 - the fixture
from tests.test_vfs import flip_byte, make_source


def test_a_read_failing_midway_is_named_once_and_read_again_next_time(fuse, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    repo_path = str(tmp_path / "repo")
    repo = make_repo(repo_path)
    src = tmp_path / "src"
    src.mkdir()
    files = make_source(src)
    snap_backup(repo, src, "web")
    vfs = Vfs(repo)
    node = vfs.lookup("/web/latest" + str(src / "big.bin")).node
    loc = repo.locate(node.content[4])
    flip_byte(Path(repo_path), pack_name(loc.pack), loc.offset + loc.stored_len // 2)
    repo.close()
    mp = tmp_path / "mnt"
    mp.mkdir()
    other = init_repo(str(tmp_path / "other"))
    with mounted(repo_path, mp):
        served = mp / "web" / "latest" / str(src).lstrip("/")
        for _ in range(2):
            res = run_cli("backup", str(served), repo=other)
            assert res.code == 3, res.err
            named = [line for line in res.err.splitlines() if "big.bin" in line]
            assert len(named) == 1 and "Input/output error" in named[0], res.err
        listed = run_cli("ls", "latest", repo=other).out.splitlines()
    assert str(served / "big.bin") not in listed
    kept = [name for name in files if name != "big.bin"]
    assert kept and all(str(served / name) in listed for name in kept), listed
