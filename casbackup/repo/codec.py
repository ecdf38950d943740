"""Compression inside the envelope: ``codec[1] || payload``.

codec 0 = stored raw, 1 = zstd frame (with its content size). A chunk is stored raw
when zstd does not shrink it by at least 3%, judged on a 64 KiB sample for large
chunks so incompressible data costs almost no compression time.
"""

from __future__ import annotations

import threading

import zstandard

from casbackup.errors import FormatError

CODEC_RAW = 0
CODEC_ZSTD = 1
_SAMPLE = 64 * 1024
_MAX_DECOMPRESSED = 64 * 1024 * 1024  # larger than any blob we write; guards against zip bombs

_local = threading.local()


def _compressor(level: int) -> zstandard.ZstdCompressor:
    # ZstdCompressor objects are not thread-safe: one per thread and level.
    cache = getattr(_local, "compressors", None)
    if cache is None:
        cache = _local.compressors = {}
    comp = cache.get(level)
    if comp is None:
        comp = cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return comp


def _decompressor() -> zstandard.ZstdDecompressor:
    dec = getattr(_local, "decompressor", None)
    if dec is None:
        dec = _local.decompressor = zstandard.ZstdDecompressor()
    return dec


def decompress_frame(
    dec: zstandard.ZstdDecompressor, frame: bytes | memoryview, limit: int = _MAX_DECOMPRESSED
) -> bytes:
    """One zstd ``frame`` decompressed with ``dec``, at most ``limit`` bytes.

    zstandard ignores ``max_output_size`` when the frame records its content size and
    allocates whatever that says (a 6 kB frame of zeros declaring 300 MB took 300 MB), so
    the recorded size is checked first. Raises FormatError (damaged, or larger than
    ``limit``)."""
    try:
        size = zstandard.frame_content_size(frame)
        if size > limit:
            raise FormatError(f"a zstd frame declares {size} bytes, over the {limit} limit")
        return dec.decompress(frame, max_output_size=max(limit, 1))  # 0 means no limit
    except zstandard.ZstdError as exc:
        raise FormatError(f"damaged zstd payload: {exc}") from None


def compress(data: bytes | memoryview, level: int | None) -> bytes:
    """Return codec byte + payload. ``level=None`` disables compression."""
    if level is None or len(data) < 64:
        return bytes((CODEC_RAW,)) + data
    comp = _compressor(level)
    if len(data) > 2 * _SAMPLE:
        sample = data[:_SAMPLE]
        if len(comp.compress(sample)) > 0.97 * len(sample):
            return bytes((CODEC_RAW,)) + data
    packed = comp.compress(data)
    if len(packed) > 0.97 * len(data):
        return bytes((CODEC_RAW,)) + data
    return bytes((CODEC_ZSTD,)) + packed


def decompress(data: bytes) -> bytes:
    payload = decompress_view(data)
    return payload if isinstance(payload, bytes) else bytes(payload)


def decompress_view(data: bytes) -> bytes | memoryview:
    """Like ``decompress``, but a raw payload comes back as a view, not a copy: a caller
    that only hashes it (``check --read-data``) saves copying most of the data once."""
    if not data:
        raise FormatError("empty payload")
    codec = data[0]
    if codec == CODEC_RAW:
        return memoryview(data)[1:]
    if codec == CODEC_ZSTD:
        return decompress_frame(_decompressor(), memoryview(data)[1:])
    raise FormatError(f"unknown codec {codec}")
