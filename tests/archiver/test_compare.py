"""Subtrees compared with the parent snapshot in the reader processes (archiver/compare.py).

The comparison only saves work: a backup that uses it must record exactly the trees a
backup that walks everything itself records. Most tests here check that equivalence
after one kind of change each, and that the comparison was really used.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from casbackup.archiver.backup import Backup, BackupOptions, BackupResult, run_backup
from casbackup.archiver.compare import SubtreeComparer, SubtreeJob
from casbackup.archiver.excludes import Excluder
from casbackup.archiver.workers import WorkerFailed
from casbackup.repo.repository import Repository

OLD_NS = time.time_ns() - 3600 * 1_000_000_000


def make_tree(root: Path) -> None:
    """Three levels of folders with files and a symlink each, all with old times."""
    for a in ("a", "b", "c"):
        for b in ("x", "y", "z"):
            folder = root / a / b / "deep"
            folder.mkdir(parents=True)
            for i in range(3):
                (folder.parent / f"f{i}").write_bytes(os.urandom(300 + i))
                (folder / f"g{i}").write_bytes(os.urandom(200 + i))
            (folder.parent / "link").symlink_to("f0")
    for path in sorted(root.rglob("*"), reverse=True):
        os.utime(path, ns=(OLD_NS, OLD_NS), follow_symlinks=False)
    os.utime(root, ns=(OLD_NS, OLD_NS))


def backup(repo: Repository, src: Path, **kw: object) -> BackupResult:
    return run_backup(repo, BackupOptions(paths=(str(src),), app="web", **kw))  # type: ignore[arg-type]


@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The folders a backup took from a reader's answer instead of listing them."""
    taken: list[bytes] = []
    original = Backup._compared

    def counting(self, path, st, old):  # type: ignore[no-untyped-def]
        answered, node = original(self, path, st, old)
        if node is not None:
            taken.append(os.path.relpath(path, self.options.paths[0].encode()))
        return answered, node

    monkeypatch.setattr(Backup, "_compared", counting)
    return taken


def _src_tree(repo: Repository, snap, src: Path) -> bytes | None:  # type: ignore[no-untyped-def]
    """The tree id of the backed-up folder itself. The root tree also records the folders
    above it (/tmp ...), which other processes on the machine may touch between two backups."""
    node = repo.find_node(snap.root, str(src))
    assert node is not None
    return node.subtree


def _walk_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Backup, "_start_compares", lambda self, *a: None)


def _touch_old(path: Path) -> None:
    os.utime(path, ns=(OLD_NS, OLD_NS), follow_symlinks=False)


MUTATIONS: dict[str, Callable[[Path], None]] = {
    "nothing": lambda root: None,
    "deep file rewritten": lambda root: (root / "b/y/deep/g1").write_bytes(b"new content"),
    "deep folder chmod": lambda root: os.chmod(root / "c/x/deep", 0o700),
    "file added": lambda root: (root / "a/z/deep/new").write_bytes(b"added"),
    "folder removed": lambda root: shutil.rmtree(root / "b/x"),
    "file became folder": lambda root: (
        (root / "a/x/f1").unlink(),
        (root / "a/x/f1").mkdir(),
    ),
    "symlink retargeted": lambda root: (
        (root / "c/z/link").unlink(),
        (root / "c/z/link").symlink_to("f2"),
    ),
    "only times touched": lambda root: os.utime(root / "a/y/f2", ns=(OLD_NS + 1, OLD_NS + 1)),
}


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_same_trees_as_walking_everything(  # type: ignore[no-untyped-def]
    repo, tmp_path, clock, compared, monkeypatch, mutation
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    base = backup(repo, src, type="full").snapshot
    MUTATIONS[mutation](src)
    fast = backup(repo, src, type="incremental", parent=base.id).snapshot
    used = list(compared)
    _walk_everything(monkeypatch)
    slow = backup(repo, src, type="incremental", parent=base.id).snapshot
    assert _src_tree(repo, fast, src) == _src_tree(repo, slow, src)
    fields = ("files_new", "files_changed", "files_unchanged", "dirs", "files_total", "bytes_total")
    assert [getattr(fast.summary, f) for f in fields] == [getattr(slow.summary, f) for f in fields]
    assert used, "no folder was taken from a reader's comparison"


def test_unchanged_tree_reads_nothing_and_compares_below_the_top(  # type: ignore[no-untyped-def]
    repo, tmp_path, clock, compared, reads
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    first = backup(repo, src, type="full").snapshot
    reads.clear()
    again = backup(repo, src, type="incremental").snapshot
    assert reads == [] and _src_tree(repo, again, src) == _src_tree(repo, first, src)
    # The top has fewer folders than would keep two readers busy (16): they are split,
    # level by level, down to the nine deepest, and every one is answered unchanged.
    assert sorted(compared) == [f"{a}/{b}/deep".encode() for a in "abc" for b in "xyz"]
    assert again.summary.files_unchanged == first.summary.files_total


def test_a_reader_dying_while_comparing_fails_the_backup_in_one_line(  # type: ignore[no-untyped-def]
    repo, tmp_path, clock, monkeypatch
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    backup(repo, src, type="full")
    monkeypatch.setattr(SubtreeComparer, "compare", lambda self, job: os._exit(3))
    with pytest.raises(WorkerFailed, match="stopped unexpectedly"):
        backup(repo, src, type="incremental")


# ---------------------------------------------------------------------- the comparer alone
def _comparer(repo: Repository, **kw: object) -> SubtreeComparer:
    class NeverCancelled:
        def is_set(self) -> bool:
            return False

    excluder = kw.pop("excluder", Excluder([]))
    return SubtreeComparer(
        repo.backend.root, repo.cache, repo.opener, repo.key.chunk_id_key,  # type: ignore[attr-defined]
        excluder, False, NeverCancelled(),  # type: ignore[arg-type]
    )  # fmt: skip


def _job(repo: Repository, snap, src: Path, rel: str) -> SubtreeJob:  # type: ignore[no-untyped-def]
    node = repo.find_node(snap.root, str(src / rel))
    return SubtreeJob(str(src / rel).encode(), node.subtree, snap.start_ns, os.lstat(src).st_dev)


def _found(repo, snap, src, rel, **kw) -> list[str]:  # type: ignore[no-untyped-def]
    comparer = _comparer(repo, **kw)
    try:
        found = comparer.compare(_job(repo, snap, src, rel))
    finally:
        comparer.close()
    return sorted(os.path.relpath(p, str(src).encode()).decode() for p in found)


def test_comparer_names_the_outermost_unchanged_folders(repo, tmp_path, clock) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    make_tree(src)
    snap = backup(repo, src, type="full").snapshot
    assert _found(repo, snap, src, "a") == ["a"]
    (src / "a/y/deep/g0").write_bytes(b"changed")
    # a and a/y changed (below them, a file did); a/x, a/z and a/y/... none of it else.
    assert _found(repo, snap, src, "a") == ["a/x", "a/z"]
    os.chmod(src / "a/x", 0o700)  # the folder's own entry, not its contents
    assert _found(repo, snap, src, "a") == ["a/x", "a/z"]
    assert _found(repo, snap, src, "a/x") == ["a/x"]


def test_comparer_applies_excludes_like_the_walker(repo, tmp_path, clock) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    make_tree(src)
    snap = run_backup(
        repo, BackupOptions(paths=(str(src),), type="full", app="web", excludes=("f1",))
    ).snapshot
    # f1 is on disk but not in the tree: only the folders without an f1 are unchanged.
    assert _found(repo, snap, src, "b") == ["b/x/deep", "b/y/deep", "b/z/deep"]
    assert _found(repo, snap, src, "b", excluder=Excluder(["f1"])) == ["b"]


def test_comparer_refuses_a_folder_whose_chunks_left_the_index(  # type: ignore[no-untyped-def]
    repo, tmp_path, clock, monkeypatch
) -> None:
    src = tmp_path / "src"
    make_tree(src)
    snap = backup(repo, src, type="full").snapshot
    lost = repo.find_node(snap.root, str(src / "c/y/f2")).content[0]
    real = repo.cache.contains_all
    monkeypatch.setattr(repo.cache, "contains_all", lambda ids: lost not in ids and real(ids))
    assert _found(repo, snap, src, "c") == ["c/x", "c/y/deep", "c/z"]


def test_comparer_answers_nothing_for_an_unreadable_parent_tree(repo, tmp_path, clock) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    make_tree(src)
    snap = backup(repo, src, type="full").snapshot
    job = _job(repo, snap, src, "a")
    comparer = _comparer(repo)
    try:
        assert comparer.compare(SubtreeJob(job.path, bytes(32), job.reuse_start_ns, 0)) == {}
    finally:
        comparer.close()


def test_readers_see_the_index_cache(repo, tmp_path, clock, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Regression: py-lmdb refused the readers' own view of the cache after fork, so they
    silently sealed every chunk of a re-read file again for the parent to throw away."""
    src = tmp_path / "src"
    make_tree(src)
    backup(repo, src, type="full")
    for path in src.rglob("f*"):
        os.utime(path, None)  # new times, same content: every file is read again
    sealed: list[bytes] = []
    original = Repository.store_sealed_batch

    def counting(self, blobs):  # type: ignore[no-untyped-def]
        blobs = list(blobs)
        sealed.extend(b for b, _, _ in blobs)
        return original(self, blobs)

    monkeypatch.setattr(Repository, "store_sealed_batch", counting)
    result = backup(repo, src, type="incremental").snapshot
    assert result.summary.bytes_read > 0
    assert sealed == []  # every chunk was known to the readers' view of the index


def test_a_bug_in_a_reader_is_reported_in_one_line(repo, tmp_path, clock, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    make_tree(src)
    backup(repo, src, type="full")

    def broken(self, job):  # type: ignore[no-untyped-def]
        raise AttributeError("'NoneType' object has no attribute 'clear'")

    monkeypatch.setattr(SubtreeComparer, "compare", broken)
    with pytest.raises(WorkerFailed) as info:
        backup(repo, src, type="incremental")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("a file reader process failed: AttributeError: ")
    assert "test_compare.py:" in message
