"""``check --read-data`` reads each pack front to back in pieces (verify/pack_scan.py).

Every byte must still reach the name check (gaps, header, trailer), damage must be
reported exactly as when the pack was read whole, and no read may be much larger than
one blob, whether the pack is a local file (one open file) or read by ranged ``get``.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.crypto.keyfile import WEAK_KDF
from casbackup.repo.config import RepoConfig
from casbackup.repo.ids import FileId
from casbackup.repo.index import iter_records
from casbackup.repo.pack import PackEntry, pack_name, read_header
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalBackend
from casbackup.testing.faults import FaultyBackend
from casbackup.testing.fixtures import PASSWORD, TEST_CONFIG_KW
from casbackup.verify import pack_scan
from casbackup.verify.check import CheckOptions, check
from casbackup.verify.pack_scan import PackVerdict, verify_pack

PACK_SIZE = 4 << 20  # multi-MiB packs of small (<= 64 KiB) chunks


@pytest.fixture(scope="module")
def repo_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    tmp = tmp_path_factory.mktemp("scan")
    src = tmp / "src"
    src.mkdir()
    for i in range(3):
        (src / f"f{i}").write_bytes(os.urandom(3 << 20))
    path = str(tmp / "repo")
    config = RepoConfig(**{**TEST_CONFIG_KW, "pack_size": PACK_SIZE})
    with Repository.init(LocalBackend(path), PASSWORD.encode(), kdf=WEAK_KDF, config=config) as r:
        run_backup(r, BackupOptions(paths=(str(src),), type="full"))
    return path


@pytest.fixture
def copy(repo_path: str, tmp_path: Path) -> str:
    """A private copy of the repository, free to damage."""
    target = tmp_path / "repo"
    for dirpath, _dirs, files in os.walk(repo_path):
        rel = os.path.relpath(dirpath, repo_path)
        (target / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            (target / rel / name).write_bytes(Path(dirpath, name).read_bytes())
    return str(target)


@contextmanager
def opened(path: str, ranged: bool) -> Iterator[Repository]:
    """The repository on a local file backend, or wrapped so only ranged ``get`` is left."""
    backend = LocalBackend(path)
    with Repository.open(FaultyBackend(backend) if ranged else backend, PASSWORD.encode()) as r:
        yield r


def biggest_pack(repo: Repository) -> tuple[FileId, int, bytes, list[PackEntry]]:
    """(pack, size, its index records, its header entries) of the largest pack."""
    name, size = max(repo.backend.list("data/"), key=lambda item: item[1])
    pack = FileId(name.rsplit("/", 1)[1])
    records = b""
    for fid in repo.index_files():
        for p, recs in repo.load_index_records(fid)[1]:
            if p == pack:
                records += recs
    header = read_header(repo.backend.get, name, size, repo.opener)
    assert size > 3 << 20 and len(header) > 20
    return pack, size, records, header


def flip(path: str, pack: FileId, offset: int) -> None:
    with open(os.path.join(path, pack_name(pack)), "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def name_error(pack: str) -> str:
    return f"pack {pack[:12]} does not match its name: its bytes were changed"


@pytest.mark.parametrize("ranged", [False, True])
def test_a_clean_pack_verifies(repo_path: str, ranged: bool) -> None:
    with opened(repo_path, ranged) as repo:
        pack, size, records, _ = biggest_pack(repo)
        assert verify_pack(repo, pack, size, records) == PackVerdict(bytes_read=size)


@pytest.mark.parametrize("ranged", [False, True])
def test_damaged_header_fails_the_name_check_and_falls_back_to_the_index(
    copy: str, ranged: bool
) -> None:
    with opened(copy, ranged) as repo:
        pack, size, records, header = biggest_pack(repo)
        last = header[-1]
        flip(copy, pack, last.offset + last.stored_len + 40)  # inside the header envelope
        verdict = verify_pack(repo, pack, size, records)
    assert verdict.errors[0] == name_error(pack)
    assert verdict.errors[1].startswith(f"pack {pack[:12]} header is damaged (")
    assert verdict.errors[1].endswith("; checking blobs via the index")
    assert len(verdict.errors) == 2 and verdict.damaged == []  # every blob checked, all good


@pytest.mark.parametrize("ranged", [False, True])
def test_a_byte_changed_in_a_gap_fails_the_name_check(copy: str, ranged: bool) -> None:
    # With the header damaged, the index may leave bytes no entry covers (here: one blob
    # it does not list). They are hashed all the same, so changing one is still found.
    with opened(copy, ranged) as repo:
        pack, size, records, header = biggest_pack(repo)
        skipped = header[len(header) // 2]
        kept = b"".join(
            records[i : i + 45]
            for i in range(0, len(records), 45)
            if next(iter_records(records[i : i + 45]))[1] != skipped.id
        )
        assert len(kept) == len(records) - 45
        last = header[-1]
        flip(copy, pack, last.offset + last.stored_len + 40)  # header: fall back to `kept`
        flip(copy, pack, skipped.offset + skipped.stored_len // 2)  # the gap
        verdict = verify_pack(repo, pack, size, kept)
    assert verdict.errors[0] == name_error(pack)
    assert verdict.damaged == []  # the gap belongs to no listed blob


@pytest.mark.parametrize("ranged", [False, True])
def test_a_blob_larger_than_a_read_piece(
    copy: str, ranged: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pieces of 1000 bytes: blobs are still read whole, gaps and header in many pieces.
    monkeypatch.setattr(pack_scan, "PIECE", 1000)
    with opened(copy, ranged) as repo:
        pack, size, records, header = biggest_pack(repo)
        assert verify_pack(repo, pack, size, records) == PackVerdict(bytes_read=size)
        victim = [e for e in header if e.stored_len > 4 * pack_scan.PIECE][3]
        flip(copy, pack, victim.offset + victim.stored_len - 20)
        verdict = verify_pack(repo, pack, size, records)
    assert verdict.errors == [name_error(pack), f"pack {pack[:12]}: 1 damaged blob"]
    assert [bid for bid, _ in verdict.damaged] == [victim.id]
    assert verdict.damaged[0][1].startswith(f"blob {victim.id.hex()[:12]} authentication failed")


@pytest.mark.parametrize("ranged", [False, True])
def test_truncated_pack_checks_what_survives(copy: str, ranged: bool) -> None:
    with opened(copy, ranged) as repo:
        pack, size, records, header = biggest_pack(repo)
        cut = size // 2
        os.truncate(os.path.join(copy, pack_name(pack)), cut)
        verdict = verify_pack(repo, pack, cut, records)
    lost = [e.id for e in header if e.offset + e.stored_len > cut]
    assert lost and len(lost) < len(header)
    assert verdict.bytes_read == cut
    assert verdict.errors[0] == name_error(pack)
    assert "header is damaged" in verdict.errors[1]
    assert verdict.errors[2] == f"pack {pack[:12]}: {len(lost)} damaged blob{'s' * (len(lost) > 1)}"
    assert [bid for bid, _ in verdict.damaged] == lost


@pytest.mark.parametrize("ranged", [False, True])
def test_a_pack_shorter_than_listed_cannot_be_read(copy: str, ranged: bool) -> None:
    # Truncated between the listing and the read: a read fails midway, as a read error.
    with opened(copy, ranged) as repo:
        pack, size, records, _ = biggest_pack(repo)
        os.truncate(os.path.join(copy, pack_name(pack)), size - 10)
        verdict = verify_pack(repo, pack, size, records)
    assert verdict.bytes_read is None and verdict.damaged == []
    assert len(verdict.errors) == 1
    assert verdict.errors[0].startswith(f"pack {pack[:12]} cannot be read: ")
    assert "is truncated" in verdict.errors[0]


@pytest.mark.parametrize("ranged", [False, True])
def test_a_missing_pack_cannot_be_read(copy: str, ranged: bool) -> None:
    with opened(copy, ranged) as repo:
        pack, size, records, _ = biggest_pack(repo)
    os.unlink(os.path.join(copy, pack_name(pack)))
    with opened(copy, ranged) as repo:  # afresh: the backend keeps read handles open
        verdict = verify_pack(repo, pack, size, records)
    assert verdict == PackVerdict(
        errors=[
            f"pack {pack[:12]} cannot be read: {pack_name(pack)} is missing from the repository"
        ]
    )


@pytest.mark.parametrize("ranged", [False, True])
def test_memory_stays_about_one_blob(
    repo_path: str, ranged: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []
    source = pack_scan._RangedSource if ranged else pack_scan._FileSource
    real_read = source.read

    def read(self: object, offset: int, length: int) -> memoryview:
        asked.append(length)
        return real_read(self, offset, length)  # type: ignore[arg-type]

    monkeypatch.setattr(source, "read", read)
    # Ranged gets fetch a window of WINDOW bytes (8 MiB: round trips, not memory, are an
    # object store's cost); at 64 KiB the same code must hold about one blob.
    monkeypatch.setattr(pack_scan, "WINDOW", 64 * 1024)
    with opened(repo_path, ranged) as repo:
        pack, size, records, header = biggest_pack(repo)
        biggest_blob = max(e.stored_len for e in header)
        tracemalloc.start()
        try:
            verdict = verify_pack(repo, pack, size, records)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert verdict == PackVerdict(bytes_read=size)
    assert sum(asked) >= size  # every byte was read (the tail twice: header, then hash)
    assert max(asked) <= max(biggest_blob, 64 * 1024, pack_scan.PIECE)
    assert max(asked) < size / 16
    # A few blobs' worth (stored, plain, decompressed), never the 4 MiB pack.
    assert peak < size / 8, (peak, size)


def test_an_object_store_pack_is_read_in_a_few_gets(repo_path: str) -> None:
    """A get per blob cost an object store a round trip each: check --read-data of 215 MB
    on SeaweedFS over loopback took 57-67 s, 8-9 s since."""
    gets: list[int] = []
    with opened(repo_path, True) as repo:
        real_get = repo.backend.get

        def get(name: str, offset: int = 0, length: int | None = None) -> bytes:
            gets.append(length or 0)
            return real_get(name, offset, length)

        repo.backend.get = get  # type: ignore[method-assign]
        pack, size, records, header = biggest_pack(repo)
        gets.clear()
        assert verify_pack(repo, pack, size, records) == PackVerdict(bytes_read=size)
    assert len(header) > 20 and len(gets) <= 3, gets  # the tail (header), then the pack


def test_check_finds_the_same_damage_streaming(copy: str) -> None:
    with opened(copy, False) as repo:
        pack, _size, _records, header = biggest_pack(repo)
    flip(copy, pack, header[5].offset + 50)
    with opened(copy, False) as repo:
        report = check(repo, CheckOptions(read_data=True, workers=2))
    assert name_error(pack) in report.errors
    assert f"pack {pack[:12]}: 1 damaged blob" in report.errors
    assert report.damaged_packs == {pack}
