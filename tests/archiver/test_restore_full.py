"""A target that takes no more data (full, over quota, read-only) stops the restore at once:
one error with the counts, nothing partial under a real name; and an --include that
matches nothing is an error, as a SNAPSHOT:PATH that does not exist is."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from casbackup.archiver import restore as restore_module
from casbackup.archiver import writers
from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.archiver.restore import RestoreOptions, RestoreStopped, restore
from casbackup.archiver.targetfs import TargetError
from casbackup.errors import NotFound, RestoreError
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.testing.fixtures import make_repo, open_repo, run_cli
from tests.archiver.test_restore_fidelity import damage_chunk
from tests.loopfs import tmpfs

FILES = 300  # more than two batches (128 files each)


def _tree(src: Path) -> dict[str, bytes]:
    """FILES small files in a few folders; their contents by path relative to ``src``."""
    rng = random.Random(11)
    contents = {}
    for i in range(FILES):
        rel = f"d{i % 7}/file{i:03d}"
        data = rng.randbytes(rng.randint(100, 3000))
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
        contents[rel] = data
    return contents


@pytest.fixture
def snapshot(tmp_path: Path) -> tuple[Repository, Snapshot, Path, dict[str, bytes]]:
    src = tmp_path / "src"
    contents = _tree(src)
    repo = make_repo(str(tmp_path / "repo"))
    snap = run_backup(repo, BackupOptions(paths=(str(src),), type="full")).snapshot
    assert snap is not None
    return repo, snap, src, contents


def _check_nothing_partial(out: Path, src: Path, contents: dict[str, bytes]) -> int:
    """Every restored name holds its whole content, no temporary file is left; how many."""
    base = out / str(src).lstrip("/")
    found = 0
    for dirpath, _dirs, names in os.walk(out):
        for name in names:
            assert not name.startswith(".casbackup-restore-"), f"temporary file left: {name}"
            rel = os.path.relpath(os.path.join(dirpath, name), base)
            assert Path(dirpath, name).read_bytes() == contents[rel], rel
            found += 1
    return found


@pytest.mark.parametrize("workers", [2, 1], ids=["processes", "threads"])
@pytest.mark.parametrize(
    "code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS], ids=["ENOSPC", "EDQUOT", "EROFS"]
)
def test_a_full_target_stops_the_restore_at_once(
    snapshot: tuple[Repository, Snapshot, Path, dict[str, bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
    code: int,
) -> None:
    repo, snap, src, contents = snapshot
    # A disk with room for about 20 files, shared by the writer processes (fork).
    room = multiprocessing.Value("q", 20 * 1500)
    refused = multiprocessing.Value("i", 0)
    real = writers._pwrite_all

    def pwrite_until_full(fd: int, data: bytes, offset: int) -> None:
        with room.get_lock():
            if room.value < len(data):
                refused.value += 1
                raise OSError(code, os.strerror(code))
            room.value -= len(data)
        real(fd, data, offset)

    monkeypatch.setattr(writers, "_pwrite_all", pwrite_until_full)
    out = tmp_path / "out"
    with pytest.raises(RestoreError) as failed:
        restore(repo, snap, RestoreOptions(target=str(out), workers=workers))
    message = str(failed.value)
    assert "\n" not in message
    assert f"the target {out} takes no more data ({os.strerror(code)})" in message, message
    restored = _check_nothing_partial(out, src, contents)
    assert 0 < restored < FILES
    assert f": {restored} of {FILES} files restored, {FILES - restored} not restored" in message
    # At once: each writer meets the full target once, then writes no further file.
    assert refused.value <= workers, refused.value


def test_a_full_target_while_making_folders_stops_too(
    snapshot: tuple[Repository, Snapshot, Path, dict[str, bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo, snap, src, contents = snapshot
    real = restore_module.open_dir
    tried: list[bytes] = []

    def open_dir_until_full(name: bytes, parent_fd: int, *, replace: bool = False):  # type: ignore[no-untyped-def]
        if name.startswith(b"d") and name != b"d0":
            tried.append(name)
            raise TargetError("cannot create folder: No space left on device", errno.ENOSPC)
        return real(name, parent_fd, replace=replace)

    monkeypatch.setattr(restore_module, "open_dir", open_dir_until_full)
    out = tmp_path / "out"
    with pytest.raises(RestoreError) as failed:
        restore(repo, snap, RestoreOptions(target=str(out), workers=2))
    # d0's files, if any went to a writer before d1 failed (a batch not sent is not written).
    restored = _check_nothing_partial(out, src, contents)
    assert restored <= sum(1 for rel in contents if rel.startswith("d0/"))
    assert f": {restored} of {FILES} files restored, {FILES - restored} not" in str(failed.value)
    assert tried == [b"d1"]  # no further folder is even tried


def test_an_include_that_matches_nothing_is_an_error(
    snapshot: tuple[Repository, Snapshot, Path, dict[str, bytes]], tmp_path: Path
) -> None:
    repo, snap, _src, _contents = snapshot
    out = tmp_path / "out"
    for dry_run in (False, True):
        with pytest.raises(NotFound) as failed:
            restore(
                repo,
                snap,
                RestoreOptions(target=str(out), includes=("*.nothing",), dry_run=dry_run),
            )
        assert str(failed.value) == "nothing in the snapshot matches --include *.nothing"
        assert not out.exists()  # made for the restore, and nothing went in it: removed
    result = restore(repo, snap, RestoreOptions(target=str(out), includes=("*.nothing", "file007")))
    assert result.files == 1


def test_cli_include_matching_nothing_exits_like_a_missing_path(
    snapshot: tuple[Repository, Snapshot, Path, dict[str, bytes]], tmp_path: Path
) -> None:
    repo, snap, src, _contents = snapshot
    target = str(tmp_path / "t")
    missing = run_cli("restore", f"{snap.id}:{src}/nope", "-t", target, repo=repo.backend.root)
    nothing = run_cli("restore", snap.id, "-t", target, "-i", "nope", repo=repo.backend.root)
    assert missing.code == nothing.code == NotFound.exit_code, (missing, nothing)
    assert nothing.err.strip().count("\n") == 0 and "matches --include nope" in nothing.err
    assert "restored" not in nothing.out


def _damage_first_file(repo: Repository, snap: Snapshot, src: Path) -> str:
    """Damage the one chunk of d0/file000 (the first file the walk sends): it fails by
    path before the target fills. Its name, relative to the target."""
    node = repo.find_node(snap.root, f"{src}/d0/file000")
    assert node is not None and len(node.content) == 1
    damage_chunk(repo, repo.backend.root, node.content[0])
    return f"{str(src).lstrip('/')}/d0/file000"


@pytest.mark.parametrize("workers", [2, 1], ids=["processes", "threads"])
def test_errors_before_a_full_target_are_still_reported(
    snapshot: tuple[Repository, Snapshot, Path, dict[str, bytes]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
) -> None:
    repo, snap, src, contents = snapshot
    damaged = _damage_first_file(repo, snap, src)
    room = multiprocessing.Value("q", 20 * 1500)
    real = writers._pwrite_all

    def pwrite_until_full(fd: int, data: bytes, offset: int) -> None:
        with room.get_lock():
            if room.value < len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            room.value -= len(data)
        real(fd, data, offset)

    monkeypatch.setattr(writers, "_pwrite_all", pwrite_until_full)
    reopened = open_repo(repo.backend.root)
    try:
        with pytest.raises(RestoreStopped) as failed:
            restore(reopened, snap, RestoreOptions(target=str(tmp_path / "out"), workers=workers))
    finally:
        reopened.close()
    message = str(failed.value)
    assert "takes no more data (No space left on device)" in message, message
    assert message.endswith("; before that, 1 entry could not be restored"), message
    errors = failed.value.result.errors
    assert len(errors) == 1 and errors[0].startswith(f"{damaged}: "), errors
    restored = _check_nothing_partial(tmp_path / "out", src, contents)
    assert failed.value.result.files == restored


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MB file system (tests/loopfs.py: root and mount(8), else skipped)."""
    with tmpfs(tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}", "size=1m") as where:
        yield where


@pytest.mark.parametrize("workers", ["2", "1"], ids=["processes", "threads"])
def test_cli_restore_into_a_real_full_file_system(
    snapshot: tuple[Repository, Snapshot, Path, dict[str, bytes]],
    small_tmpfs: Path,
    workers: str,
) -> None:
    repo, snap, src, contents = snapshot
    # 300 files of up to 3 KB take ~1.2 MB of 4 KB blocks: more than the 1 MB there is.
    res = run_cli("restore", snap.id, "-t", str(small_tmpfs), "--workers", workers,
                  repo=repo.backend.root)  # fmt: skip
    assert res.code == RestoreError.exit_code, res
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    assert "takes no more data (No space left on device)" in lines[0]
    restored = _check_nothing_partial(small_tmpfs, src, contents)
    assert f"{restored} of {FILES} files restored, {FILES - restored} not restored" in lines[0]


def test_cli_full_file_system_still_lists_the_errors_before(
    snapshot: tuple[Repository, Snapshot, Path, dict[str, bytes]],
    small_tmpfs: Path,
) -> None:
    repo, snap, src, contents = snapshot
    damaged = _damage_first_file(repo, snap, src)
    repo.close()
    res = run_cli("restore", snap.id, "-t", str(small_tmpfs / "text"), repo=repo.backend.root)
    assert res.code == RestoreError.exit_code, res
    lines = res.err.strip().splitlines()
    assert len(lines) == 2, res.err
    assert lines[0].startswith(f"error: {damaged}: "), lines
    assert "takes no more data (No space left on device)" in lines[1], lines
    assert lines[1].endswith("; before that, 1 entry could not be restored (listed above)")
    for name in os.listdir(small_tmpfs):  # room for the second run
        subprocess.run(["rm", "-rf", str(small_tmpfs / name)], check=True)
    res = run_cli("--json", "restore", snap.id, "-t", str(small_tmpfs / "json"),
                  repo=repo.backend.root)  # fmt: skip
    assert res.code == RestoreError.exit_code, res
    docs = [json.loads(line) for line in res.out.splitlines()]
    (summary,) = [d for d in docs if d["message_type"] == "summary"]
    assert len(summary["errors"]) == 1 and summary["errors"][0].startswith(f"{damaged}: ")
    assert "takes no more data" in summary["stopped"]
    restored = _check_nothing_partial(small_tmpfs / "json", src, contents)
    assert summary["files"] == restored
    err = [json.loads(line) for line in res.err.strip().splitlines()]
    assert [e["message_type"] for e in err] == ["error_item", "error"], err
    assert err[0]["message"] == summary["errors"][0]
    assert err[1]["exit_code"] == RestoreError.exit_code and "listed above" in err[1]["error"]


def test_each_include_that_matches_nothing_is_a_warning(
    snapshot: tuple[Repository, Snapshot, Path, dict[str, bytes]], tmp_path: Path
) -> None:
    repo, snap, src, _contents = snapshot
    # d1/file001 lies under d1, which an include matched first: it counts as matched too.
    options = RestoreOptions(target=str(tmp_path / "out"), includes=("nope", "d1", "file001", "x*"))
    result = restore(repo, snap, options)
    assert result.warnings == ["--include nope matched nothing", "--include x* matched nothing"]
    assert result.files == sum(1 for i in range(FILES) if i % 7 == 1)
    cli = run_cli("restore", snap.id, "-t", str(tmp_path / "t"), "-i", "d1", "-i", "nope",
                  repo=repo.backend.root)  # fmt: skip
    assert cli.code == 0 and "--include nope matched nothing" in cli.err, cli
