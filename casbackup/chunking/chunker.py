"""Content-defined chunking behind one small interface (FastCDC via pyfastcdc), and
fixed-size chunking for page images.

pyfastcdc streams from any object with ``readinto`` (files, pipes) and releases
the GIL while it scans, so several files are chunked in parallel threads. The gear
table is seeded from the master key so cut points (and chunk sizes) depend on it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import BinaryIO

import pyfastcdc

from casbackup.repo.config import ChunkerParams


class Chunker:
    def __init__(self, params: ChunkerParams, seed: int) -> None:
        self.params = params
        self._seed = seed

    def _cdc(self) -> pyfastcdc.FastCDC:
        # A FastCDC object is not safe to share between threads; it is cheap to make.
        return pyfastcdc.FastCDC(
            self.params.avg_size,
            min_size=self.params.min_size,
            max_size=self.params.max_size,
            normalized_chunking=self.params.normalization,  # type: ignore[arg-type]
            seed=self._seed,
        )

    @property
    def min_size(self) -> int:
        return self.params.min_size

    def stream(self, reader: BinaryIO) -> Iterator[memoryview]:
        """Yield chunks of a stream. Each view is valid only until the next one is requested."""
        for chunk in self._cdc().cut_stream(reader):
            yield chunk.data

    def buffer(self, data: bytes | memoryview) -> Iterator[memoryview]:
        view = memoryview(data)
        for chunk in self._cdc().cut_buf(view):
            yield view[chunk.offset : chunk.offset + chunk.length]


READ_BLOCK = 1 << 20


class StreamCutter:
    """Chunks one stream after another through a single reusable buffer.

    pyfastcdc's own streaming allocates a fresh buffer of twice the maximum chunk size
    for every stream (16 MiB by default): for tens of thousands of files that is an
    mmap, page faults and an munmap per file. This keeps one buffer of max_size + 1 MiB
    per reader. Every chunk that ends before the buffer's end is a cut the streaming
    chunker would also make (a cut depends only on bytes from the chunk's start, at
    most max_size of them); the chunk that ends at the buffer's end is held back and
    cut again once more data is read behind it. Not thread-safe: one per thread.
    """

    def __init__(self, chunker: Chunker) -> None:
        self._cdc = chunker._cdc()
        self._buf = bytearray(chunker.params.max_size + READ_BLOCK)
        self._view = memoryview(self._buf)

    def chunks(self, reader: BinaryIO) -> Iterator[memoryview]:
        """Yield chunks of ``reader``; each view is valid only until the next is requested."""
        buf, view, cap = self._buf, self._view, len(self._buf)
        end = 0
        eof = False
        while True:
            while not eof and end < cap:
                n = reader.readinto(view[end:])
                if not n:
                    eof = True
                else:
                    end += n
            if end == 0:
                return
            cuts = [(c.offset, c.length) for c in self._cdc.cut_buf(view[:end])]
            if eof:
                for offset, length in cuts:
                    yield view[offset : offset + length]
                return
            for offset, length in cuts[:-1]:
                yield view[offset : offset + length]
            held = cuts[-1][0]
            buf[: end - held] = view[held:end]  # same-size move: allowed with views out
            end -= held


#: Chunk size for page images (engines.base.PAGE_IMAGE_ENGINES): a multiple of every SQLite
#: page size (512 B to 64 KiB), so no page straddles two chunks. Measured on a 100 MB SQLite
#: table with 1% of its rows rewritten in place each night (bench/night_ab.py, nights 2-8,
#: bench/DUMPS.md "Page images cut at fixed offsets"): against the content-defined dump
#: chunker (~2,300 chunks a night, 0.37-0.48 MB), 64 KiB stored 0.38 MB a night, 256 KiB
#: 0.18 MB, 1 MiB 0.12 MB in the least CPU; the first backup 10.5, 10.2 and 8.1 MB (larger
#: zstd frames).
PAGE_IMAGE_CHUNK = 1 << 20


#: The first 16 bytes of every SQLite 3 database file (https://sqlite.org/fileformat.html,
#: "The Database Header"): a file backed up as a file that starts with them is a page image.
SQLITE_MAGIC = b"SQLite format 3\x00"


def is_page_image_file(fd: int) -> bool:
    """Whether the open file ``fd`` is a page image (a SQLite database: ``SQLITE_MAGIC`` at
    offset 0), which is cut at fixed offsets like a SQLite dump. One ``pread`` of 16 bytes;
    an unreadable start counts as no (the read that follows reports the error)."""
    try:
        return os.pread(fd, len(SQLITE_MAGIC), 0) == SQLITE_MAGIC
    except OSError:
        return False


class FixedChunker:
    """Fixed-size chunks: the stream cut every ``size`` bytes (the last chunk shorter).

    For page images (a SQLite database as its backup API writes it), whose rows change in
    place: a content-defined boundary next to a changed byte moves and shifts its
    neighbours, while a boundary at a fixed multiple of the page size never moves, so a
    changed chunk always pairs with its parent's chunk at the same offset, equally long
    (an aligned delta, repo/aligned_delta.py). Same ``stream`` contract as ``Chunker``."""

    def __init__(self, size: int) -> None:
        if size <= 0:
            raise ValueError("a fixed chunk size must be positive")
        self.size = size

    def stream(self, reader: BinaryIO) -> Iterator[memoryview]:
        """Yield ``size``-byte chunks of ``reader`` (a pipe's short reads are filled up);
        each view is valid only until the next one is requested."""
        buf = bytearray(self.size)
        view = memoryview(buf)
        while True:
            end = 0
            while end < self.size:
                n = reader.readinto(view[end:])
                if not n:
                    break
                end += n
            if end:
                yield view[:end]
            if end < self.size:
                return
