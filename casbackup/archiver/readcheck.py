"""Read many files' contents the way a restore does, and verify them, writing nothing.

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
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, NamedTuple, TypeVar

import blake3

from casbackup.archiver.readplan import LOCAL_GAP, REMOTE_GAP, BlobReader, Chain, Chunk, ChunkFeed
from casbackup.errors import CasError
from casbackup.repo import delta
from casbackup.repo.ids import Kind
from casbackup.repo.index import Location, chunk_location
from casbackup.repo.repository import Repository
from casbackup.repo.tree import Node
from casbackup.store.local import LocalBackend
from casbackup.threadsig import block_stop_signals

T = TypeVar("T")

BATCH_FILES = 256  # files located in one index transaction and planned together
BATCH_BYTES = 32 << 20  # ... or this many bytes of content, whichever comes first
LOCAL_READERS = 2  # reader threads on a local folder (reads ahead of the checking)
REMOTE_READERS = 8  # on an object store: requests in flight, as the restore has


class _Job(NamedTuple):
    """What ChunkFeed needs of a file (the shape of writers.FileJob's reading part)."""

    chunks: tuple[Chunk, ...]
    chains: tuple[tuple[int, Chain], ...]


class Checked(NamedTuple, Generic[T]):
    """One file's outcome: ``size`` bytes read, ``problem`` None when its content is the
    one recorded at backup time, else what is wrong (one line, naming no path)."""

    tag: T
    size: int
    problem: str | None


def read_and_verify(
    repo: Repository, files: Iterable[tuple[Node, T]], *, readers: int | None = None
) -> Iterator[Checked[T]]:
    """Read and verify each file node of ``files`` ((node, tag) pairs, FILE nodes), yielding
    one ``Checked`` per file in the given order.

    Memory stays bounded: a batch of at most BATCH_FILES nodes, and ChunkFeed's two
    windows of stored data (readplan.WINDOW_BYTES each). A damaged or missing chunk fails
    the files that need it, never the batch. ``readers``: reader threads (default
    LOCAL_READERS on a local folder, REMOTE_READERS otherwise). Raises nothing of its own
    for damage; storage errors are problems of the files they hit.
    """
    local = isinstance(repo.backend, LocalBackend)
    pool = ThreadPoolExecutor(
        readers or (LOCAL_READERS if local else REMOTE_READERS),
        thread_name_prefix="recheck-read",
        initializer=block_stop_signals,
    )
    reader = BlobReader(
        repo.backend, repo.key.encryption_root, gap=LOCAL_GAP if local else REMOTE_GAP, pool=pool
    )
    try:
        batch: list[tuple[Node, T]] = []
        size = 0
        for node, tag in files:
            batch.append((node, tag))
            size += node.size
            if len(batch) >= BATCH_FILES or size >= BATCH_BYTES:
                yield from _batch(repo, reader, batch)
                batch, size = [], 0
        if batch:
            yield from _batch(repo, reader, batch)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _batch(
    repo: Repository, reader: BlobReader, batch: list[tuple[Node, T]]
) -> Iterator[Checked[T]]:
    try:
        every: list[bytes] | None = repo.locate_values(
            [c for node, _ in batch for c in node.content]
        )
    except CasError:
        every = None  # one chunk is missing: located file by file, to name the files
    jobs: list[_Job] = []
    ready: list[tuple[Node, T]] = []
    failed: dict[int, str] = {}
    pos = 0
    for i, (node, _tag) in enumerate(batch):
        first, pos = pos, pos + len(node.content)
        try:
            values = (
                every[first:pos] if every is not None else repo.locate_values(list(node.content))
            )
            jobs.append(_job(repo, node, values))
            ready.append(batch[i])
        except CasError as exc:
            failed[i] = str(exc)
    feed = ChunkFeed(reader, jobs)
    try:
        k = 0
        for i, (node, tag) in enumerate(batch):
            if i in failed:
                yield Checked(tag, 0, failed[i])
                continue
            yield _verify(feed, k, node, tag)
            k += 1
    finally:
        feed.close()


def _job(repo: Repository, node: Node, values: list[bytes]) -> _Job:
    """The located chunks of ``node`` and the chains of those not stored whole (deltas).
    Raises CasError (a base missing, a chain too deep)."""
    chunks: list[Chunk] = []
    chains: list[tuple[int, Chain]] = []
    for i, (chunk_id, value) in enumerate(zip(node.content, values, strict=True)):
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
    return _Job(tuple(chunks), tuple(chains))


def _verify(feed: ChunkFeed, index: int, node: Node, tag: T) -> Checked[T]:
    hasher = blake3.blake3()
    size = 0
    try:
        for data in feed.file(index):
            hasher.update(data)
            size += len(data)
    except CasError as exc:
        return Checked(tag, size, str(exc))
    if size != node.size:
        return Checked(tag, size, f"read {size} bytes but the snapshot records {node.size}")
    if hasher.digest() != node.content_hash:
        return Checked(tag, size, "content does not match the hash recorded at backup time")
    return Checked(tag, size, None)
