"""Which stored chunk a new chunk of a stream is stored as a delta against (issue 16).

A database dump changes a little everywhere between nights: its new chunks are mostly
the parent snapshot's chunks at about the same offset, with a few bytes changed. For
each new chunk this picks the parent version's chunk that covers the same bytes,
following the parent's chunk sequence: after a chunk that is unchanged (its id is one
of the parent's), the next expected base is the parent's next chunk, so boundaries
shifted by inserted or removed bytes do not lead it astray.

Memory: one offset and one id per chunk of the parent's version of the stream (its
content list, which the parent's tree already holds), no chunk data.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from casbackup.errors import CasError
from casbackup.repo.ids import BlobId
from casbackup.repo.repository import Repository


class BaseFinder:
    """Bases for the new chunks of one stream, from its version in the parent snapshot."""

    def __init__(self, content: Sequence[BlobId], sizes: Sequence[int]) -> None:
        """``content``: the parent version's chunk ids, ``sizes`` their lengths (bytes)."""
        self._ids = list(content)
        self._starts = [0]
        for size in sizes:
            self._starts.append(self._starts[-1] + size)
        self._where: dict[bytes, int] = {}
        for i, blob_id in enumerate(self._ids):
            self._where.setdefault(blob_id, i)
        self._drift = 0  # parent offset minus this stream's offset, at the last known match

    @classmethod
    def for_content(cls, repo: Repository, content: Sequence[BlobId]) -> BaseFinder | None:
        """A finder for the parent version ``content``; None when it has no usable chunk
        (empty, or a chunk no longer in the index)."""
        if not content:
            return None
        try:
            sizes = [loc.raw_len for loc in repo.locate_many(list(content))]
        except CasError:
            return None
        return cls(content, sizes)

    def seen(self, blob_id: bytes, offset: int, length: int) -> None:
        """Record the chunk at ``offset`` of the new stream (stored or found unchanged)."""
        i = self._where.get(blob_id)
        if i is not None:
            self._drift = self._starts[i + 1] - (offset + length)

    def base_for(self, offset: int, length: int) -> BlobId | None:
        """The parent's chunk covering the middle of the new chunk at ``offset``; assumes
        the new chunk ends where that one ends (content-defined boundaries mostly stay)."""
        middle = offset + self._drift + length // 2
        i = bisect.bisect_right(self._starts, middle) - 1
        i = min(max(i, 0), len(self._ids) - 1)
        self._drift = self._starts[i + 1] - (offset + length)
        return self._ids[i]
