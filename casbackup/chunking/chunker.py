"""Content-defined chunking behind one small interface (FastCDC via pyfastcdc).

pyfastcdc streams from any object with ``readinto`` (files, pipes) and releases
the GIL while it scans, so several files are chunked in parallel threads. The gear
table is seeded from the master key so cut points (and chunk sizes) depend on it.
"""

from __future__ import annotations

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
