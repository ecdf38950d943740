"""Page images (SQLite's dump) are cut at fixed offsets, and a night of rows rewritten in
place is stored as aligned deltas of the parent's chunks at the same offsets."""

from __future__ import annotations

import io
import os
import random
import sqlite3
from pathlib import Path

import pytest

from casbackup.archiver import backup as backup_module
from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.archiver.stream import ChunkReader
from casbackup.chunking.chunker import PAGE_IMAGE_CHUNK, FixedChunker
from casbackup.engines.base import DatabaseSpec, is_page_image
from casbackup.repo import delta
from casbackup.repo.ids import Kind
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.testing.fixtures import make_repo
from tests.verify.apps import backup, make_app

DUMP = "/.databases/local.sqlite"


class Trickle(io.RawIOBase):
    """A pipe-like reader: at most ``step`` bytes a read, whatever was asked."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data, self._at, self._step = data, 0, step

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:  # type: ignore[no-untyped-def,override]
        n = min(len(buf), self._step, len(self._data) - self._at)
        buf[:n] = self._data[self._at : self._at + n]
        self._at += n
        return n


@pytest.mark.parametrize("length", [0, 1, 999, 1000, 1001, 3000, 4321])
@pytest.mark.parametrize("step", [7, 1000, 1 << 20])
def test_fixed_chunks_cover_the_stream_at_fixed_offsets(length: int, step: int) -> None:
    data = os.urandom(length)
    pieces = [bytes(p) for p in FixedChunker(1000).stream(Trickle(data, step))]
    assert b"".join(pieces) == data
    assert all(len(p) == 1000 for p in pieces[:-1])
    assert len(pieces) == -(-length // 1000)  # no empty chunk, even at an exact multiple


def test_fixed_chunker_refuses_a_size_that_is_not_positive() -> None:
    with pytest.raises(ValueError):
        FixedChunker(0)


def test_only_page_images_are_cut_at_fixed_offsets() -> None:
    assert is_page_image("sqlite") and is_page_image("sqlite3")
    assert not any(map(is_page_image, ("postgresql", "postgres", "mysql", "mariadb", "x")))
    # A multiple of every SQLite page size (512 B to 64 KiB): no page straddles two chunks.
    assert PAGE_IMAGE_CHUNK % 65536 == 0


def rewrite_in_place(db: DatabaseSpec, rows: int, share: float, seed: int) -> None:
    """Rewrite ``share`` of the rows, scattered, each value kept as long as it was."""
    conn = sqlite3.connect(db.path)  # type: ignore[arg-type]
    for i in random.Random(seed).sample(range(1, rows + 1), int(rows * share)):
        conn.execute("UPDATE orders SET item = ? WHERE id = ?", (f"item {i}"[::-1], i))
    conn.commit()
    conn.close()


def dump_chunks(repo: Repository, snap: Snapshot) -> list[tuple[bytes, int, Kind]]:
    node = repo.find_node(snap.root, DUMP)
    assert node is not None
    return [(bytes(c), repo.locate(c).raw_len, repo.locate(c).kind) for c in node.content]


def test_a_night_of_rows_rewritten_in_place_is_aligned_deltas(
    repo: Repository, tmp_path: Path
) -> None:
    rows = 200_000  # a ~4.5 MB database: five chunks
    app, db = make_app(tmp_path, rows=rows)
    first = backup(repo, app, [db])
    rewrite_in_place(db, rows, 0.01, seed=1)
    second = backup(repo, app, [db])
    rewrite_in_place(db, rows, 0.01, seed=2)
    third = backup(repo, app, [db])

    size = os.path.getsize(db.path)  # type: ignore[arg-type]
    for snap in (first, second, third):
        chunks = dump_chunks(repo, snap)
        assert len(chunks) == -(-size // PAGE_IMAGE_CHUNK) >= 4
        assert all(raw == PAGE_IMAGE_CHUNK for _, raw, _ in chunks[:-1])
    # Every chunk changed (1% of the rows, scattered) and each is the runs that differ from
    # its parent's chunk at the same offset: aligned (payload version 2), a chain each night.
    for snap, depth in ((second, 1), (third, 2)):
        chunks = dump_chunks(repo, snap)
        assert {kind for _, _, kind in chunks} == {Kind.DELTA}
        for blob_id, _, _ in chunks:
            loc = repo.locate(blob_id)
            envelope = repo.fetch_envelope(loc.pack, loc.offset, loc.stored_len)
            payload = delta.open_delta(repo.opener, blob_id, envelope)
            assert delta.payload_version(payload) == 2
            assert repo.delta_depth(blob_id) == depth  # type: ignore[arg-type]
    # 2,000 rows of ~12 bytes a night: a few kB per chunk, not the chunk again.
    assert third.summary.bytes_stored < 100_000 < first.summary.bytes_stored

    # Read back through the chains: the third night's database as it was then.
    live = sqlite3.connect(db.path)  # type: ignore[arg-type]
    expected = live.execute("SELECT id, item FROM orders ORDER BY id").fetchall()
    live.close()
    node = repo.find_node(third.root, DUMP)
    assert node is not None
    with ChunkReader(repo, node.content, size=node.size, content_hash=node.content_hash) as r:
        (tmp_path / "night3.sqlite").write_bytes(r.read())
    conn = sqlite3.connect(tmp_path / "night3.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert conn.execute("SELECT id, item FROM orders ORDER BY id").fetchall() == expected
    conn.close()


def test_a_parent_cut_by_content_is_stored_whole_once_then_deltas_again(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repository whose SQLite dumps were cut by content (before page images were cut at
    fixed offsets): the next night loads none of those chunks as bases (each would be a
    base of another length, for a poor zstd delta) and stores the dump whole, once; the
    night after it is aligned deltas again."""
    rows = 200_000
    app, db = make_app(tmp_path, rows=rows)
    with monkeypatch.context() as m:
        m.setattr(backup_module, "is_page_image", lambda engine: False)
        old = backup(repo, app, [db])
    assert {raw for _, raw, _ in dump_chunks(repo, old)[:-1]} != {PAGE_IMAGE_CHUNK}
    loaded: list[object] = []
    real = Repository.delta_base_for
    monkeypatch.setattr(
        Repository, "delta_base_for", lambda *a, **k: loaded.append(a) or real(*a, **k)
    )
    rewrite_in_place(db, rows, 0.01, seed=1)
    switched = backup(repo, app, [db])
    assert not loaded
    chunks = dump_chunks(repo, switched)
    assert all(raw == PAGE_IMAGE_CHUNK for _, raw, _ in chunks[:-1])
    assert {kind for _, _, kind in chunks} == {Kind.DATA}
    rewrite_in_place(db, rows, 0.01, seed=2)
    after = backup(repo, app, [db])
    assert {kind for _, _, kind in dump_chunks(repo, after)} == {Kind.DELTA}
    assert after.summary.bytes_stored < 100_000


def freed_in_the_middle(path: Path) -> None:
    """A database whose middle is free pages zeroed (``secure_delete``): a run of chunks
    with the same id, between chunks of rows."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, item TEXT)")
    conn.execute("CREATE TABLE junk (b BLOB)")
    rows = [(f"item {i}",) for i in range(30_000)]
    conn.executemany("INSERT INTO orders (item) VALUES (?)", rows)
    conn.executemany("INSERT INTO junk VALUES (?)", [(os.urandom(3000),) for _ in range(200)])
    conn.executemany("INSERT INTO orders (item) VALUES (?)", rows)
    conn.execute("DELETE FROM junk")
    conn.commit()
    conn.close()


@pytest.mark.usefixtures("small_page_chunks")
def test_a_changed_chunk_is_a_delta_of_the_parents_chunk_at_its_offset(
    repo: Repository, tmp_path: Path
) -> None:
    """Chunks never shift in a page image: the base of a changed chunk is the parent's
    chunk at its offset, one base loaded for it. A run of identical chunks (free pages
    zeroed) once led the base choice, which follows a content-defined stream's drift, a
    run's length astray: the next changed chunk whose first page's header changed (rows
    deleted) was stored as a delta of a chunk of zeros, nearly whole."""
    app, db = make_app(tmp_path, rows=0)
    os.unlink(db.path)  # type: ignore[arg-type]
    freed_in_the_middle(Path(db.path))  # type: ignore[arg-type]
    first = backup(repo, app, [db])
    parent = [blob_id for blob_id, _, _ in dump_chunks(repo, first)]
    assert max(parent.count(c) for c in parent) >= 4  # a run of zeroed chunks
    conn = sqlite3.connect(db.path)  # type: ignore[arg-type]
    conn.execute("DELETE FROM orders WHERE id % 7 = 0")  # every page's header changes
    conn.commit()
    conn.close()
    loaded: list[object] = []
    real = Repository.delta_base_for
    with pytest.MonkeyPatch.context() as m:
        m.setattr(Repository, "delta_base_for", lambda *a, **k: loaded.append(a) or real(*a, **k))
        second = backup(repo, app, [db])
    chunks = dump_chunks(repo, second)
    changed = [i for i, (blob_id, _, _) in enumerate(chunks) if blob_id not in parent]
    assert len(changed) >= 8 and len(chunks) == len(parent)
    for i in changed:
        blob_id, _, kind = chunks[i]
        assert kind == Kind.DELTA, i
        loc = repo.locate(blob_id)
        envelope = repo.fetch_envelope(loc.pack, loc.offset, loc.stored_len)
        assert delta.delta_base(delta.open_delta(repo.opener, blob_id, envelope)) == parent[i], i
    assert len(loaded) == len(changed)


@pytest.mark.parametrize("version", [2, 5])
def test_a_repository_without_aligned_deltas_cuts_sqlite_dumps_by_content(
    tmp_path: Path, version: int
) -> None:
    """A repository of format 2 (no deltas) or 3-5 (no aligned deltas) is written as it
    is until ``migrate``: there a chunk that changed is stored whole or as a zstd delta,
    and cut every 1 MiB a page image stored each night every MiB that a changed row
    touched (a 100 MB database with 200 rows rewritten a night, format 2, through the CLI:
    21-23 MB a night against 6.6-7.0 MB cut by content). Such a repository keeps the
    content-defined cut, for SQLite database files backed up as files too."""
    repo = make_repo(str(tmp_path / "repo"), version=version)
    app, db = make_app(tmp_path, rows=200_000)
    as_file = app / "data" / "copy.sqlite"
    as_file.write_bytes(Path(db.path).read_bytes())  # type: ignore[arg-type]
    first = backup(repo, app, [db])
    assert {raw for _, raw, _ in file_chunks(repo, first, as_file)[:-1]} != {PAGE_IMAGE_CHUNK}
    conn = sqlite3.connect(db.path)  # type: ignore[arg-type]
    for i in (1_000, 90_000, 170_000):  # three rows, in three of the five MiB
        conn.execute("UPDATE orders SET item = ? WHERE id = ?", (f"item {i}"[::-1], i))
    conn.commit()
    conn.close()
    second = backup(repo, app, [db])
    for snap in (first, second):
        assert {raw for _, raw, _ in dump_chunks(repo, snap)[:-1]} != {PAGE_IMAGE_CHUNK}
    assert second.summary.bytes_stored < first.summary.bytes_stored / 4
    repo.close()


def file_chunks(repo: Repository, snap: Snapshot, path: Path) -> list[tuple[bytes, int, Kind]]:
    node = repo.find_node(snap.root, os.fsencode(path))
    assert node is not None
    return [(bytes(c), repo.locate(c).raw_len, repo.locate(c).kind) for c in node.content]


@pytest.mark.parametrize("delta_files", [0, 1 << 20])
def test_a_sqlite_file_backed_up_as_a_file_is_cut_at_fixed_offsets(
    repo: Repository, tmp_path: Path, delta_files: int
) -> None:
    """A SQLite database in a backed-up folder (not configured as a database) is cut every
    1 MiB by the readers, and by ``--delta-files``'s reader, so that the nights after its
    first are aligned deltas of the parent's chunk at each offset; other files still by
    content."""
    src = tmp_path / "src"
    src.mkdir()
    rows = 200_000
    make_app(tmp_path / "db", rows=rows)
    db_file = src / "shop.sqlite"
    os.rename(tmp_path / "db" / "shop.sqlite", db_file)
    other = src / "other.bin"
    other.write_bytes(b"SQLite format 2\x00" + random.Random(3).randbytes(3 << 20))
    spec = DatabaseSpec(name="x", engine="sqlite", path=str(db_file))

    def night() -> Snapshot:
        opts = BackupOptions(paths=(str(src),), delta_files=delta_files)
        snap = run_backup(repo, opts).snapshot
        assert snap is not None
        return snap

    first = night()
    size = db_file.stat().st_size
    chunks = file_chunks(repo, first, db_file)
    assert len(chunks) == -(-size // PAGE_IMAGE_CHUNK) >= 4
    assert all(raw == PAGE_IMAGE_CHUNK for _, raw, _ in chunks[:-1])
    assert {raw for _, raw, _ in file_chunks(repo, first, other)} != {PAGE_IMAGE_CHUNK}
    rewrite_in_place(spec, rows, 0.01, seed=1)
    second = night()
    chunks = file_chunks(repo, second, db_file)
    assert all(raw == PAGE_IMAGE_CHUNK for _, raw, _ in chunks[:-1])
    kinds = {kind for _, _, kind in chunks}
    if delta_files:
        assert kinds == {Kind.DELTA} and second.summary.bytes_stored < 100_000
    else:
        assert kinds == {Kind.DATA}
    node = repo.find_node(second.root, os.fsencode(db_file))
    assert node is not None
    with ChunkReader(repo, node.content, size=node.size, content_hash=node.content_hash) as r:
        assert r.read() == db_file.read_bytes()
