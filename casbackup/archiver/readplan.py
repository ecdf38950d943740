"""Planning a restore's reads per pack: one ranged get per run of nearby blobs.

A writer (archiver/writers.py) restores a batch of files, one after the other. Instead of
one ``backend.get`` per chunk, a ``ChunkFeed`` looks at a window of the batch's upcoming
chunks (about ``window_bytes`` of stored data), groups the distinct blobs by pack, sorts
them by offset and merges neighbours whose hole is at most ``gap`` bytes into one range
(never longer than ``max_range``, so memory stays bounded whatever the packs hold). Each
range is read once; each blob of the window is decrypted once and handed to every place
that needs it (a chunk used by several files, or several times in one file, is read and
decrypted once per window). With a thread pool, a window's ranges are read in parallel
and the next window is read while the current one is written: object stores then spend
their round trips side by side, and a local disk reads ahead of the CPU.

Errors stay with the blobs they concern: a range that cannot be read, or a blob that
does not decrypt, fails the files that need it (``write_file`` reports them by path) and
nothing else. Blobs whose index kind is not DATA (delta blobs: issue 16) never take the
ranged path: they carry their chain of located blobs and are resolved through
``casbackup.repo.delta.resolve_chain``; without that module they fail cleanly.
"""

from __future__ import annotations

import importlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from typing import Any, NamedTuple

from casbackup.crypto.envelope import Opener
from casbackup.errors import CasError, IntegrityError
from casbackup.repo.ids import Kind
from casbackup.repo.pack import open_blob, pack_name

# blob id (32 bytes), pack id (hex), offset in the pack, stored length, raw length (bytes)
Chunk = tuple[bytes, str, int, int, int]
# A blob that is not stored whole (index kind other than DATA): the located blobs needed
# to rebuild it, the blob itself first and the full base last.
Chain = tuple[Chunk, ...]

WINDOW_BYTES = 16 << 20  # stored bytes of distinct blobs planned at once (a second is read ahead)
MAX_RANGE = 4 << 20  # one get never asks for more: the reader's buffers stay bounded
LOCAL_GAP = 64 << 10  # a pread costs little: merge only what nearly touches
# Measured (bench/restore_ab.py --gaps, 256 MiB corpus on SeaweedFS, 115 MiB of blobs):
# holes of 0 / 256 KiB / 1 MiB gave 261 / 178 / 121 gets reading 115 / 122 / 153 MiB,
# with walls within the noise on loopback; 256 KiB takes most of the saving in requests
# for 7% more bytes (what a real network charges for).
REMOTE_GAP = 256 << 10
# Nothing this restore writes ever stored one blob bigger than this (chunks are at most a
# few MiB): a larger length in the index is damage, refused before any buffer is allocated.
MAX_STORED = 64 << 20


class ReadRange(NamedTuple):
    """One ranged get: ``pack``'s bytes [start, end) and the distinct blobs inside."""

    pack: str
    start: int
    end: int
    blobs: tuple[Chunk, ...]


def plan_ranges(chunks: Sequence[Chunk], gap: int, max_range: int = MAX_RANGE) -> list[ReadRange]:
    """Merge the distinct blobs of ``chunks`` into ranged reads.

    Blobs are grouped by pack and sorted by offset; a blob joins the range before it when
    the hole between them is at most ``gap`` bytes and the range stays within
    ``max_range`` bytes (a blob longer than that gets a range of its own). Blobs are
    distinct by id (the index gives an id one location). Returns the ranges pack by pack,
    by offset; never raises.
    """
    by_pack: dict[str, dict[bytes, Chunk]] = {}
    for chunk in chunks:
        by_pack.setdefault(chunk[1], {}).setdefault(chunk[0], chunk)
    ranges: list[ReadRange] = []
    for pack, blobs in by_pack.items():
        ordered = sorted(blobs.values(), key=lambda c: c[2])
        start = end = -1
        members: list[Chunk] = []
        for chunk in ordered:
            offset, length = chunk[2], chunk[3]
            stop = max(end, offset + length)
            if members and offset - end <= gap and stop - start <= max_range:
                members.append(chunk)
                end = stop
                continue
            if members:
                ranges.append(ReadRange(pack, start, end, tuple(members)))
            start, end, members = offset, offset + length, [chunk]
        if members:
            ranges.append(ReadRange(pack, start, end, tuple(members)))
    return ranges


class BlobReader:
    """Reads located blobs from packs for one writer (a process, or the restore's threads).

    ``gap``: bytes of hole read through rather than split into two gets (LOCAL_GAP for a
    folder, REMOTE_GAP for object stores); ``pool``: threads that read ranges in parallel
    and ahead of the writing (None: every read in the caller's thread, when it is needed).
    """

    def __init__(
        self,
        backend: Any,
        encryption_root: bytes,
        *,
        gap: int = LOCAL_GAP,
        pool: Executor | None = None,
        window_bytes: int = WINDOW_BYTES,
        max_range: int = MAX_RANGE,
    ) -> None:
        self.backend = backend
        self.opener = Opener(encryption_root)
        self.gap = gap
        self.pool = pool
        self.window_bytes = window_bytes
        self.max_range = max_range
        #: Set when the reading stops (a restore interrupted): no get starts after it, so
        #: a writer that would read a blob itself (a delta chain not started on the pool,
        #: a blob re-read alone after its merged range failed) cannot hang on the store.
        self.halted: CasError | None = None

    def fetch_envelope(self, pack: str, offset: int, length: int) -> bytes:
        """The stored bytes of one blob (or range): a ranged get. Raises StorageError."""
        if self.halted is not None:
            raise self.halted
        if length > MAX_STORED:
            raise IntegrityError(f"the index gives a {length}-byte blob in pack {pack[:12]}")
        return self.backend.get(pack_name(pack), offset, length)

    def fetch_range(self, rng: ReadRange) -> bytes | CasError:
        """The bytes of ``rng``, or the error that stops every blob in it."""
        try:
            return self.fetch_envelope(rng.pack, rng.start, rng.end - rng.start)
        except CasError as exc:
            return exc

    def read_chain(self, chain: Chain) -> bytes:
        """The plaintext of a blob stored as a chain (delta -> ... -> full base). Raises
        IntegrityError when this installation cannot rebuild such blobs, or damage."""
        resolve = _chain_resolver()
        if resolve is None:
            blob_id, pack = chain[0][0], chain[0][1]
            raise IntegrityError(
                f"blob {blob_id.hex()[:16]} in pack {pack[:12]} has an unsupported blob kind"
            )
        data: bytes = resolve(self.fetch_envelope, self.opener, chain)
        if len(data) != chain[0][4]:
            raise IntegrityError(
                f"blob {chain[0][0].hex()[:16]} in pack {chain[0][1][:12]} has the wrong length"
            )
        return data


def _chain_resolver() -> Callable[..., bytes] | None:
    """``casbackup.repo.delta.resolve_chain`` when this installation has it (issue 16)."""
    try:
        module = importlib.import_module("casbackup.repo.delta")
    except ImportError:
        return None
    return getattr(module, "resolve_chain", None)


class _Window:
    """The reads for positions [start, end) of a feed: envelopes by blob id, plaintexts of
    blobs needed again later in the window, and how many more times each is needed."""

    __slots__ = ("start", "end", "where", "ranges", "pending", "uses", "plain", "chains")

    def __init__(self, start: int, end: int) -> None:
        self.start, self.end = start, end
        self.where: dict[bytes, tuple[int, int, int]] = {}  # blob id -> (range, from, to)
        self.ranges: list[ReadRange] = []
        # per range: its read (a Future with a pool; the range itself, read when first
        # needed, without one), replaced by its bytes or error once known
        self.pending: list[Future[bytes | CasError] | ReadRange | bytes | CasError] = []
        self.uses: dict[bytes, int] = {}
        self.plain: dict[bytes, bytes] = {}
        # position -> its chain being resolved on the pool (blobs stored as deltas)
        self.chains: dict[int, Future[bytes]] = {}

    def envelope(self, blob_id: bytes, reader: BlobReader) -> memoryview:
        index, lo, hi = self.where[blob_id]
        got = self.pending[index]
        if isinstance(got, Future):
            got = self.pending[index] = got.result()
        elif isinstance(got, ReadRange):
            got = self.pending[index] = reader.fetch_range(got)
        if isinstance(got, CasError):
            if len(self.ranges[index].blobs) == 1:
                raise got
            # A merged range failed (a truncated pack, a hole the store refuses): read
            # this blob alone, so that damage fails only the files that need it.
            start = self.ranges[index].start
            return memoryview(reader.fetch_envelope(self.ranges[index].pack, start + lo, hi - lo))
        return memoryview(got)[lo:hi]

    def cancel(self) -> None:
        for got in self.pending:
            if isinstance(got, Future):
                got.cancel()
        for job in self.chains.values():
            job.cancel()


class ChunkFeed:
    """The plaintexts of a batch's chunks, file by file, read per pack a window at a time.

    ``jobs``: the batch's files in the order they are written (each with ``chunks`` and
    ``chains``, see writers.FileJob). ``file(i)`` yields file ``i``'s chunks in order; a
    file may be left early (an error): the next ``file`` call skips what it left.
    At most two windows are held: the one being written and the one read ahead, each
    at most ``window_bytes`` stored and twice that decompressed (plus one blob).
    """

    def __init__(self, reader: BlobReader, jobs: Sequence[Any]) -> None:
        self.reader = reader
        self._flat: list[Chunk] = []
        self._starts: list[int] = []
        self._chains: dict[int, Chain] = {}  # position -> chain, for blobs not stored whole
        for job in jobs:
            base = len(self._flat)
            self._starts.append(base)
            self._flat.extend(job.chunks)
            for index, chain in job.chains:
                self._chains[base + index] = chain
        self._windows: deque[_Window] = deque()

    def file(self, index: int) -> Iterator[bytes]:
        """File ``index``'s chunk plaintexts, in order. Raises CasError (StorageError,
        IntegrityError) for a chunk that cannot be read; the file is then abandoned."""
        start = self._starts[index]
        end = self._starts[index + 1] if index + 1 < len(self._starts) else len(self._flat)
        for pos in range(start, end):
            yield self._chunk(pos)

    def close(self) -> None:
        """Drop what is held and cancel reads not started (the batch is done)."""
        for window in self._windows:
            window.cancel()
        self._windows.clear()

    def _chunk(self, pos: int) -> bytes:
        window = self._window_at(pos)
        chain = self._chains.get(pos)
        if chain is not None:
            job = window.chains.pop(pos, None)
            if job is None or job.cancel():  # not started: resolve it here
                return self.reader.read_chain(chain)
            return job.result()  # raises what resolving it raised
        blob_id, pack, _offset, _stored, raw_len = self._flat[pos]
        left = window.uses[blob_id] - 1
        data = window.plain.get(blob_id)
        if data is None:
            envelope = window.envelope(blob_id, self.reader)
            data = open_blob(self.reader.opener, Kind.DATA, blob_id, pack, envelope, raw_len)
            if left:
                window.plain[blob_id] = data
        if left:
            window.uses[blob_id] = left
        else:
            del window.uses[blob_id]
            window.plain.pop(blob_id, None)
        return data

    def _window_at(self, pos: int) -> _Window:
        windows = self._windows
        while windows and windows[0].end <= pos:
            windows.popleft().cancel()
        if not windows or windows[0].start > pos:
            for window in windows:
                window.cancel()
            windows.clear()
            windows.append(self._plan(pos))
        if len(windows) == 1 and windows[0].end < len(self._flat) and self.reader.pool is not None:
            windows.append(self._plan(windows[0].end))  # read ahead while this one is written
        return windows[0]

    def _plan(self, start: int) -> _Window:
        """Plan (and, with a pool, start) the reads of the window that begins at ``start``."""
        reader = self.reader
        flat, chains = self._flat, self._chains
        chunks: list[Chunk] = []
        uses: dict[bytes, int] = {}
        stored = raw = 0
        # Plaintexts are kept while needed again in the window: their total is capped
        # too (highly compressible blobs would otherwise make a window huge in memory).
        raw_cap = 2 * reader.window_bytes
        chained: list[int] = []
        pos = start
        while pos < len(flat) and (
            (stored < reader.window_bytes and raw < raw_cap) or pos == start
        ):
            if pos not in chains:
                chunk = flat[pos]
                seen = uses.get(chunk[0], 0)
                if not seen:
                    chunks.append(chunk)
                    stored += chunk[3]
                    raw += chunk[4]
                uses[chunk[0]] = seen + 1
            else:
                # A delta's chain is resolved whole on the pool (every link read and
                # decompressed there), several at once and ahead of the writing: its
                # plaintext counts against the window's cap.
                raw += chains[pos][0][4]
                chained.append(pos)
            pos += 1
        window = _Window(start, pos)
        window.uses = uses
        if reader.pool is not None:
            for at in chained:
                window.chains[at] = reader.pool.submit(reader.read_chain, chains[at])
        for number, rng in enumerate(plan_ranges(chunks, reader.gap, reader.max_range)):
            for blob_id, _pack, offset, length, _raw in rng.blobs:
                window.where[blob_id] = (number, offset - rng.start, offset - rng.start + length)
            window.ranges.append(rng)
            if reader.pool is not None:
                window.pending.append(reader.pool.submit(reader.fetch_range, rng))
            else:
                window.pending.append(rng)
        return window
