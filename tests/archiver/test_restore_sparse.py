"""Restore leaves runs of zeros as holes, inside chunks too: a sparse source (a VM image,
a database file with free pages) comes back no bigger on disk than it was."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.archiver.restore import RestoreOptions, restore
from casbackup.archiver.writers import HOLE_MIN, data_extents

MiB = 1 << 20


def _extents_by_hand(data: bytes) -> list[tuple[int, int]] | None:
    """``data_extents``' rule spelled out byte by byte: every maximal run of HOLE_MIN or
    more zero bytes is left out."""
    runs, i, n = [], 0, len(data)
    while i < n:
        if data[i]:
            i += 1
            continue
        j = i
        while j < n and not data[j]:
            j += 1
        if j - i >= HOLE_MIN:
            runs.append((i, j))
        i = j
    if not runs:
        return None
    out, pos = [], 0
    for a, b in runs:
        if a > pos:
            out.append((pos, a))
        pos = b
    if pos < n:
        out.append((pos, n))
    return out


def test_extents_match_the_rule_on_random_layouts() -> None:
    rng = random.Random(7)
    for _ in range(400):
        n = rng.choice([0, 1, HOLE_MIN - 1, HOLE_MIN, HOLE_MIN + 1, 10_000, 70_000, 300_000])
        data = bytearray(rng.randbytes(n)) if rng.random() < 0.5 else bytearray(b"\x01" * n)
        for _ in range(rng.randint(0, 5)):
            if n:
                at = rng.randrange(n)
                length = rng.choice([1, 100, HOLE_MIN - 1, HOLE_MIN, HOLE_MIN + 1, 9000, n])
                data[at : at + length] = bytes(len(data[at : at + length]))
        assert data_extents(bytes(data)) == _extents_by_hand(bytes(data))


def test_extents_of_the_common_cases() -> None:
    assert data_extents(b"x" * MiB) is None  # no run: written whole
    assert data_extents(bytes(8 * MiB)) == []  # all zeros: one hole
    data = b"a" * 10 + bytes(3 * MiB) + b"b" * 5
    assert data_extents(data) == [(0, 10), (10 + 3 * MiB, 15 + 3 * MiB)]


def _allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_a_sparse_file_comes_back_as_small_on_disk(repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Data scattered in a 256 MiB file of holes: every chunk around the data is mostly
    zeros (the chunker cuts zeros at its largest size), and those zeros used to be written
    (16 MiB on disk for a source of 16 KiB)."""
    src = tmp_path / "src"
    src.mkdir()
    image = src / "vm.img"
    with open(image, "wb") as f:
        f.truncate(256 * MiB)
        for at in (5 * MiB, 77 * MiB + 1234, 130 * MiB + 12_345, 256 * MiB - 4096):
            f.seek(at)
            f.write(random.Random(at).randbytes(4096))
    source_on_disk = _allocated(image)
    if source_on_disk > 64 * 1024:
        pytest.skip(f"the tests' file system does not keep holes ({source_on_disk} bytes)")
    snap = run_backup(repo, BackupOptions(paths=(str(src),), type="full")).snapshot
    assert snap is not None
    target = tmp_path / "out"
    restore(repo, snap, RestoreOptions(target=str(target)))
    restored = target / str(image).lstrip("/")
    assert restored.read_bytes() == image.read_bytes()
    assert _allocated(restored) <= source_on_disk + 16 * 1024, (
        f"restored file takes {_allocated(restored)} bytes, the source {source_on_disk}"
    )
