"""Incremental and differential backups: parents, change detection, the race guard, counts."""

from __future__ import annotations

import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from casbackup.archiver.backup import BackupOptions, BackupResult, run_backup
from casbackup.archiver.restore import RestoreOptions, restore
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import FsSnapshotRecord, Snapshot
from casbackup.testing.fixtures import open_repo
from casbackup.verify.check import CheckOptions, check
from casbackup.verify.repair import repair_index
from tests.archiver.nasty import assert_same_tree


def make_files(root: Path, n: int = 6) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"f{i}").write_bytes(os.urandom(2000 + i))
    # Files written now must not look racy to a clock that starts in the future anyway,
    # but set an old mtime so nothing depends on the file system's timestamp granularity.
    old = time.time_ns() - 3600 * 1_000_000_000
    for i in range(n):
        os.utime(root / f"f{i}", ns=(old, old))


def backup(repo: Repository, src: Path | list[Path], type: str, app: str | None = "web") -> BackupResult:  # fmt: skip
    paths = tuple(str(p) for p in (src if isinstance(src, list) else [src]))
    return run_backup(repo, BackupOptions(paths=paths, type=type, app=app))


def ids(*results: BackupResult) -> list[str]:
    return [r.snapshot.id for r in results if r.snapshot]


# ---------------------------------------------------------------------- parents
def test_parents_chosen_by_app_and_type(repo, tmp_path, clock, reads) -> None:  # type: ignore[no-untyped-def]
    src, other = tmp_path / "src", tmp_path / "other"
    make_files(src)
    make_files(other)
    full = backup(repo, src, "full")
    assert full.snapshot.type == "full" and full.snapshot.parent is None and full.notes == []
    backup(repo, other, "full", app="db")  # another application: never a parent of "web"
    reads.clear()
    inc1 = backup(repo, src, "incremental")
    assert inc1.snapshot.parent == full.snapshot.id
    assert inc1.snapshot.base_full == full.snapshot.id
    assert reads == []  # nothing changed: nothing read
    (src / "f0").write_bytes(b"changed")
    inc2 = backup(repo, src, "incremental")
    assert inc2.snapshot.parent == inc1.snapshot.id  # latest of the same app, not the full
    assert inc2.snapshot.base_full == full.snapshot.id
    diff = backup(repo, src, "differential")
    assert diff.snapshot.parent == full.snapshot.id  # differential: the latest full
    assert diff.snapshot.base_full == full.snapshot.id
    # The db application's chain is separate: its incremental's parent is its own full.
    db_inc = backup(repo, other, "incremental", app="db")
    assert repo.load_snapshot(db_inc.snapshot.parent).app == "db"


def test_without_app_parent_is_same_paths(repo, tmp_path, clock, reads) -> None:  # type: ignore[no-untyped-def]
    a, b = tmp_path / "a", tmp_path / "b"
    make_files(a)
    make_files(b)
    first = backup(repo, a, "full", app=None)
    backup(repo, [a, b], "full", app=None)
    backup(repo, a, "full", app="named")  # an application's snapshot is not a path match
    reads.clear()
    again = backup(repo, a, "incremental", app=None)
    assert again.snapshot.parent == first.snapshot.id
    assert reads == []


def test_a_full_backup_with_a_chosen_parent_still_reads_every_file(
    repo, tmp_path, clock, reads
) -> None:  # type: ignore[no-untyped-def]
    """``--type full --parent X`` read nothing: it kept every unchanged file from X and was
    recorded as a full, so a full run to read everything again (after a doubt about the
    sources or the repository) silently did not. The parent names the chain; a full reads."""
    src = tmp_path / "src"
    make_files(src, 3)
    first = backup(repo, src, "full").snapshot
    reads.clear()
    options = BackupOptions(paths=(str(src),), type="full", app="web", parent=first.id)
    again = run_backup(repo, options).snapshot
    assert sorted(reads) == [b"f0", b"f1", b"f2"]
    assert again.type == "full" and again.parent == first.id
    assert again.summary.bytes_read == sum(2000 + i for i in range(3))
    # An incremental or differential with a chosen parent reuses that parent's files.
    reads.clear()
    options = BackupOptions(paths=(str(src),), type="differential", app="web", parent=first.id)
    assert run_backup(repo, options).snapshot.base_full == first.id
    assert reads == []


@pytest.mark.parametrize("kind", ["incremental", "differential"])
def test_no_parent_falls_back_to_reading_everything(repo, tmp_path, clock, reads, kind) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    make_files(src, 4)
    if kind == "differential":
        first = backup(repo, src, "full").snapshot
        backup(repo, src, "incremental")  # an incremental is no base for a differential
        repo.delete_snapshot(first.id)
        reads.clear()
    result = backup(repo, src, kind)
    assert result.snapshot.parent is None and result.snapshot.base_full is None
    assert len(result.notes) == 1 and "reading every file" in result.notes[0]
    if kind == "differential":
        assert "no full parent" in result.notes[0]
    assert sorted(reads) == [b"f0", b"f1", b"f2", b"f3"]
    # Every file was read: the snapshot records what was done, not what was asked.
    assert result.snapshot.type == "full"


# ---------------------------------------------------------------------- change detection
def test_only_changed_files_are_read_and_counts_are_exact(repo, tmp_path, clock, reads) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    make_files(src, 6)
    s1 = backup(repo, src, "full").snapshot
    assert (s1.summary.files_new, s1.summary.files_changed, s1.summary.files_unchanged) == (6, 0, 0)
    assert s1.summary.files_total == 6
    reads.clear()
    (src / "f1").write_bytes(b"new content")  # size changes
    st = os.stat(src / "f2")
    (src / "f2").write_bytes(os.urandom(st.st_size))  # same size, new mtime
    os.utime(src / "f3", ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # only the mtime moves
    (src / "g-new").write_bytes(b"a new file")
    (src / "f5").unlink()
    s2 = backup(repo, src, "incremental").snapshot
    assert sorted(reads) == [b"f1", b"f2", b"f3", b"g-new"]
    s = s2.summary
    # f3's content is identical: read again (its mtime moved) but counted unchanged.
    assert (s.files_new, s.files_changed, s.files_unchanged) == (1, 2, 3)
    assert s.files_total == 6
    assert s.bytes_read == sum(os.path.getsize(src / n) for n in ("f1", "f2", "f3", "g-new"))
    # A full backup reads everything but classifies the same way against its reference.
    reads.clear()
    s3 = backup(repo, src, "full").snapshot
    assert len(reads) == 6
    assert (s3.summary.files_new, s3.summary.files_changed, s3.summary.files_unchanged) == (0, 0, 6)
    # Deduplicated: the source's tree is s2's, byte for byte, and nothing but trees was added.
    # Trees, not zero: a snapshot records the folders from / down to the source too, and
    # /tmp's times move whenever any other process makes or removes a file in it (this
    # assertion used to be `bytes_added == 0` and failed under load for that reason).
    assert repo.find_node(s3.root, str(src)).subtree == repo.find_node(s2.root, str(src)).subtree
    data2, trees2 = _blob_ids(repo, s2)
    data3, trees3 = _blob_ids(repo, s3)
    assert data3 <= data2
    assert s3.summary.blobs_added <= len(trees3 - trees2)


def _blob_ids(repo: Repository, snap: Snapshot) -> tuple[set[bytes], set[bytes]]:
    """(file content blob ids, tree ids) of a snapshot, its root tree included."""
    data: set[bytes] = set()
    trees: set[bytes] = {snap.root}
    for _path, node in repo.walk(snap.root):
        data.update(node.content or ())
        if node.subtree is not None:
            trees.add(node.subtree)
    return data, trees


def test_hard_links_counted_like_other_files(repo, tmp_path, clock, reads) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    make_files(src, 2)
    os.link(src / "f0", src / "f0-link")
    s1 = backup(repo, src, "full").snapshot
    assert reads.count(b"f0") + reads.count(b"f0-link") == 1  # one inode, read once
    assert (s1.summary.files_new, s1.summary.files_total) == (3, 3)
    s2 = backup(repo, src, "incremental").snapshot
    assert (s2.summary.files_unchanged, s2.summary.files_total) == (3, 3)


def test_race_guard_rereads_files_written_as_the_parent_started(
    repo, tmp_path, clock, reads
) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    make_files(src, 4)
    start = clock.peek()
    # f0: written in the very nanosecond the parent starts; f1: one second before it
    # (inside the margin of coarse file systems); f2: well before. f3 untouched.
    os.utime(src / "f0", ns=(start, start))
    os.utime(src / "f1", ns=(start - 1_000_000_000, start - 1_000_000_000))
    os.utime(src / "f2", ns=(start - 5_000_000_000, start - 5_000_000_000))
    s1 = backup(repo, src, "full").snapshot
    assert s1.start_ns == start
    reads.clear()
    s2 = backup(repo, src, "incremental").snapshot
    assert sorted(reads) == [b"f0", b"f1"]
    assert s2.summary.files_unchanged == 4


def test_race_guard_counts_from_when_the_file_system_snapshot_was_taken(
    repo, tmp_path, clock, reads
) -> None:  # type: ignore[no-untyped-def]
    """A source read from a file-system snapshot holds each file as it was when the snapshot
    was taken, seconds before the backup starts when snapshots take a while (lvcreate and a
    mount per volume). A file rewritten in place around that moment can have the same size
    and times before and after (one timestamp tick, a second on coarse file systems): it
    must be read again next time, as one written as a live backup starts is."""
    src, frozen = tmp_path / "src", tmp_path / "frozen"
    src.mkdir()
    make_files(frozen, 1)  # what the snapshot holds, read in the source's place
    make_files(frozen / "sub", 3)
    start = clock.peek()
    taken = start - 10 * 1_000_000_000  # the snapshot: 10 s before the backup's start
    for where in (frozen, frozen / "sub"):
        os.utime(where / "f0", ns=(taken, taken))  # written as the snapshot was taken
    os.utime(frozen / "sub", ns=(taken - 10**10, taken - 10**10))
    when = datetime.fromtimestamp(taken / 1e9, UTC).isoformat()
    options = BackupOptions(
        paths=(str(src),), app="web", read_from=((str(src), str(frozen)),),
        fs_snapshots=(FsSnapshotRecord(str(src), "lvm", "vg/lv", when),),
    )  # fmt: skip
    first = run_backup(repo, options).snapshot
    assert first is not None and first.start_ns == start
    reads.clear()
    second = run_backup(repo, options).snapshot
    assert second is not None
    assert sorted(reads) == [b"f0", b"f0"]  # both, the one the comparer saw too
    assert second.summary.files_unchanged == 4


def test_replaced_file_with_same_size_and_mtime_is_reread(repo, tmp_path, clock, reads) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    make_files(src, 3)
    backup(repo, src, "full")
    st = os.stat(src / "f1")
    tmp = tmp_path / "replacement"
    tmp.write_bytes(os.urandom(st.st_size))
    os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.rename(tmp, src / "f1")  # an editor's save: new inode, same size and mtime
    new = os.stat(src / "f1")
    assert (new.st_size, new.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert new.st_ino != st.st_ino
    reads.clear()
    s2 = backup(repo, src, "incremental").snapshot
    assert reads == [b"f1"]
    assert s2.summary.files_changed == 1


def test_chunks_missing_from_index_force_a_reread(repo, repo_path, tmp_path, clock, reads) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    make_files(src, 3)
    (src / "big").write_bytes(os.urandom(3 << 20))  # spans several 1 MiB packs
    old = time.time_ns() - 3600 * 1_000_000_000
    os.utime(src / "big", ns=(old, old))
    s1 = backup(repo, src, "full").snapshot
    big = repo.find_node(s1.root, str(src / "big"))
    chunks = set(big.content)
    # A pack that holds nothing but chunks of "big": lose it, and drop it from the index.
    packs: dict[str, set[bytes]] = {}
    for fid in repo.index_files():
        for pack, entries in repo.load_index_file(fid).packs.items():
            packs[pack] = {bytes(b) for b, _ in entries}
    victim = next(p for p, blobs in sorted(packs.items()) if blobs <= chunks)
    repo.backend.delete(f"data/{victim[:2]}/{victim}")
    repair_index(repo)
    assert not all(repo.has_blob(c) for c in chunks)
    reads.clear()
    s2 = backup(repo, src, "incremental").snapshot
    assert reads == [b"big"]
    assert s2.summary.files_unchanged == 4  # same content, re-read
    assert s2.summary.bytes_added > 0  # the lost chunks were stored again
    # Chunk ids are content addresses: storing them again heals the old snapshot too.
    report = check(repo, CheckOptions(read_data=True))
    assert report.ok and report.affected == {}, report.errors
    for snap in (s1, s2):
        target = tmp_path / snap.id
        restore(repo, snap, RestoreOptions(target=str(target), subpath=str(src)))
        assert (target / "big").read_bytes() == (src / "big").read_bytes()


# ---------------------------------------------------------------------- independence
def test_deleting_any_snapshot_leaves_the_others_restorable(repo_path, tmp_path, clock) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    states = tmp_path / "states"
    make_files(src, 5)
    (src / "sub").mkdir()
    (src / "sub" / "nested").write_bytes(os.urandom(50_000))
    plan = [
        ("full", lambda: None),
        ("incremental", lambda: (src / "f0").write_bytes(b"v2")),
        ("incremental", lambda: (src / "sub" / "nested").unlink()),
        ("differential", lambda: (src / "f9").write_bytes(b"added")),
        ("incremental", lambda: (src / "f1").write_bytes(os.urandom(70_000))),
    ]
    with open_repo(repo_path) as repo:
        snaps = []
        for i, (kind, change) in enumerate(plan):
            change()
            snaps.append(backup(repo, src, kind).snapshot)
            shutil.copytree(src, states / str(i), symlinks=True)
    assert [s.type for s in snaps] == [k for k, _ in plan]
    for gone in range(len(snaps)):
        copy = tmp_path / f"repo-{gone}"
        shutil.copytree(repo_path, copy)
        with open_repo(str(copy)) as repo:
            repo.delete_snapshot(snaps[gone].id)
            assert check(repo, CheckOptions(read_data=True)).ok
            for i, snap in enumerate(snaps):
                if i == gone:
                    continue
                target = tmp_path / f"out-{gone}-{i}"
                restore(repo, snap, RestoreOptions(target=str(target), subpath=str(src)))
                assert_same_tree(os.fsencode(states / str(i)), os.fsencode(target), root_meta=False)
