"""Aligned deltas (DELTA payload version 2, format version 6): the codec, its damage, and
which repositories write them."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from casbackup.crypto.keyfile import WEAK_KDF
from casbackup.errors import FormatError, IntegrityError
from casbackup.repo import aligned_delta, codec, delta
from casbackup.repo.config import RepoConfig
from casbackup.repo.ids import Kind
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalBackend

BASE_ID = b"\x11" * 32


def _patched(base: bytes, changes: dict[int, int]) -> bytes:
    out = bytearray(base)
    for pos, value in changes.items():
        out[pos] = value
    return bytes(out)


def _round_trip(base: bytes, target: bytes) -> bytes:
    frame = aligned_delta.encode_frame(base, target, 3, 1.0)
    assert frame is not None
    assert aligned_delta.apply_frame(frame, base, len(base)) == target
    return frame


@pytest.mark.parametrize(
    "positions",
    [
        [],  # unchanged: no runs
        [0],
        [99_999],
        [4095, 4096],  # across a block boundary
        [511, 512, 1023, 1024],  # across sub-blocks
        [10, 18, 27],  # 8 apart: merged; 9 apart: not
        list(range(5000, 5100)),
    ],
)
def test_round_trip_at_the_edges(positions: list[int]) -> None:
    base = os.urandom(100_000)
    target = _patched(base, {p: base[p] ^ 0xFF for p in positions})
    _round_trip(base, target)


def test_runs_are_exact_and_merged() -> None:
    base = bytes(10_000)
    # within a 512-byte sub-block a run goes from its first to its last changed byte;
    # runs of neighbouring sub-blocks closer than 8 bytes are merged
    target = _patched(base, {100: 1, 105: 1, 515: 1, 1023: 1, 1027: 1, 4096: 1, 9_999: 1})
    assert aligned_delta.changed_runs(base, target) == [
        [100, 106],
        [515, 1028],
        [4096, 4097],
        [9_999, 10_000],
    ]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(0, 20_000),
    changes=st.lists(st.tuples(st.integers(0, 19_999), st.integers(0, 255)), max_size=60),
    seed=st.binary(min_size=1, max_size=64),
)
def test_round_trip_any_changes(size: int, changes: list[tuple[int, int]], seed: bytes) -> None:
    base = (seed * (size // len(seed) + 1))[:size]
    target = _patched(base, {p: v for p, v in changes if p < size})
    _round_trip(base, target)


def test_not_aligned_when_lengths_differ_or_too_much_changed() -> None:
    base = os.urandom(50_000)
    assert aligned_delta.encode_frame(base, base + b"x", 3, 1.0) is None
    shifted = b"x" + base[:-1]  # same length, every byte moved
    assert aligned_delta.encode_frame(base, shifted, 3, 0.5) is None
    # the scan stops once the budget is spent: a byte in every 4 KiB block is 13 bytes
    every_block = _patched(base, {p: base[p] ^ 1 for p in range(0, 50_000, 4096)})
    assert aligned_delta.changed_runs(base, every_block, 12) is None
    assert len(aligned_delta.changed_runs(base, every_block, 13) or []) == 13
    assert aligned_delta.encode_frame(base, every_block, 3, 0.001) is not None
    # encode_aligned declines it: patch-from finds the moved bytes
    assert delta.encode_aligned(BASE_ID, base, shifted, 3) is None
    payload = delta.encode_delta(BASE_ID, base, shifted, 3)
    assert len(payload) < 1_000 and delta.apply_delta(payload, base, len(base)) == shifted


def _frame(plain: bytes) -> bytes:
    return codec._compressor(3).compress(plain)


def _runs(*runs: tuple[int, int], data: bytes = b"") -> bytes:
    flat = [v for run in runs for v in run]
    return struct.pack(f"<{1 + len(flat)}I", len(runs), *flat) + data


@pytest.mark.parametrize(
    ("plain", "why"),
    [
        (b"", "too short"),
        (b"\x01\x00", "too short"),
        (_runs((0, 4)), "run list"),  # the bytes are missing
        (struct.pack("<I", 1000), "cut short"),  # count beyond the frame
        (_runs((0, 0)), "do not fit"),  # an empty run
        (_runs((95, 10), data=b"x" * 10), "do not fit"),  # past the end of the base
        (_runs((0x7FFF_FFFF, 1), data=b"x"), "do not fit"),
        (_runs((0, 2), data=b"xyz"), "no run uses"),  # a byte left over
        (_runs((0, 2), (0, 2), data=b"xy"), "do not fit"),  # the second run's bytes missing
    ],
)
def test_damaged_frames_are_refused(plain: bytes, why: str) -> None:
    with pytest.raises(FormatError):
        aligned_delta.apply_frame(_frame(plain), bytes(100), 100)


def test_a_frame_that_is_not_zstd_and_a_wrong_base() -> None:
    with pytest.raises(FormatError):
        aligned_delta.apply_frame(b"not zstd at all", bytes(100), 100)
    frame = _round_trip(bytes(100), b"\x01" + bytes(99))
    with pytest.raises(IntegrityError):
        aligned_delta.apply_frame(frame, bytes(101), 100)  # the base is not the blob's length


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_any_frame_content_is_refused_or_decoded(plain: bytes) -> None:
    try:
        out = aligned_delta.apply_frame(_frame(plain), bytes(64), 64)
    except FormatError:
        return
    assert len(out) == 64


def test_payload_versions() -> None:
    base = os.urandom(30_000)
    target = _patched(base, {7: 0, 20_000: 1})
    aligned = delta.encode_aligned(BASE_ID, base, target, 3)
    assert aligned is not None and delta.payload_version(aligned) == 2
    assert delta.delta_base(aligned) == BASE_ID
    assert delta.apply_delta(aligned, base, len(base)) == target
    # a reader holding the base as a zstd dictionary (restore's writers) decodes it too
    assert delta.apply_delta(aligned, delta.base_dictionary(base), len(base)) == target
    assert delta.payload_version(delta.encode_delta(BASE_ID, base, target, 3)) == 1
    with pytest.raises(FormatError):
        delta.payload_version(b"\x03" + aligned[1:])


def _repo(tmp_path, name: str, version: int) -> Repository:
    return Repository.init(
        LocalBackend(str(tmp_path / name)),
        b"pw",
        kdf=WEAK_KDF,
        config=RepoConfig(version=version),
    )


def _stored_payload(repo: Repository, blob_id: bytes) -> bytes:
    loc = repo.locate(blob_id)
    assert loc.kind == Kind.DELTA
    envelope = repo.fetch_envelope(loc.pack, loc.offset, loc.stored_len)
    return delta.open_delta(repo.opener, blob_id, envelope)


@pytest.mark.parametrize(("version", "payload_version"), [(6, 2), (5, 1), (3, 1)])
def test_which_repositories_write_aligned_deltas(
    tmp_path, version: int, payload_version: int
) -> None:
    repo = _repo(tmp_path, "r", version)
    base = os.urandom(200_000)
    target = _patched(base, {p: 0 for p in range(1000, 200_000, 9_000)})
    base_id, _ = repo.save_blob(Kind.DATA, base)
    repo.flush()
    blob_id, added = repo.save_data_delta(target, base_id)
    repo.flush()
    assert added and delta.payload_version(_stored_payload(repo, blob_id)) == payload_version
    again = Repository.open(LocalBackend(str(tmp_path / "r")), b"pw")
    assert again.load_blob(blob_id, Kind.DATA) == target


def test_a_version_5_repository_gains_aligned_deltas_at_migrate(tmp_path, monkeypatch) -> None:
    """Before migrate: patch-from only (a version 5 casbackup reads everything); after it,
    aligned deltas, and a version 5 reader refuses the repository before reading any."""
    from casbackup.errors import UnsupportedFormat
    from casbackup.maintenance.migrate import migrate
    from casbackup.repo import config as config_module

    repo = _repo(tmp_path, "r", 5)
    base = os.urandom(100_000)
    base_id, _ = repo.save_blob(Kind.DATA, base)
    repo.flush()
    before, _ = repo.save_data_delta(_patched(base, {10: 0}), base_id)
    repo.flush()
    assert delta.payload_version(_stored_payload(repo, before)) == 1
    migrate(repo)
    assert repo.config.version == 6 and repo.aligned_deltas_allowed
    after, _ = repo.save_data_delta(_patched(base, {20: 0}), base_id)
    repo.flush()
    assert delta.payload_version(_stored_payload(repo, after)) == 2
    repo.close()
    with open(tmp_path / "r" / "config", "rb") as f:
        raw = f.read()
    with monkeypatch.context() as patch:
        patch.setattr(config_module, "FORMAT_VERSION", 5)
        with pytest.raises(UnsupportedFormat) as exc:
            RepoConfig.decode(raw)
    assert exc.value.exit_code == 21 and "upgrade casbackup" in str(exc.value)
    again = Repository.open(LocalBackend(str(tmp_path / "r")), b"pw")
    assert again.load_blob(after, Kind.DATA) == _patched(base, {20: 0})
    assert again.load_blob(before, Kind.DATA) == _patched(base, {10: 0})


@pytest.mark.parametrize("version", [6, 5])
def test_a_base_that_is_not_what_its_id_says_is_never_built_on(tmp_path, version: int) -> None:
    """A backup hashes each delta base it loads against its id: a base whose authenticated
    bytes are not what its id says (a software fault) is damage, and a delta built on it
    would be lost when `repair packs` drops it (helper-75 reproduced exactly that while
    the hash was skipped). The new chunk is stored whole instead."""
    repo = _repo(tmp_path, "r", version)
    good = os.urandom(100_000)
    lying = _patched(good, {500: good[500] ^ 1})  # stored under good's id
    good_id = repo.blob_id(good)
    repo.verify_before_write = False
    repo.save_blob(Kind.DATA, lying, good_id)
    repo.verify_before_write = True
    repo.flush()
    assert repo.delta_base_for(good_id) is None  # the backup's way in
    target = _patched(good, {70_000: 7})  # and a caller that hands no base over
    target_id, added = repo.save_data_delta(target, good_id)
    repo.flush()
    assert added and repo.locate(target_id).kind == Kind.DATA
    assert repo.load_blob(target_id, Kind.DATA) == target


def test_a_tree_delta_is_never_aligned(tmp_path) -> None:
    """repo_format.md "Tree deltas": a TREE_DELTA's payload is version 1 (patch-from); a
    version 2 payload in one is malformed, for every reader (load_tree's chain, prune's
    repack check), even though it would decode to the tree."""
    from casbackup.maintenance.prune import _verify

    repo = _repo(tmp_path, "r", 6)
    base = os.urandom(50_000)
    target = _patched(base, {100: base[100] ^ 1})
    base_id, _ = repo.save_blob(Kind.TREE, base)
    repo.flush()
    tree_id = repo.blob_id(target)
    payload = delta.encode_aligned(base_id, base, target, 3)
    assert payload is not None
    envelope = repo.sealer.seal(Kind.TREE_DELTA, tree_id, payload)
    repo.store_sealed(Kind.TREE_DELTA, tree_id, envelope, len(target), base_id)
    repo.flush()
    with pytest.raises(IntegrityError, match=f"blob {tree_id.hex()[:16]} .*version 2"):
        repo.load_blob(tree_id, Kind.TREE)
    loc = repo.locate(tree_id)
    with pytest.raises(IntegrityError, match="version 2"):
        _verify(repo, tree_id, loc, envelope, loc.pack)
