"""A zstd frame that records a huge content size is refused before anything is
allocated, by every decoder of the repository's frames (zstandard itself ignores
``max_output_size`` when the frame records its size)."""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable

import pytest
import zstandard

from casbackup.errors import FormatError, IntegrityError
from casbackup.repo import aligned_delta, codec, delta

BASE_ID = b"\x11" * 32
_BOMB = 256 * 1024 * 1024  # zeros: a frame of a few kB


@pytest.fixture(scope="module")
def bomb() -> bytes:
    # an aligned run list of one run followed by 256 MiB the frame says it holds
    plain_head = struct.pack("<III", 1, 0, 1)
    comp = zstandard.ZstdCompressor(level=3, write_content_size=True)
    return comp.compress(plain_head + bytes(_BOMB))


def _peak(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        with pytest.raises((FormatError, IntegrityError)):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_codec_refuses_a_frame_declaring_too_much(bomb: bytes) -> None:
    assert _peak(lambda: codec.decompress(bytes((codec.CODEC_ZSTD,)) + bomb)) < 8 << 20


def test_aligned_delta_refuses_a_frame_declaring_too_much(bomb: bytes) -> None:
    base = bytes(1000)
    assert _peak(lambda: aligned_delta.apply_frame(bomb, base, len(base))) < 8 << 20
    payload = bytes((delta.ALIGNED_VERSION,)) + BASE_ID + bomb
    assert _peak(lambda: delta.apply_delta(payload, base, len(base))) < 8 << 20


def test_patch_from_refuses_a_frame_declaring_more_than_the_blob(bomb: bytes) -> None:
    base = bytes(1000)
    payload = bytes((delta.DELTA_VERSION,)) + BASE_ID + bomb
    assert _peak(lambda: delta.apply_delta(payload, base, 1000)) < 8 << 20


def test_aligned_delta_with_more_runs_than_bytes_is_malformed() -> None:
    frame = zstandard.ZstdCompressor().compress(struct.pack("<I", 1 << 30))
    with pytest.raises(FormatError, match="more runs"):
        aligned_delta.apply_frame(frame, bytes(10), 10)
