"""Restore with writers that create the files: batches, folder metadata, refusals, faults."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from casbackup.archiver import restore as restore_module
from casbackup.archiver import restore_files, writers
from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.archiver.restore import RestoreOptions, RestoreResult, restore
from casbackup.archiver.writers import WriterFailed
from casbackup.errors import Interrupted, RestoreError
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.reporter import Progress, Reporter
from casbackup.testing.fixtures import make_repo
from tests.archiver.nasty import MTIME_NS, assert_same_tree


def backed_up(tmp_path: Path, src: Path) -> tuple[Repository, Snapshot]:
    repo = make_repo(str(tmp_path / "repo"))
    snap = run_backup(repo, BackupOptions(paths=(str(src),), type="full")).snapshot
    assert snap is not None
    return repo, snap


def restored(out: Path, src: Path) -> Path:
    return out / str(src).lstrip("/")


def many_small_files(root: Path, folders: int, per_folder: int, seed: int = 5) -> None:
    rng = random.Random(seed)
    for d in range(folders):
        folder = root / f"d{d // 30:02d}" / f"f{d:03d}"
        folder.mkdir(parents=True)
        for i in range(per_folder):
            (folder / f"file{i}.txt").write_bytes(rng.randbytes(rng.randint(0, 3000)))


def fds_into(target: Path) -> list[str]:
    """This process's open fds on anything in ``target`` (folders held open, files)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue  # the fd listdir itself used
        if where == str(target) or where.startswith(str(target) + "/"):
            found.append(where)
    return found


@pytest.fixture
def readonly_tree(tmp_path: Path) -> Iterator[Path]:
    """A read-only folder holding more files than one batch, and fixed times everywhere."""
    src = tmp_path / "src"
    ro = src / "ro"
    (ro / "inner").mkdir(parents=True)
    rng = random.Random(3)
    for i in range(300):
        (ro / f"f{i:03d}").write_bytes(rng.randbytes(rng.randint(0, 5000)))
    (ro / "inner" / "deep.txt").write_bytes(b"deep\n")
    (ro / "big.bin").write_bytes(rng.randbytes(6_000_000))  # a batch of its own
    (src / "after.txt").write_bytes(b"walked after the read-only folder\n")
    for dirpath, dirnames, filenames in os.walk(src, topdown=False):
        for offset, name in enumerate(sorted(dirnames + filenames)):
            os.utime(os.path.join(dirpath, name), ns=(MTIME_NS, MTIME_NS + offset * 1_000_003))
        os.utime(dirpath, ns=(MTIME_NS, MTIME_NS + 777_777_777))
    os.chmod(ro / "inner", 0o500)
    os.chmod(ro, 0o555)
    yield src
    os.chmod(ro, 0o755)
    os.chmod(ro / "inner", 0o755)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workers", [1, 2])
def test_folder_metadata_waits_for_the_writers(
    readonly_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    """Every folder's mode and mtime are applied once all its entries exist (also as root,
    whom a read-only mode does not stop: the listing at that moment is checked)."""
    repo, snap = backed_up(tmp_path, readonly_tree)
    listed_at_meta: dict[str, list[str]] = {}
    original = restore_module.apply_metadata

    def spy(fd: int, *args: int, **kw: object) -> list[str]:
        listed_at_meta[os.readlink(f"/proc/self/fd/{fd}")] = sorted(os.listdir(fd))
        return original(fd, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(restore_module, "apply_metadata", spy)  # folders only: files are
    out = tmp_path / "out"  # finished in the writers, which use writers.apply_metadata
    result = restore(repo, snap, RestoreOptions(target=str(out), workers=workers))
    assert result.errors == [] and result.warnings == []
    assert result.files == 303 and result.bytes > 6_000_000
    try:
        assert_same_tree(os.fsencode(readonly_tree), os.fsencode(restored(out, readonly_tree)))
        assert len(listed_at_meta) == result.dirs
        for folder, listing in listed_at_meta.items():
            assert listing == sorted(os.listdir(folder)), folder
    finally:
        for ro in (restored(out, readonly_tree) / "ro", restored(out, readonly_tree) / "ro/inner"):
            os.chmod(ro, 0o755)
    repo.close()


@pytest.mark.timeout(120)
def test_many_small_files_in_many_folders(tmp_path: Path) -> None:
    src = tmp_path / "src"
    many_small_files(src, folders=300, per_folder=10)
    repo, snap = backed_up(tmp_path, src)
    out = tmp_path / "out"
    result = restore(repo, snap, RestoreOptions(target=str(out), workers=2))
    assert result.errors == [] and result.files == 3000
    assert_same_tree(os.fsencode(src), os.fsencode(restored(out, src)))
    assert fds_into(tmp_path / "out") == []
    repo.close()
    assert multiprocessing.active_children() == []


def test_existing_file_stops_the_restore_in_one_line(tmp_path: Path) -> None:
    """The writer that meets the existing name reports it; the restore stops with the
    same message as when the walking thread created files itself."""
    src = tmp_path / "src"
    many_small_files(src, folders=20, per_folder=20)
    repo, snap = backed_up(tmp_path, src)
    out = tmp_path / "out"
    mine = restored(out, src) / "d00" / "f007" / "file11.txt"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"mine")
    with pytest.raises(RestoreError) as info:
        restore(repo, snap, RestoreOptions(target=str(out), workers=2))
    rel = os.path.relpath(mine, out)
    assert str(info.value) == f"{rel} exists in the target (use --overwrite)"
    assert mine.read_bytes() == b"mine"
    assert fds_into(tmp_path / "out") == []
    assert multiprocessing.active_children() == []
    result = restore(repo, snap, RestoreOptions(target=str(out), workers=2, overwrite=True))
    assert result.errors == []
    assert_same_tree(os.fsencode(src), os.fsencode(restored(out, src)))
    repo.close()


@pytest.mark.parametrize("overwrite", [False, True])
def test_symlinked_folder_refused_with_batches_in_flight(tmp_path: Path, overwrite: bool) -> None:
    src = tmp_path / "src"
    many_small_files(src, folders=40, per_folder=15)
    (src / "zz").mkdir()
    (src / "zz" / "planted").write_bytes(b"must not leave the target")
    repo, snap = backed_up(tmp_path, src)
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    restored(out, src).mkdir(parents=True)
    (restored(out, src) / "zz").symlink_to(outside)
    result = restore(repo, snap, RestoreOptions(target=str(out), workers=2, overwrite=overwrite))
    assert os.listdir(outside) == []  # never followed, either way
    if overwrite:  # the link itself is replaced by the folder
        assert result.errors == [] and result.files == 40 * 15 + 1
        assert not (restored(out, src) / "zz").is_symlink()
        assert (restored(out, src) / "zz" / "planted").read_bytes() == b"must not leave the target"
    else:  # the folder is refused by path; the rest of the snapshot is restored
        rel = str(restored(out, src) / "zz").removeprefix(str(out) + "/")
        assert len(result.errors) == 1 and result.errors[0].startswith(f"{rel}: ")
        assert "symlink is never followed" in result.errors[0]
        assert result.files == 40 * 15
        assert (restored(out, src) / "zz").is_symlink()
    assert multiprocessing.active_children() == []
    repo.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_hard_links_are_restored_as_links_among_batched_files(tmp_path: Path, workers: int) -> None:
    src = tmp_path / "src"
    many_small_files(src, folders=10, per_folder=40)
    first = src / "d00" / "f003" / "linked"
    first.write_bytes(b"one inode, three names\n")
    os.link(first, src / "d00" / "f001" / "second")
    os.link(first, src / "d00" / "f009" / "third")
    repo, snap = backed_up(tmp_path, src)
    out = tmp_path / "out"
    result: RestoreResult = restore(repo, snap, RestoreOptions(target=str(out), workers=workers))
    assert result.errors == [] and result.links == 2
    assert_same_tree(os.fsencode(src), os.fsencode(restored(out, src)))  # checks link groups
    names = [restored(out, src) / "d00" / f for f in ("f003/linked", "f001/second", "f009/third")]
    assert len({os.stat(n).st_ino for n in names}) == 1
    assert os.stat(names[0]).st_nlink == 3
    repo.close()


def test_hard_link_changed_between_its_names_restores_what_each_name_recorded(
    tmp_path: Path, clock, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """A hard-linked file rewritten while an incremental backup walks between its names:
    the first name is kept from the parent (old content), the second is read (new
    content). Restore linked the second to the first, so it came back with the old
    content without a word; each name must come back with the content recorded for it."""
    from casbackup.archiver.walk import Walker

    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "z").mkdir()
    (src / "a" / "first").write_bytes(b"version 1\n")
    os.link(src / "a" / "first", src / "z" / "second")
    old = time.time_ns() - 3600 * 1_000_000_000
    os.utime(src / "a" / "first", ns=(old, old))
    repo = make_repo(str(tmp_path / "repo"))
    assert run_backup(repo, BackupOptions(paths=(str(src),))).snapshot is not None
    monkeypatch.setattr(Walker, "_start_compares", lambda self, *a: None)  # the walker's own
    kept = Walker._kept_file

    def rewritten_after(self, path, name, st, old_node):  # type: ignore[no-untyped-def]
        node = kept(self, path, name, st, old_node)
        if name == b"first":
            with open(path, "r+b") as f:  # in place: the other name sees it
                f.write(b"version 2\n")
        return node

    monkeypatch.setattr(Walker, "_kept_file", rewritten_after)
    snap = run_backup(repo, BackupOptions(paths=(str(src),))).snapshot
    assert snap is not None and snap.summary.files_unchanged == 1
    out = tmp_path / "out"
    result = restore(repo, snap, RestoreOptions(target=str(out)))
    assert result.errors == []
    assert (restored(out, src) / "a" / "first").read_bytes() == b"version 1\n"
    assert (restored(out, src) / "z" / "second").read_bytes() == b"version 2\n"
    repo.close()


class KillAWriter(Reporter):
    """Kills one writer process (as the OOM killer would) once files have been written."""

    def __init__(self) -> None:
        self.killed = False

    def progress(self, progress: Progress) -> None:
        if not self.killed and progress.files_done:
            os.kill(multiprocessing.active_children()[0].pid, signal.SIGKILL)
            self.killed = True


@pytest.mark.timeout(60)
def test_writer_killed_mid_restore_fails_cleanly(tmp_path: Path) -> None:
    src = tmp_path / "src"
    many_small_files(src, folders=100, per_folder=30)
    repo, snap = backed_up(tmp_path, src)
    reporter = KillAWriter()
    with pytest.raises(WriterFailed) as info:
        restore(repo, snap, RestoreOptions(target=str(tmp_path / "out"), workers=2), reporter)
    assert reporter.killed
    assert str(info.value) == "a restore writer process stopped unexpectedly"
    assert multiprocessing.active_children() == []
    assert fds_into(tmp_path / "out") == []
    assert temp_files(tmp_path / "out") == []  # the killed writer's are removed for it
    repo.close()


@pytest.mark.timeout(60)
def test_killed_writers_temp_file_removed_when_another_batch_finishes_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The order of events that left a temporary file behind under load, forced: writer A's
    batch into folder ``a`` is back; writer B dies just after creating a temporary file in
    ``a``; only then does A's batch release ``a``. The folder must stay open until the
    restore removes B's temporary file, not be finished (and closed) by A's batch."""
    src = tmp_path / "src"
    for folder, count in (("a", 200), ("b", 100)):  # batches: a/0-127, then a/128- and b/
        (src / folder).mkdir(parents=True)
        for i in range(count):
            (src / folder / f"{folder}{i:03d}").write_bytes(b"%d" % i * 50)
    repo, snap = backed_up(tmp_path, src)
    first_back = tmp_path / "first-batch-back"  # the writers are forked: they see files
    real_write = writers.write_file

    def killed_mid_file(dir_fd: int, name: bytes, job: writers.FileJob, *args: object) -> object:
        if name == b"a130":  # in the second batch, in the folder the first batch wrote into
            writers.create_file(dir_fd, job.temp)
            until(first_back.exists)
            os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer would
        return real_write(dir_fd, name, job, *args)  # type: ignore[arg-type]

    real_done = restore_files.FileSender.batch_done

    def after_the_death(self: restore_files.FileSender, done: object, results: object) -> None:
        if results is not None and b"a000" in [n.name for n in done.nodes]:  # type: ignore[attr-defined]
            first_back.touch()
            until(lambda: self._writers is not None and self._writers.failure is not None)
        real_done(self, done, results)  # type: ignore[arg-type]

    monkeypatch.setattr(writers, "write_file", killed_mid_file)
    monkeypatch.setattr(restore_files.FileSender, "batch_done", after_the_death)
    with pytest.raises(WriterFailed):
        restore(repo, snap, RestoreOptions(target=str(tmp_path / "out"), workers=2))
    assert first_back.exists()  # the events came in the order this test is about
    assert multiprocessing.active_children() == []
    assert fds_into(tmp_path / "out") == []
    assert temp_files(tmp_path / "out") == []
    repo.close()


def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Wait for ``condition`` (polled every 10 ms); AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def temp_files(target: Path) -> list[str]:
    """Temporary names of restored files left anywhere in ``target``."""
    return [os.path.join(d, n) for d, _, names in os.walk(target) for n in names
            if n.startswith(".casbackup-restore-")]  # fmt: skip


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_stops_the_restore_with_no_leftovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int
) -> None:
    src = tmp_path / "src"
    many_small_files(src, folders=60, per_folder=20)
    repo, snap = backed_up(tmp_path, src)
    calls = {"n": 0}
    original = Repository.load_tree

    def interrupted(self: Repository, tree: bytes) -> object:
        calls["n"] += 1
        if calls["n"] == 40:  # batches are in flight by now
            raise KeyboardInterrupt
        return original(self, tree)  # type: ignore[arg-type]

    monkeypatch.setattr(Repository, "load_tree", interrupted)
    with pytest.raises(Interrupted, match="restore interrupted; the target holds a partial"):
        restore(repo, snap, RestoreOptions(target=str(tmp_path / "out"), workers=workers))
    assert multiprocessing.active_children() == []
    assert fds_into(tmp_path / "out") == []
    assert temp_files(tmp_path / "out") == []
    repo.close()


def test_open_folders_stay_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder's fd is held until its batches are back, but never one per folder of the tree."""
    src = tmp_path / "src"
    many_small_files(src, folders=1500, per_folder=1)
    repo, snap = backed_up(tmp_path, src)
    peak = {"open": 0}
    original = restore_module.Restorer._queue

    def counting(self: restore_module.Restorer, *args: object) -> None:
        peak["open"] = max(peak["open"], len(self._open))
        original(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(restore_module.Restorer, "_queue", counting)
    out = tmp_path / "out"
    result = restore(repo, snap, RestoreOptions(target=str(out), workers=2))
    assert result.errors == [] and result.files == 1500
    assert 0 < peak["open"] <= (8 + 1) * restore_files._BATCH_DIRS + 10
    assert_same_tree(os.fsencode(src), os.fsencode(restored(out, src)))
    repo.close()
