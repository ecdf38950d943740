"""Aligned deltas (DELTA payload version 2, format version 6): a chunk as the byte runs
where it differs from an equally long base.

A database page image (SQLite's file, a dump that keeps rows in place and lengths equal)
changes where it is: a row rewritten in place changes a few dozen bytes of one page and
nothing moves. zstd's "patch-from" (payload version 1, repo/delta.py) finds those bytes
too, but first indexes every position of the base (~2.3 ns a byte: 235 us of a 100 kB
chunk's 285 us), which made a SQLite night's backup 1.6-1.8x the CPU of storing chunks
whole (bench/DUMPS.md "Where a SQLite night's CPU goes"). Comparing the two equally long
chunks block by block costs a memcmp per block and a little Python per changed block
(~110 us a 100 kB chunk with a dozen changed rows), and applying it is a copy of the base
and one slice assignment per run (~20 us).

The decoded frame (zstd, content size recorded) is::

    count[u32] | count x (gap[u32], length[u32]) | the runs' bytes, concatenated

all little-endian. Runs are in order: the first starts ``gap`` bytes into the chunk, each
next one ``gap`` bytes after the end of the one before; every length is at least 1 and
every run lies within the base. The target is the base with each run's bytes replaced, so
it is exactly as long as the base. Anything else is malformed (FormatError).
"""

from __future__ import annotations

import struct

from casbackup.errors import FormatError, IntegrityError
from casbackup.repo import codec

ALIGNED_VERSION = 2
# Blocks compared whole first (a memcmp each), then the changed ones in sub-blocks whose
# first and last differing bytes are found exactly. Measured on 1,007 changed 100 kB
# chunk pairs of a 100 MB SQLite table with 1% of its rows rewritten in place: 4096/512
# took 108 us a chunk and stored 422 changed bytes; 4096/256 136 us and 402 bytes,
# 4096/128 192 us and 361 bytes (the runs' bytes compress with zstd either way).
_BLOCK = 4096
_SUB = 512
# Runs closer than this are merged: the bytes between cost less than another run header.
_MERGE_GAP = 8
_U32 = struct.Struct("<I")
_MAX_U32 = (1 << 32) - 1


def changed_runs(
    base: bytes | memoryview, target: bytes | memoryview, max_changed: int | None = None
) -> list[list[int]] | None:
    """[start, end) byte ranges where ``target`` differs from ``base`` (equal lengths), in
    order: in each 512-byte sub-block from its first to its last differing byte, runs
    closer than 8 bytes merged. None as soon as the runs hold more than ``max_changed``
    bytes (the rest is not scanned). ValueError when the lengths differ."""
    n = len(target)
    if len(base) != n:
        raise ValueError("aligned runs need equally long chunks")
    base_b = base if isinstance(base, bytes) else bytes(base)
    target_b = target if isinstance(target, bytes) else bytes(target)
    budget = n if max_changed is None else max_changed
    runs: list[list[int]] = []
    for block in range(0, n, _BLOCK):
        block_end = min(block + _BLOCK, n)
        if base_b[block:block_end] == target_b[block:block_end]:
            continue
        for sub in range(block, block_end, _SUB):
            sub_end = min(sub + _SUB, block_end)
            old, new = base_b[sub:sub_end], target_b[sub:sub_end]
            if old == new:
                continue
            diff = int.from_bytes(old, "little") ^ int.from_bytes(new, "little")
            start = sub + (((diff & -diff).bit_length() - 1) >> 3)
            end = sub + ((diff.bit_length() - 1) >> 3) + 1
            if runs and start - runs[-1][1] <= _MERGE_GAP:
                budget -= end - runs[-1][1]
                runs[-1][1] = end
            else:
                budget -= end - start
                runs.append([start, end])
        if budget < 0:
            return None
    return runs


def encode_frame(
    base: bytes | memoryview, target: bytes | memoryview, level: int, max_share: float
) -> bytes | None:
    """The zstd frame (``level``) of ``target`` as runs over ``base``, or None when the
    chunks differ in length or in more than ``max_share`` of their bytes (then patch-from,
    which finds moved bytes, is the better delta; the scan stops there, so a chunk whose
    rows grew and shifted costs a page or two of scanning before patch-from)."""
    n = len(target)
    if len(base) != n or n > _MAX_U32:
        return None
    runs = changed_runs(base, target, int(n * max_share))
    if runs is None:
        return None
    head = [len(runs)]
    pos = 0
    for start, end in runs:
        head += (start - pos, end - start)
        pos = end
    view = memoryview(target)
    body = b"".join(view[start:end] for start, end in runs)
    plain = struct.pack(f"<{len(head)}I", *head) + body
    return codec._compressor(level).compress(plain)


def apply_frame(frame: bytes | memoryview, base: bytes, raw_len: int) -> bytes:
    """``base`` with the runs of ``frame`` written over it (a new bytes object).

    Raises FormatError (a damaged frame, runs outside the base, bytes left over or
    missing) or IntegrityError (the base is not ``raw_len`` long: the result would not be
    either)."""
    out = bytearray(base)
    apply_frame_into(frame, out, raw_len)
    return bytes(out)


def apply_frame_into(frame: bytes | memoryview, buf: bytearray, raw_len: int) -> None:
    """``apply_frame`` in place: the runs of ``frame`` written over ``buf`` (the base's
    plaintext). A chain of aligned deltas is resolved in one buffer this way, without
    two copies of the chunk per level (on a 100 kB chunk they were most of a level's
    ~22 us). Same errors as ``apply_frame``; after one, ``buf`` holds no useful data."""
    if len(buf) != raw_len:
        raise IntegrityError("an aligned delta's base is not as long as the blob")
    # The runs' bytes are at most the base, each run header 8 bytes and a run at least 1.
    limit = min(4 + 9 * raw_len, codec._MAX_DECOMPRESSED)
    plain = codec.decompress_frame(codec._decompressor(), frame, limit)
    if len(plain) < _U32.size:
        raise FormatError("aligned delta is too short")
    (count,) = _U32.unpack_from(plain, 0)
    if count > raw_len:  # every run is at least a byte long
        raise FormatError("aligned delta has more runs than its base has bytes")
    data_at = _U32.size + 8 * count
    if data_at > len(plain):
        raise FormatError("aligned delta's run list is cut short")
    head = struct.unpack_from(f"<{2 * count}I", plain, _U32.size)
    view = memoryview(plain)
    pos, data = 0, data_at
    for i in range(0, 2 * count, 2):
        length = head[i + 1]
        start = pos + head[i]
        pos = start + length
        if length == 0 or pos > raw_len or data + length > len(plain):
            raise FormatError("aligned delta's runs do not fit its base")
        buf[start:pos] = view[data : data + length]
        data += length
    if data != len(plain):
        raise FormatError("aligned delta holds bytes no run uses")
