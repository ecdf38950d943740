"""Local copies of delta streams (archiver/base_copies.py): the next night reads its delta
bases from them; a damaged, stale or foreign copy is only a miss; a repository that
disagrees with the copy is noticed by the spot checks and healed as before; copies are
bounded and never fail a backup."""

from __future__ import annotations

import io
import os
import shutil
import stat
import threading
import time
from pathlib import Path

import pytest

from casbackup.archiver import base_copies, delta_bases
from casbackup.archiver.backup import BackupOptions, BackupResult, StreamSpec, run_backup
from casbackup.archiver.base_copies import (
    BaseCopy,
    CopyWriter,
    copies_dir,
    copy_length,
    stream_key,
)
from casbackup.archiver.stdin import StreamBackup, backup_stream
from casbackup.engines.base import DatabaseSpec
from casbackup.repo.ids import Kind
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.testing.fixtures import flip_stored_byte, make_repo, open_repo
from casbackup.verify.check import CheckOptions, check
from tests.repo.test_delta import FIXED_KEY, change_rows, dump_node, read_dump
from tests.repo.test_delta_files import THRESHOLD, change_in_place, source, write_records
from tests.verify.apps import EXTENSIONS, _opener, make_app

# Databases of a few hundred kB, cut every 64 KiB as a large one is every 1 MiB.
pytestmark = pytest.mark.usefixtures("small_page_chunks")

ROWS = 20_000


def changed(piece: bytes, at: int) -> bytes:
    """``piece`` with its byte ``at`` changed (a fixed byte written there left random data
    as it was one time in 256: a chunk that was not new, and a flaky test)."""
    return piece[:at] + bytes([(piece[at] + 1) % 256]) + piece[at + 1 :]


@pytest.fixture
def repo_path(tmp_path: Path) -> str:
    path = str(tmp_path / "repo")
    make_repo(path, key=FIXED_KEY).close()
    return path


def _copy_file(repo: Repository, db: DatabaseSpec) -> str:
    key = stream_key("dump", "shop", f"{db.name}.{EXTENSIONS[db.engine]}")
    return os.path.join(copies_dir(repo.config.id), key)


def _night(repo: Repository, app: Path, db: DatabaseSpec) -> tuple[Snapshot, list[str]]:
    """One backup of the app and its database; (snapshot, its warning and notice lines)."""
    stream = StreamSpec(db.name, f"{db.name}.{EXTENSIONS[db.engine]}", db.engine, open=_opener(db))
    result = run_backup(repo, BackupOptions(paths=(str(app),), app="shop", streams=(stream,)))
    assert result.snapshot is not None
    return result.snapshot, list(result.notes) + list(result.warnings)


class Loads:
    """Counts how ``delta_base_for`` was asked: with a plaintext from the copy or without."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, repo: Repository) -> None:
        self.known = self.unknown = self.checked = 0
        real = repo.delta_base_for

        def spy(counterpart, known=None, *, check=False):  # type: ignore[no-untyped-def]
            if known is None:
                self.unknown += 1
            else:
                self.known += 1
                self.checked += check
            return real(counterpart, known, check=check)

        monkeypatch.setattr(repo, "delta_base_for", spy)


def _dump_bytes(repo: Repository, snap: Snapshot) -> bytes:
    return read_dump(repo, snap)  # checks the whole dump's BLAKE3 against its node


def test_the_next_night_reads_its_bases_from_the_copy(
    repo_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = open_repo(repo_path)
    app, db = make_app(tmp_path, rows=ROWS)
    snaps = [_night(repo, app, db)[0]]
    path = _copy_file(repo, db)
    assert not os.path.exists(path)  # a first version gets none: it may never change
    change_rows(db, 1)
    snaps.append(_night(repo, app, db)[0])
    # The copy: sealed, private, each chunk at its place (its stream offset plus an
    # envelope per 4 kB before it).
    node = dump_node(repo, snaps[-1])
    assert os.path.getsize(path) == copy_length([repo.locate(c).raw_len for c in node.content])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    with open(path, "rb") as f:
        sealed = f.read()
    assert b"item 1" not in sealed and b"CREATE TABLE" not in sealed
    loads = Loads(monkeypatch, repo)
    for n in range(2, 5):
        change_rows(db, n)
        snaps.append(_night(repo, app, db)[0])
    assert loads.known >= 9 and loads.unknown == 0
    # The first base read from the copy and one in every SPOT_CHECK after it are checked.
    assert 3 <= loads.checked <= 3 + loads.known // delta_bases.SPOT_CHECK
    assert any(repo.locate(c).kind == Kind.DELTA for c in dump_node(repo, snaps[-1]).content)
    for snap in snaps:
        _dump_bytes(repo, snap)
    assert check(repo, CheckOptions(read_data=True)).ok
    repo.close()


def test_an_unchanged_night_writes_nothing_and_a_changed_one_updates_in_place(
    repo_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = open_repo(repo_path)
    app, db = make_app(tmp_path, rows=ROWS)
    _night(repo, app, db)
    change_rows(db, 1)
    _night(repo, app, db)
    path = _copy_file(repo, db)
    before, content = os.stat(path), open(path, "rb").read()
    _night(repo, app, db)  # the same dump: the same chunks in the same order
    assert os.stat(path).st_ino == before.st_ino and open(path, "rb").read() == content
    change_rows(db, 2)  # the copy is read, and the changed chunks written over their bases
    loads = Loads(monkeypatch, repo)
    snap, _ = _night(repo, app, db)
    assert loads.known > 0 and open(path, "rb").read() != content
    node = dump_node(repo, snap)
    assert os.path.getsize(path) == copy_length([repo.locate(c).raw_len for c in node.content])
    repo.close()


@pytest.mark.parametrize("damage", ["flipped", "truncated", "foreign"])
def test_a_damaged_or_foreign_copy_is_only_a_miss(
    repo_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    repo = open_repo(repo_path)
    app, db = make_app(tmp_path, rows=ROWS)
    snaps = [_night(repo, app, db)[0]]
    change_rows(db, 1)
    snaps.append(_night(repo, app, db)[0])
    path = _copy_file(repo, db)
    size = os.path.getsize(path)
    if damage == "flipped":  # one byte in every 4 kB: every envelope fails
        with open(path, "r+b") as f:
            for at in range(100, size, 4096):
                f.seek(at)
                byte = f.read(1)
                f.seek(at)
                f.write(bytes([byte[0] ^ 0x10]))
    elif damage == "truncated":
        os.truncate(path, size - 1000)  # the last chunk's envelope cut short
    else:  # another stream's copy under this one's name (same key, other ids)
        writer = CopyWriter.start(repo.config.id, "other", repo.sealer)
        assert writer is not None
        for n in range(size // 50_000):
            writer.add(repo.blob_id(b"%d" % n), os.urandom(50_000), True)
        assert writer.commit()
        os.replace(os.path.join(copies_dir(repo.config.id), "other"), path)
    loads = Loads(monkeypatch, repo)
    change_rows(db, 2)
    snaps.append(_night(repo, app, db)[0])
    assert loads.unknown > 0  # resolved from the repository instead
    assert (loads.known > 0) == (damage == "truncated")  # the other chunks are still good
    assert any(repo.locate(c).kind == Kind.DELTA for c in dump_node(repo, snaps[-1]).content)
    # The night wrote its new chunks into the copy: the next one reads them from it.
    loads2 = Loads(monkeypatch, repo)
    change_rows(db, 3)
    snaps.append(_night(repo, app, db)[0])
    assert loads2.known > 0
    for snap in snaps:
        _dump_bytes(repo, snap)
    assert check(repo, CheckOptions(read_data=True)).ok
    repo.close()


def test_a_base_damaged_in_the_repository_is_noticed_and_not_built_on(
    repo_path: str, tmp_path: Path
) -> None:
    """The copy still holds the chunk, but the repository no longer gives it back: the spot
    check of the first base read from the copy notices, says so, and from then on every
    base is resolved from the repository, so the damaged one's new version is stored whole
    (no new chunk depends on the damage) as before copies."""
    repo = open_repo(repo_path)
    app, db = make_app(tmp_path, rows=ROWS)
    _night(repo, app, db)
    change_rows(db, 1, share=0.05)
    first, _ = _night(repo, app, db)
    assert os.path.exists(_copy_file(repo, db))
    damaged = dump_node(repo, first).content[0]
    loc = repo.locate(damaged)
    repo.close()
    flip_stored_byte(repo_path, loc.pack, loc.offset, loc.stored_len)
    repo = open_repo(repo_path)
    change_rows(db, 2, share=0.05)  # every chunk changes, the first one included
    second, lines = _night(repo, app, db)
    assert any("could not be read back" in line and "check --read-data" in line for line in lines)
    content = dump_node(repo, second).content
    assert damaged not in content
    for chunk in content:
        chain = [repo.locate(chunk)]
        while chain[-1].kind == Kind.DELTA:
            assert chain[-1].base != damaged
            chain.append(repo.locate(chain[-1].base))
    _dump_bytes(repo, second)
    report = check(repo, CheckOptions(read_data=True))
    assert not report.ok  # the damaged night's, and only it
    repo.close()


def test_copies_off_bounded_or_unwritable_never_fail_a_backup(
    repo_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = open_repo(repo_path)
    app, db = make_app(tmp_path, rows=ROWS)
    snaps = [_night(repo, app, db)[0]]
    change_rows(db, 10)
    snaps.append(_night(repo, app, db)[0])
    path = _copy_file(repo, db)
    assert os.path.exists(path)
    # Off: no copy, and the old one goes (the stream changes tonight).
    monkeypatch.setenv("CASBACKUP_BASE_COPY_MIB", "0")
    change_rows(db, 1)
    snaps.append(_night(repo, app, db)[0])
    assert not os.path.exists(path)
    monkeypatch.setenv("CASBACKUP_BASE_COPY_MIB", "junk")  # a cache: the default, no error
    assert base_copies.limit_bytes() == base_copies.DEFAULT_MIB << 20
    # Over the bound: no copy.
    monkeypatch.delenv("CASBACKUP_BASE_COPY_MIB")
    monkeypatch.setattr(base_copies, "limit_bytes", lambda: 100_000)
    assert dump_node(repo, snaps[-1]).size > 100_000
    change_rows(db, 2)
    snaps.append(_night(repo, app, db)[0])
    assert not os.path.exists(path)
    # A disk that fails every write (full): the backup goes on without a copy.
    monkeypatch.setattr(base_copies, "limit_bytes", lambda: 1 << 30)
    change_rows(db, 3)
    snaps.append(_night(repo, app, db)[0])
    assert os.path.exists(path)
    real_pwrite = os.pwrite

    def full(fd: int, data, offset: int) -> int:  # type: ignore[no-untyped-def]
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(os.path.basename(path)):
            raise OSError(28, "No space left on device")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(base_copies.os, "pwrite", full)
    change_rows(db, 4)
    snaps.append(_night(repo, app, db)[0])
    assert not os.path.exists(path)
    assert not [n for n in os.listdir(os.path.dirname(path)) if ".tmp-" in n]
    for snap in snaps:
        _dump_bytes(repo, snap)
    repo.close()


def test_an_interrupted_stream_leaves_a_copy_of_chunks_that_stand_alone(repo_path: str) -> None:
    repo = open_repo(repo_path)
    first = [os.urandom(40_000) for _ in range(8)]
    ids1, _, _ = delta_bases.store_chunks(repo, iter(first), None, copy_key="k")
    path = os.path.join(copies_dir(repo.config.id), "k")
    assert not os.path.exists(path)
    second = [changed(p, 100) for p in first]  # every chunk changed in place
    bases = delta_bases.BaseFinder.for_content(repo, ids1, "k")
    ids2, _, _ = delta_bases.store_chunks(repo, iter(second), bases, copy_key="k")
    copy = BaseCopy.open(repo.config.id, "k", repo.opener, list(ids2), [40_000] * 8)
    assert copy is not None and [copy.get(j) for j in range(8)] == second
    copy.close()

    def broken():  # type: ignore[no-untyped-def]
        for j in range(3):
            yield changed(second[j], 200)
        raise OSError(5, "Input/output error")

    bases = delta_bases.BaseFinder.for_content(repo, ids2, "k")
    with pytest.raises(OSError):
        delta_bases.store_chunks(repo, broken(), bases, copy_key="k")
    assert os.listdir(os.path.dirname(path)) == ["k"]
    # Chunks 0 and 1 were updated in place before the stream broke (the third was held
    # back: its place overlaps the base of the chunk after it): for the stored version
    # they are misses; the others are as they were.
    copy = BaseCopy.open(repo.config.id, "k", repo.opener, list(ids2), [40_000] * 8)
    assert copy is not None
    assert [copy.get(j) for j in range(8)] == [None, None] + second[2:] and copy.misses == 2
    copy.close()
    # A dry run writes nothing.
    before = open(path, "rb").read()
    bases = delta_bases.BaseFinder.for_content(repo, ids2, "k")
    delta_bases.store_chunks(repo, iter(first), bases, copy_key="k", dry_run=True)
    assert open(path, "rb").read() == before
    repo.close()


def _two_versions(repo_path: str, size: int = 30_000) -> tuple[Repository, list[bytes], tuple, str]:
    """Six chunks of ``size`` bytes stored, then each changed in place with a copy written:
    (the repository, the second version's chunks, their ids, the copy's path)."""
    repo = open_repo(repo_path)
    first = [os.urandom(size) for _ in range(6)]
    ids1, _, _ = delta_bases.store_chunks(repo, iter(first), None)
    second = [changed(p, 10) for p in first]
    bases = delta_bases.BaseFinder.for_content(repo, ids1, "k")
    ids2, _, _ = delta_bases.store_chunks(repo, iter(second), bases, copy_key="k")
    return repo, second, ids2, os.path.join(copies_dir(repo.config.id), "k")


def test_chunk_boundaries_that_move_are_updated_in_place(repo_path: str) -> None:
    repo, second, ids2, path = _two_versions(repo_path)
    inode = os.stat(path).st_ino
    # Chunks 0-1 unchanged, chunk 2 changed in place, then a chunk 3 bytes longer
    # (the chunks after it move), an unchanged chunk (3 bytes further on: written at its
    # new place too), and a new one. Each chunk's place follows from its offset in the
    # stream: the same file is updated, and every chunk is there.
    third = second[:2] + [changed(second[2], 5)]
    third += [second[3] + b"abc", second[4], os.urandom(30_000)]
    bases = delta_bases.BaseFinder.for_content(repo, ids2, "k")
    ids3, _, _ = delta_bases.store_chunks(repo, iter(third), bases, copy_key="k")
    assert os.stat(path).st_ino == inode
    sizes = [len(p) for p in third]
    assert os.path.getsize(path) == copy_length(sizes)
    copy = BaseCopy.open(repo.config.id, "k", repo.opener, list(ids3), sizes)
    assert copy is not None
    assert [copy.get(j) for j in range(6)] == third and copy.misses == 0
    copy.close()
    repo.close()


def test_bytes_moved_too_far_for_an_update_in_place_go_on_in_a_new_file(
    repo_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base_copies, "PENDING_MAX", 70_000)
    repo, second, ids2, path = _two_versions(repo_path)
    inode = os.stat(path).st_ino
    # 90 kB inserted at the front: every later chunk moves 90 kB on, over places whose
    # chunks may still be bases, so the writes wait, until there are too many.
    third = [os.urandom(30_000) for _ in range(3)] + second[:5]
    third.append(changed(second[5], 7))
    bases = delta_bases.BaseFinder.for_content(repo, ids2, "k")
    ids3, _, _ = delta_bases.store_chunks(repo, iter(third), bases, copy_key="k")
    assert os.stat(path).st_ino != inode
    sizes = [len(p) for p in third]
    assert os.path.getsize(path) == copy_length(sizes)
    copy = BaseCopy.open(repo.config.id, "k", repo.opener, list(ids3), sizes)
    assert copy is not None
    got = [copy.get(j) for j in range(len(third))]
    # What was held back and the new chunks are there; the moved chunks after the
    # switch, which this backup did not store, are holes (absent, not damage).
    assert got[:3] == third[:3] and got[-1] == third[-1]
    assert all(g is None or g == t for g, t in zip(got, third, strict=True))
    assert None in got and copy.misses == 0
    copy.close()
    repo.close()


def test_an_old_layout_s_copies_are_removed(repo_path: str) -> None:
    repo = open_repo(repo_path)
    legacy = os.path.join(os.path.dirname(copies_dir(repo.config.id)), "bases")
    os.makedirs(legacy)
    with open(os.path.join(legacy, "k"), "wb") as f:
        f.write(b"\1" * 1000)
    first = [os.urandom(30_000) for _ in range(3)]
    ids1, _, _ = delta_bases.store_chunks(repo, iter(first), None)
    bases = delta_bases.BaseFinder.for_content(repo, ids1, "k")
    delta_bases.store_chunks(repo, iter([p + b"!" for p in first]), bases, copy_key="k")
    assert not os.path.exists(legacy)
    assert os.path.exists(os.path.join(copies_dir(repo.config.id), "k"))
    repo.close()


def test_a_copy_of_another_version_is_given_up_after_a_few_misses(repo_path: str) -> None:
    repo = open_repo(repo_path)
    pieces = [os.urandom(5_000) for _ in range(40)]
    ids = [repo.blob_id(p) for p in pieces]
    writer = CopyWriter.start(repo.config.id, "k", repo.sealer)
    assert writer is not None
    for blob_id, piece in zip(ids, pieces, strict=True):
        writer.add(blob_id, piece, True)
    assert writer.commit()
    other = [repo.blob_id(b"%d" % n) for n in range(40)]  # another version: other ids
    copy = BaseCopy.open(repo.config.id, "k", repo.opener, other, [5_000] * 40)
    assert copy is not None
    assert [copy.get(j) for j in range(40)] == [None] * 40
    assert copy.misses == base_copies.GIVE_UP and copy.hits == 0
    # Once a copy has answered, a miss (one damaged chunk) does not end it.
    mixed = list(ids[:5]) + other[5:25] + list(ids[25:])
    copy = BaseCopy.open(repo.config.id, "k", repo.opener, mixed, [5_000] * 40)
    assert copy is not None
    got = [copy.get(j) for j in range(40)]
    assert got[:5] == pieces[:5] and got[25:] == pieces[25:] and copy.misses == 20
    copy.close()
    repo.close()


def test_stale_copies_and_dead_writers_temporaries_are_swept(tmp_path: Path) -> None:
    folder = tmp_path / "bases"
    folder.mkdir()
    now = 2_000_000_000.0
    dead = 4_000_000  # over pid_max: no such process
    files = {
        "fresh": now - 86400,
        "stale": now - base_copies.STALE_S - 1,
        f"fresh.tmp-{dead}-abcd": now - 60,
        f"fresh.tmp-{os.getpid()}-abcd": now - 60,
        f"fresh.tmp-{os.getpid()}-old": now - base_copies.STALE_TEMP_S - 1,
        "odd.tmp-notapid-x": now - 60,
    }
    for name, mtime in files.items():
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (mtime, mtime))
    base_copies._swept.discard(str(folder))
    base_copies.sweep(str(folder), now=now)
    assert sorted(os.listdir(folder)) == sorted(
        ["fresh", f"fresh.tmp-{os.getpid()}-abcd", "odd.tmp-notapid-x"]
    )
    base_copies.sweep(str(folder), now=now + 10 * base_copies.STALE_S)  # once a process
    assert "fresh" in os.listdir(folder)


def test_a_link_or_a_fifo_in_a_copys_place_is_not_followed(repo_path: str, tmp_path: Path) -> None:
    """Something else under a copy's name (a symlink or a hard link to a file of the user's,
    a FIFO) is never read as the copy nor written through: the copy goes on in a new file
    of its own. A symlink followed, a night with few changed chunks wrote its chunks over
    the file it named and extended it to the stream's length; a FIFO hung the backup."""
    repo = open_repo(repo_path)
    first = [os.urandom(20_000) for _ in range(6)]
    ids1, _, _ = delta_bases.store_chunks(repo, iter(first), None)
    second = [changed(p, 10) for p in first]
    bases = delta_bases.BaseFinder.for_content(repo, ids1, "k")
    ids2, _, _ = delta_bases.store_chunks(repo, iter(second), bases, copy_key="k")
    path = os.path.join(copies_dir(repo.config.id), "k")
    victim = tmp_path / "victim"
    ids = list(ids2)
    for kind in ["symlink", "hardlink"]:
        victim.write_bytes(b"the user's own file\n" * 10)
        os.unlink(path)
        if kind == "symlink":
            os.symlink(victim, path)
        else:
            os.link(victim, path)
        third = [changed(second[0], 20)] + second[1:]  # one, in place
        bases = delta_bases.BaseFinder.for_content(repo, ids, "k")
        ids, _, _ = delta_bases.store_chunks(repo, iter(third), bases, copy_key="k")
        second = third
        assert victim.read_bytes() == b"the user's own file\n" * 10, kind
        assert not os.path.islink(path) and os.stat(path).st_nlink == 1
    os.unlink(path)
    os.mkfifo(path)
    opened: list[BaseCopy | None] = []
    thread = threading.Thread(
        target=lambda: opened.append(BaseCopy.open(repo.config.id, "k", repo.opener, ids, [1])),
        daemon=True,
    )
    thread.start()
    thread.join(10)
    assert opened == [None]  # not blocked until a writer opens the FIFO
    repo.close()


@pytest.mark.parametrize(
    "copies",
    [
        "off",
        "on",
    ],
)
def test_a_night_after_damage_to_a_base_the_spot_checks_skip_is_intact(
    repo_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copies: str
) -> None:
    """Without copies, every base is resolved from the repository: a damaged one is not
    built on, and the night after the damage restores. With copies, only the first base and
    one in SPOT_CHECK are: the third chunk's base here is read from the copy only."""
    if copies == "off":
        monkeypatch.setenv("CASBACKUP_BASE_COPY_MIB", "0")
    repo = open_repo(repo_path)
    app, db = make_app(tmp_path, rows=ROWS)
    _night(repo, app, db)
    change_rows(db, 1, share=0.05)
    first, _ = _night(repo, app, db)
    loc = repo.locate(dump_node(repo, first).content[2])
    repo.close()
    flip_stored_byte(repo_path, loc.pack, loc.offset, loc.stored_len)
    repo = open_repo(repo_path)
    change_rows(db, 2, share=0.05)  # every chunk changes
    second, _ = _night(repo, app, db)
    _dump_bytes(repo, second)
    repo.close()


def test_a_refuted_copy_is_told_for_delta_files_and_stdin_too(
    repo_path: str, tmp_path: Path
) -> None:
    """As for a database dump: a spot check that finds the repository disagreeing with the
    copy of a --delta-files file or a --stdin stream is a note naming it (it was silent)."""
    src, data = source(tmp_path)
    repo = open_repo(repo_path)

    def files_night() -> BackupResult:
        return run_backup(repo, BackupOptions(paths=(str(src),), delta_files=THRESHOLD))

    def stdin_night() -> BackupResult:
        return backup_stream(repo, StreamBackup(name="orders.db"), io.BytesIO(data.read_bytes()))

    for night, name in [(files_night, str(data)), (stdin_night, "/orders.db")]:
        write_records(data)
        night()
        change_in_place(data, 1, share=0.05)
        snap = night().snapshot
        assert snap is not None
        node = repo.find_node(snap.root, name if night is stdin_night else str(data))
        assert node is not None
        loc = repo.locate(node.content[0])
        repo.close()
        flip_stored_byte(repo_path, loc.pack, loc.offset, loc.stored_len)
        repo = open_repo(repo_path)
        change_in_place(data, 2, share=0.05)  # every chunk changes, the first one included
        result = night()
        assert result.snapshot is not None
        assert [line for line in result.notes if "could not be read back" in line] == [
            f"{name}: a chunk of the last backup's version could not be read back from the "
            "repository as it was written; run 'casbackup check --read-data'"
        ]
    repo.close()


@pytest.mark.parametrize("folder", ["bases-2", "bases"])
def test_a_copies_folder_that_is_a_link_is_neither_swept_nor_read(
    repo_path: str, tmp_path: Path, folder: str
) -> None:
    """A copies folder (or the earlier layout's) that is a link to a folder of the user's
    (another user made the repository's folder first in a shared cache) has none of that
    folder's files deleted, nor is a copy in it read. The sweep followed the link: every
    file there older than STALE_S, and every "*.tmp-<pid>-*" of a pid that is gone, went
    (and with the earlier layout's name, every file)."""
    repo, second, ids2, _ = _two_versions(repo_path, 20_000)
    copies = copies_dir(repo.config.id)
    victim = tmp_path / "victim"
    # The user's folder, holding a copy that would authenticate.
    shutil.copytree(copies, victim)
    if folder == "bases-2":
        shutil.rmtree(copies)
    old = time.time() - base_copies.STALE_S * 2
    for name in ["thesis.tex", "photo.jpg", "notes.tmp-4000000-ab"]:
        (victim / name).write_bytes(b"the user's own file")
        os.utime(victim / name, (old, old))
    os.symlink(victim, os.path.join(os.path.dirname(copies), folder))
    base_copies._swept.clear()
    third = [changed(p, 20) for p in second]
    bases = delta_bases.BaseFinder.for_content(repo, ids2, "k")
    delta_bases.store_chunks(repo, iter(third), bases, copy_key="k")
    assert sorted(os.listdir(victim)) == ["k", "notes.tmp-4000000-ab", "photo.jpg", "thesis.tex"]
    assert (victim / "thesis.tex").read_bytes() == b"the user's own file"
    if folder == "bases-2":
        assert BaseCopy.open(repo.config.id, "k", repo.opener, list(ids2), [20_000] * 6) is None
    repo.close()


@pytest.mark.parametrize("night", ["first copy", "in place"])
def test_a_copy_whose_close_fails_is_dropped_and_the_stream_is_stored(
    repo_path: str, monkeypatch: pytest.MonkeyPatch, night: str
) -> None:
    """A close that fails (NFS tells a delayed write error there, EIO or EDQUOT) drops the
    copy; the stream is stored. The copy's file was closed a second time: EBADF, raised out
    of ``store_chunks`` as if the stream could not be read, or (a number reused by another
    thread meanwhile) another file closed."""
    repo, second, ids2, path = _two_versions(repo_path)
    if night == "first copy":
        os.unlink(path)
    real_close = os.close
    failed: list[int] = []

    def close(fd: int) -> None:
        if not failed and "bases-2" in os.readlink(f"/proc/self/fd/{fd}"):
            failed.append(fd)
            real_close(fd)
            raise OSError(5, "Input/output error")
        real_close(fd)

    monkeypatch.setattr(os, "close", close)
    third = [changed(p, 20) for p in second]
    bases = delta_bases.BaseFinder.for_content(repo, ids2, "k")
    ids3, _, _ = delta_bases.store_chunks(repo, iter(third), bases, copy_key="k")
    monkeypatch.setattr(os, "close", real_close)
    assert failed
    assert not os.path.exists(path) and not os.listdir(os.path.dirname(path))
    repo.flush()
    assert [repo.load_blob(i, Kind.DATA) for i in ids3] == third
    repo.close()
