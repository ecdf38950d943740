"""Read many files' contents the way a restore does: per pack, ahead, each file verified.

A recovery re-checks every byte it is about to restore before it touches the target
(recovery/recheck.py). Reading file by file through ``stream.ChunkReader`` costs one get
per chunk, one after the other: on a local disk a syscall and a buffer per chunk, on an
object store a round trip per chunk (tens of milliseconds each: minutes for a large
application, longer than the restore that follows). Here files go in batches through the
restore's read plan (archiver/readplan.py): the batch's chunks are located in one index
transaction, read per pack in merged ranges, on reader threads ahead of the checking
(several gets in flight on an object store), and each chunk is decrypted and
authenticated once however many files use it. Every file's bytes are then hashed against
the size and BLAKE3 recorded at backup time, as the restore's writers do.

``read_files`` gives each file's content as a stream (`dump SNAPSHOT:FOLDER`'s archives,
archiver/export.py), ``read_and_verify`` only checks them (the re-check), and
``PlannedReads`` reads one file ahead (``stream.ChunkReader`` on an object store: `db
restore`, `dump`, recover's database loads).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Generic, NamedTuple, TypeVar

import blake3

from casbackup.archiver.readplan import LOCAL_GAP, REMOTE_GAP, BlobReader, Chain, Chunk, ChunkFeed
from casbackup.archiver.readpool import ReaderPool
from casbackup.errors import CasError, IntegrityError
from casbackup.repo import delta
from casbackup.repo.ids import BlobId, Kind
from casbackup.repo.index import Location, chunk_location
from casbackup.repo.repository import Repository
from casbackup.repo.tree import Node, NodeKind
from casbackup.store.base import is_remote

T = TypeVar("T")

BATCH_FILES = 256  # files located in one index transaction and planned together
BATCH_BYTES = 32 << 20  # ... or this many bytes of content, whichever comes first
BATCH_ENTRIES = 1024  # ... or this many entries of any kind (folders between files)
LOCAL_READERS = 2  # reader threads on a local folder (reads ahead of the checking)
REMOTE_READERS = 8  # on an object store: requests in flight, as the restore has


class ReadJob(NamedTuple):
    """What ChunkFeed needs of a file (the shape of writers.FileJob's reading part)."""

    chunks: tuple[Chunk, ...]
    chains: tuple[tuple[int, Chain], ...]


class Checked(NamedTuple, Generic[T]):
    """One file's outcome: ``size`` bytes read, ``problem`` None when its content is the
    one recorded at backup time, else what is wrong (one line, naming no path)."""

    tag: T
    size: int
    problem: str | None


class FileStream:
    """One file's content, read from its batch's feed: ``read(n)`` returns up to ``n``
    bytes, and ``b""`` only once the whole file was read and its size and BLAKE3 match the
    snapshot's; otherwise IntegrityError (a chunk's own damage: what reading it raised).
    Must be read before the next file of its batch is (the feed moves on)."""

    def __init__(self, pieces: Iterator[bytes], node: Node) -> None:
        self._pieces = pieces
        self._node = node
        self._hasher = blake3.blake3()
        self._piece = b""
        self._pos = 0
        self.bytes_read = 0
        self._done = False

    def read(self, n: int) -> bytes:
        """Up to ``n`` (> 0) bytes. Raises CasError."""
        while self._pos >= len(self._piece):
            if self._done:
                return b""
            piece = next(self._pieces, None)
            if piece is None:
                self._done = True
                self._check_end()
                return b""
            self._hasher.update(piece)
            self._piece, self._pos = piece, 0
        out = self._piece[self._pos : self._pos + n]
        self._pos += len(out)
        self.bytes_read += len(out)
        return out

    def drain(self) -> int:
        """Read (and check) the rest without copying it out; returns the file's size.
        Raises CasError."""
        if not self._done:
            self.bytes_read += len(self._piece) - self._pos
            for piece in self._pieces:
                self._hasher.update(piece)
                self.bytes_read += len(piece)
            self._piece, self._pos, self._done = b"", 0, True
            self._check_end()
        return self.bytes_read

    def _check_end(self) -> None:
        node = self._node
        if self.bytes_read != node.size:
            raise IntegrityError(
                f"read {self.bytes_read} bytes but the snapshot records {node.size}"
            )
        if self._hasher.digest() != node.content_hash:
            raise IntegrityError("content does not match the hash recorded at backup time")


def read_files(
    repo: Repository, entries: Iterable[tuple[Node, T]], *, readers: int | None = None
) -> Iterator[tuple[T, FileStream | CasError | None]]:
    """``entries`` ((node, tag) pairs, in the order they are used) with, for each FILE
    node, a FileStream of its content (or the CasError that stops it before any byte: a
    chunk not in the index, a broken chain), None for other kinds. Yields in the given
    order; the caller reads each stream before taking the next pair.

    Files go in batches of at most BATCH_FILES files, BATCH_BYTES bytes or BATCH_ENTRIES
    entries: located in one index transaction and read through the restore's read plan.
    Memory stays bounded by the batch and ChunkFeed's two windows (readplan.WINDOW_BYTES
    each). ``readers``: reader threads (default LOCAL_READERS on a local folder,
    REMOTE_READERS otherwise), stopped when the generator is closed; closed early or
    by an error (a stop, a consumer gone), reads still running are not waited for.
    """
    local = not is_remote(repo.backend)
    pool = ReaderPool(readers or (LOCAL_READERS if local else REMOTE_READERS), "batch-read")
    reader = BlobReader(
        repo.backend, repo.key.encryption_root, gap=LOCAL_GAP if local else REMOTE_GAP, pool=pool
    )
    try:
        batch: list[tuple[Node, T]] = []
        files = size = 0
        for node, tag in entries:
            batch.append((node, tag))
            if node.kind == NodeKind.FILE:
                files += 1
                size += node.size
            if files >= BATCH_FILES or size >= BATCH_BYTES or len(batch) >= BATCH_ENTRIES:
                yield from _batch(repo, reader, batch)
                batch, files, size = [], 0, 0
        if batch:
            yield from _batch(repo, reader, batch)
    except BaseException:
        # Ctrl-C, a consumer that stopped reading (GeneratorExit), damage: a get that hangs
        # must not hold the way out (readpool.py).
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True, cancel_futures=True)


def read_and_verify(
    repo: Repository, files: Iterable[tuple[Node, T]], *, readers: int | None = None
) -> Iterator[Checked[T]]:
    """Read and verify each file node of ``files`` ((node, tag) pairs, FILE nodes), yielding
    one ``Checked`` per file in the given order (``read_files``, every stream drained). A
    damaged or missing chunk fails the files that need it, never the batch; storage
    errors are problems of the files they hit."""
    for tag, stream in read_files(repo, files, readers=readers):
        if isinstance(stream, CasError):
            yield Checked(tag, 0, str(stream))
            continue
        assert stream is not None, "read_and_verify takes file nodes only"
        try:
            yield Checked(tag, stream.drain(), None)
        except CasError as exc:
            yield Checked(tag, stream.bytes_read, str(exc))


class PlannedReads:
    """The chunk plaintexts of one file read ahead through the read plan, for a reader
    of a file on an object store (``stream.ChunkReader``): ``pieces`` yields them in order;
    ``close`` stops the reader threads. Memory: ChunkFeed's two windows."""

    def __init__(self, repo: Repository, chunks: list[BlobId]) -> None:
        """Locates every chunk in one index transaction (NotFound for a missing one) and
        starts reading. Raises CasError."""
        values = repo.locate_values(chunks)
        node_job = _job(repo, chunks, values)
        self._pool = ReaderPool(REMOTE_READERS, "read-ahead")
        reader = BlobReader(repo.backend, repo.key.encryption_root, gap=REMOTE_GAP, pool=self._pool)
        self._feed = ChunkFeed(reader, [node_job])
        self.pieces: Iterator[bytes] = self._feed.file(0)

    def close(self, wait: bool = True) -> None:
        """Stop reading ahead; ``wait``: for the gets running (not after an error or a
        stop: a get that hangs must not hold the way out)."""
        self._feed.close()
        self._pool.shutdown(wait=wait, cancel_futures=True)


def _batch(
    repo: Repository, reader: BlobReader, batch: list[tuple[Node, T]]
) -> Iterator[tuple[T, FileStream | CasError | None]]:
    contents = [node.content for node, _ in batch if node.kind == NodeKind.FILE]
    try:
        every: list[bytes] | None = repo.locate_values([c for content in contents for c in content])
    except CasError:
        every = None  # one chunk is missing: located file by file, to name the files
    jobs: list[ReadJob] = []
    outcome: list[FileStream | CasError | None] = []
    pos = 0
    for node, _tag in batch:
        if node.kind != NodeKind.FILE:
            outcome.append(None)
            continue
        first, pos = pos, pos + len(node.content)
        try:
            values = (
                every[first:pos] if every is not None else repo.locate_values(list(node.content))
            )
            jobs.append(_job(repo, node.content, values))
            outcome.append(None)  # its stream, made below once the feed exists
        except CasError as exc:
            outcome.append(exc)
    feed = ChunkFeed(reader, jobs)
    try:
        k = 0
        for (node, tag), out in zip(batch, outcome, strict=True):
            if node.kind != NodeKind.FILE or out is not None:
                yield tag, out
                continue
            yield tag, FileStream(feed.file(k), node)
            k += 1
    finally:
        feed.close()


def _job(repo: Repository, content: Sequence[bytes], values: list[bytes]) -> ReadJob:
    """The located chunks of ``content`` and the chains of those not stored whole (deltas).
    Raises CasError (a base missing, a chain too deep)."""
    chunks: list[Chunk] = []
    chains: list[tuple[int, Chain]] = []
    for i, (chunk_id, value) in enumerate(zip(content, values, strict=True)):
        chunk, kind = chunk_location(chunk_id, value)
        chunks.append(chunk)
        if kind != Kind.DATA:
            loc = Location.decode(value)
            chain: Chain = (
                tuple(delta.located_chain(repo.locate, chunk_id, loc))
                if loc.kind == Kind.DELTA
                else (chunk,)
            )
            chains.append((i, chain))
    return ReadJob(tuple(chunks), tuple(chains))
