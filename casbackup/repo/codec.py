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
        try:
            return _decompressor().decompress(
                memoryview(data)[1:], max_output_size=_MAX_DECOMPRESSED
            )
        except zstandard.ZstdError as exc:
            raise FormatError(f"damaged zstd payload: {exc}") from None
    raise FormatError(f"unknown codec {codec}")
