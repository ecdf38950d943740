"""Which stored chunk a new chunk of a stream is stored as a delta against (issue 16).

A database dump changes a little everywhere between nights: its new chunks are mostly
the parent snapshot's chunks at about the same offset, with a few bytes changed. For
each new chunk this picks the parent version's chunk that covers the same bytes,
following the parent's chunk sequence: after a chunk that is unchanged (its id is one
of the parent's), the next expected base is the parent's next chunk, so boundaries
shifted by inserted or removed bytes do not lead it astray.

Bases are read from the stream's local copy (archiver/base_copies.py), which each
``store_chunks`` writes for the next one, when it holds them; else resolved through their
chains in the repository.

Memory: one offset and one id per chunk of the parent's version of the stream (its
content list, which the parent's tree already holds), and the last four base chunks.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import blake3

from casbackup.archiver.base_copies import BaseCopy, CopyWriter
from casbackup.errors import CasError
from casbackup.memory import large_buffers_in_heap
from casbackup.repo.deltastore import DeltaBase
from casbackup.repo.ids import BlobId, Kind
from casbackup.repo.repository import Repository
from casbackup.threadsig import block_stop_signals

# Bytes compared at the start of a chunk to tell an aligned base (a chunk starts at a
# content-defined boundary, so the same boundary gives the same first bytes).
_PREFIX = 64
_KEEP = 4
# One base in this many read from the stream's copy is also resolved from the repository.
SPOT_CHECK = 16
#: What a backup notes, after the stream's name, when a spot check found the repository
#: disagreeing with the stream's copy (``BaseFinder.copy_refuted``).
COPY_REFUTED = (
    "a chunk of the last backup's version could not be read back from the repository as it "
    "was written; run 'casbackup check --read-data'"
)


class BaseLoader(Protocol):
    """``Repository.delta_base_for``: which base a parent chunk leads to."""

    def __call__(
        self, counterpart: BlobId, known: bytes | None = None, *, check: bool = False
    ) -> DeltaBase | None: ...


class BaseFinder:
    """Bases for the new chunks of one stream, from its version in the parent snapshot."""

    def __init__(
        self,
        content: Sequence[BlobId],
        sizes: Sequence[int],
        copy: BaseCopy | None = None,
        fixed: bool = False,
    ) -> None:
        """``content``: the parent version's chunk ids, ``sizes`` their lengths (bytes);
        ``copy``: the stream's local copy of that version, when there is one; ``fixed``:
        both versions are cut at the same fixed offsets (a page image), so a new chunk's
        base is the parent's chunk at its offset, and no other."""
        self._ids = list(content)
        self._copy = copy
        self._fixed = fixed
        self.copy_refuted = False  # a spot check found the repository disagreeing
        self._starts = [0]
        for size in sizes:
            self._starts.append(self._starts[-1] + size)
        self._where: dict[bytes, int] = {}
        for i, blob_id in enumerate(self._ids):
            self._where.setdefault(blob_id, i)
        self._drift = 0  # parent offset minus this stream's offset, at the last known match
        self._recent: list[tuple[int, DeltaBase]] = []  # (chunk index, its base), newest last

    @classmethod
    def for_content(
        cls,
        repo: Repository,
        content: Sequence[BlobId],
        copy_key: str | None = None,
        fixed: int | None = None,
    ) -> BaseFinder | None:
        """A finder for the parent version ``content``; None when it has no usable chunk
        (empty, or a chunk no longer in the index). ``copy_key``: the stream's key for its
        local copy (``base_copies.stream_key``), whose chunks are then read first.
        ``fixed``: the new version is cut every ``fixed`` bytes (a page image); None also
        when the parent was not cut so (a repository written before page images were: its
        chunks would be bases of another length, each loaded for a poor zstd delta, so that
        one night is stored whole and the nights after it pair chunk for chunk)."""
        if not content:
            return None
        try:
            sizes = [loc.raw_len for loc in repo.locate_many(list(content))]
        except CasError:
            return None
        if fixed is not None and (any(n != fixed for n in sizes[:-1]) or sizes[-1] > fixed):
            return None
        copy = None
        if copy_key is not None:
            copy = BaseCopy.open(repo.config.id, copy_key, repo.opener, list(content), sizes)
        return cls(content, sizes, copy, fixed is not None)

    @property
    def copy(self) -> BaseCopy | None:
        """The stream's local copy of the parent version, when there is one."""
        return self._copy

    def close(self) -> None:
        """Release the local copy (idempotent)."""
        if self._copy is not None:
            self._copy.close()

    def seen(self, blob_id: bytes, offset: int, length: int) -> None:
        """Record the chunk at ``offset`` of the new stream (stored or found unchanged)."""
        i = self._where.get(blob_id)
        # Cut at fixed offsets, nothing drifts: a chunk found elsewhere in the parent (one
        # of a run of identical chunks, free pages zeroed) says nothing about the next one.
        if i is not None and not self._fixed:
            self._drift = self._starts[i + 1] - (offset + length)

    def choose(self, load: BaseLoader, piece: bytes | memoryview, offset: int) -> DeltaBase | None:
        """The base for the new chunk ``piece`` at ``offset``, or None.

        The candidate is the parent's chunk under the middle of the new chunk (offsets
        corrected by the drift seen so far). Chunk boundaries are content-defined, so an
        aligned base starts with the same bytes as the new chunk: when the candidate does
        not, its neighbours and the chunk at the same offset without drift are tried, and
        the one that does fixes the drift exactly. When none does, the first candidate is
        the base and the drift is left alone.
        ``load(id, known)`` is ``Repository.delta_base_for``: which base a parent chunk
        leads to, its plaintext loaded (None when it cannot be used); ``known`` is the
        chunk's plaintext from the local copy, or None. A candidate whose answer is
        "store full" (its chain is at the limit, ``plain`` None) is returned as it is,
        nothing loaded. Cut at fixed offsets (``fixed``), the candidate is the parent's
        chunk at ``offset`` (the last one past the parent's end), whatever its first bytes:
        a page whose header changed must not pair the chunk with a neighbour, nor cost
        loading them."""
        same = self._under(offset + len(piece) // 2)  # no drift: right for in-place changes
        if self._fixed:
            return self._load(load, same)
        i = self._under(offset + self._drift + len(piece) // 2)
        head = bytes(piece[:_PREFIX])
        first: DeltaBase | None = None
        for j in dict.fromkeys((i, i + 1, i - 1, same)):
            if not 0 <= j < len(self._ids):
                continue
            found = self._load(load, j)
            if found is None:
                continue
            if found.plain is None:
                return found if first is None else first
            if found.plain[:_PREFIX] == head:
                self._drift = self._starts[j] - offset
                return found
            if first is None:
                first = found
        # No candidate lines up (a boundary moved): the drift stays as it was, so one
        # odd chunk cannot lead every later choice astray.
        return first

    def low_water(self, position: int) -> int:
        """The parent version's stream offset below which no base is read again once the
        new stream is at ``position`` (bytes): the next choice's candidates start one chunk
        before the parent chunk under ``position``, with or without the drift. A drift
        that later jumps back (a chunk found again much earlier) may read below it: the
        copy then misses there, and the base comes from the repository."""
        i = min(self._under(position + self._drift), self._under(position))
        return self._starts[max(i - 1, 0)]

    def _under(self, position: int) -> int:
        """The parent chunk holding byte ``position`` (clamped to the first and last)."""
        i = bisect.bisect_right(self._starts, position) - 1
        return min(max(i, 0), len(self._ids) - 1)

    def _load(self, load: BaseLoader, j: int) -> DeltaBase | None:
        """What parent chunk ``j`` leads to; the last few are kept (the next choice usually
        wants a neighbour): at most ``_KEEP`` plaintexts in memory."""
        for k, found in self._recent:
            if k == j:
                return found
        known = self._copy.get(j) if self._copy is not None else None
        # The first base read from the copy, and every SPOT_CHECK-th after it, is also
        # resolved from the repository: a pack deleted or damaged since it was written,
        # or a blob whose stored bytes are not what its id says, is then noticed as when
        # every base came from there, and the copy is not used again for this stream
        # (each later base resolved from the repository: one that fails is stored full).
        check = known is not None and self._copy is not None and self._copy.hits % SPOT_CHECK == 1
        found = load(self._ids[j], known, check=check)
        if found is not None and found.refuted and self._copy is not None:
            self._copy.close()
            self.copy_refuted = True
        if found is None:
            return None
        self._recent.append((j, found))
        if len(self._recent) > _KEEP:
            self._recent.pop(0)
        return found


class Stopped(Exception):
    """``store_chunks`` saw its stop request (the backup was interrupted)."""


# Deltas built on other threads while the stream's thread picks the next chunk's base
# (zstd releases the GIL): each costs about as much as resolving a base through its
# chain, so two threads about halve a changed night's wall time on two cores. At most
# IN_FLIGHT chunks wait, each with its base: bounded memory (8 x 2 x the largest chunk).
ENCODERS = 2
IN_FLIGHT = 8


def store_chunks(
    repo: Repository,
    pieces: Iterable[bytes | memoryview],
    bases: BaseFinder | None,
    *,
    dry_run: bool = False,
    stopped: Callable[[], bool] = lambda: False,
    on_bytes: Callable[[int], None] = lambda n: None,
    copy_key: str | None = None,
) -> tuple[tuple[BlobId, ...], bytes, int]:
    """Store one stream's chunks from this process (a database dump, or a large file
    stored as deltas); returns (chunk ids, BLAKE3 of the whole stream, bytes).

    With ``bases`` (the parent snapshot's version of the stream), a chunk that is not
    stored yet is stored as a DELTA against its counterpart there when that pays
    (``BlobStore.save_data_delta``, on one of ``ENCODERS`` threads), else in full.
    ``copy_key``: the stream's key (``base_copies.stream_key``): where the repository
    holds deltas, every chunk is also written to the stream's local copy, which replaces
    the old one once the stream is read to its end, for the next backup's bases.
    ``dry_run``: ids only, nothing stored. ``stopped`` is asked before each chunk (raises
    ``Stopped``); ``on_bytes(n)`` is told each chunk's length, for progress. Every delta
    is stored before this returns. Raises what the repository raises (CasError), before
    what reading ``pieces`` raises (OSError) when both happen."""
    copy = None
    # The first version of a stream gets no copy: it might never change (a copy is made
    # by the first backup that stores part of it again).
    if copy_key is not None and bases is not None and not dry_run and repo.deltas_allowed:
        old = bases.copy if bases is not None else None
        copy = CopyWriter.start(repo.config.id, copy_key, repo.sealer, old)
    try:
        result = _store_chunks(repo, pieces, bases, dry_run, stopped, on_bytes, copy)
        if copy is not None:
            copy.commit()
    except BaseException:
        if copy is not None:
            copy.discard()
        raise
    finally:
        if bases is not None:
            bases.close()
    return result


def _store_chunks(
    repo: Repository,
    pieces: Iterable[bytes | memoryview],
    bases: BaseFinder | None,
    dry_run: bool,
    stopped: Callable[[], bool],
    on_bytes: Callable[[int], None],
    copy: CopyWriter | None,
) -> tuple[tuple[BlobId, ...], bytes, int]:
    """``store_chunks`` once its copy writer is chosen."""
    hasher = blake3.blake3()
    ids: list[BlobId] = []
    size = 0
    if bases is None or dry_run:  # a dry run stores nothing, deltas included
        for piece in pieces:
            if stopped():
                raise Stopped
            hasher.update(piece)
            ids.append(repo.blob_id(piece) if dry_run else repo.save_blob(Kind.DATA, piece)[0])
            size += len(piece)
            on_bytes(len(piece))
        return tuple(ids), hasher.digest(), size
    with (
        large_buffers_in_heap(),
        ThreadPoolExecutor(
            ENCODERS, thread_name_prefix="delta-encode", initializer=block_stop_signals
        ) as pool,
    ):
        waiting: deque[tuple[BlobId, Future[tuple[BlobId, bool]]]] = deque()
        try:
            for piece in pieces:
                if stopped():
                    raise Stopped
                hasher.update(piece)
                blob_id = repo.blob_id(piece)
                new = not repo.has_blob(blob_id) and all(blob_id != w for w, _ in waiting)
                if new:
                    base = bases.choose(repo.delta_base_for, piece, size)
                    if base is not None and base.plain is not None:
                        if len(waiting) >= IN_FLIGHT:
                            waiting.popleft()[1].result()  # raises what storing it raised
                        # ``piece`` is a view into the chunker's buffer: the thread gets a copy.
                        job = pool.submit(
                            repo.save_data_delta, bytes(piece), base.id, base.plain, blob_id,
                            depth=base.depth, full_len=base.full_len,
                        )  # fmt: skip
                        waiting.append((blob_id, job))
                    else:
                        repo.save_blob(Kind.DATA, piece, blob_id)
                bases.seen(blob_id, size, len(piece))
                if copy is not None:  # after its base was read: an update may replace it
                    copy.add(blob_id, piece, new, bases.low_water(size + len(piece)))
                ids.append(blob_id)
                size += len(piece)
                on_bytes(len(piece))
        except (OSError, Stopped) as ended:
            # The stream ended early: a read error (--delta-files reports it as that file's
            # and the backup goes on) or a stop. A delta in flight that failed to store is
            # the repository's error, which must fail the backup instead: a pack that could
            # not be written takes other files' chunks with it.
            for _, job in waiting:
                failure = job.exception()
                if failure is not None:
                    raise failure from ended
            raise
        while waiting:
            waiting.popleft()[1].result()
    return tuple(ids), hasher.digest(), size
