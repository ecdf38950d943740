"""A stop while a read-ahead get hangs: the planned readers return at once, not when the get does.

Found on SeaweedFS behind a proxy that stops answering data GETs: Ctrl-C during `dump
SNAPSHOT:FOLDER` (and `dump SNAPSHOT:FILE`) printed nothing and the process stayed (still
running 11 minutes later: the pool's shutdown waited for the hung gets, each retried after
the store's timeout); now "error: interrupted", exit 130 at once. Here the stop is a
KeyboardInterrupt that the first range's get hands to the main thread (as SIGINT does while
it waits on that read) while the reads of every other pack hang until the test lets them go.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from casbackup.archiver.readcheck import read_files
from casbackup.archiver.readpool import ReaderPool
from casbackup.archiver.stream import ChunkReader
from casbackup.maintenance.copy import CopyOptions, copy_snapshots
from casbackup.repo.pack import pack_name
from casbackup.repo.repository import Repository
from casbackup.repo.tree import Node
from casbackup.store.memory import MemoryBackend
from casbackup.testing.fixtures import make_repo

from .trees import dir_node, file_node, snapshot_of

DEADLINE = 60.0  # seconds: far beyond any wait a working way out needs, even under load
HANG_WAIT = 20.0  # seconds the stopping read waits for another to hang (well under DEADLINE)


class RemoteMemory(MemoryBackend):
    """A memory backend the readers take for an object store (store/base.is_remote)."""

    remote = True


class HangingBackend(MemoryBackend):
    """Once armed (``arm``), a read of the first pack of a file raises KeyboardInterrupt
    and reads of its other packs hang until ``release`` is set; other objects read as
    usual. Armed, it is an object store to the readers made after (store/base.is_remote);
    the repository opened on it before stays as it was (no tree cache, no uploader).

    The stopping read first waits (up to ``HANG_WAIT``) for a read to hang: on a loaded
    machine the pool's threads may not have reached their gets yet, and a stop before any
    read hangs proves nothing (CI saw exactly that once: ``hanging == 0``)."""

    remote = False

    def __init__(self) -> None:
        super().__init__()
        self.stop: str | None = None
        self.hang: set[str] = set()
        self.release = threading.Event()
        self.hanging = 0
        self.hung = threading.Event()
        self._lock = threading.Lock()

    def arm(self, repo: Repository, content: tuple[bytes, ...]) -> None:
        packs = list(dict.fromkeys(pack_name(repo.locate(c).pack) for c in content))
        assert len(packs) > 1
        self.stop, self.hang = packs[0], set(packs[1:])
        self.remote = True

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if name == self.stop:
            self.hung.wait(HANG_WAIT)
            raise KeyboardInterrupt
        if name in self.hang:
            with self._lock:
                self.hanging += 1
            self.hung.set()
            self.release.wait()
        return super().get(name, offset, length)


@pytest.fixture
def hanging() -> Iterator[tuple[Repository, HangingBackend]]:
    backend = HangingBackend()
    yield make_repo(backend), backend
    backend.release.set()


def _spread(repo: Repository, name: bytes, parts: int) -> Node:
    """A file of ``parts`` pieces of 40 chunks, each piece in a pack of its own."""
    data = os.urandom(40_000 * parts)
    for i in range(parts):
        file_node(repo, b"x", data[i * 40_000 : (i + 1) * 40_000], chunk=1000)
        repo.flush()
    return file_node(repo, name, data, chunk=1000)  # the same chunks: found, not stored


def _stops_at_once(action: Callable[[], object]) -> None:
    """``action`` raises KeyboardInterrupt, in a thread of its own, well before DEADLINE."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            action()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the one the test expects
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    assert not thread.is_alive(), "the stop waited for the hung reads"
    assert isinstance(outcome[0], KeyboardInterrupt), outcome


def test_a_folder_dump_stops_without_waiting_for_hung_reads(hanging) -> None:  # type: ignore[no-untyped-def]
    repo, backend = hanging
    nodes = [_spread(repo, b"f%02d" % i, 2) for i in range(4)]
    snapshot_of(repo, nodes)

    def dump() -> None:
        for _tag, stream in read_files(repo, ((n, n.name) for n in nodes), readers=8):
            stream.drain()  # type: ignore[union-attr]

    backend.arm(repo, tuple(c for n in nodes for c in n.content))
    _stops_at_once(dump)
    assert backend.hanging  # a read was hanging when it stopped


def test_a_file_dump_stops_without_waiting_for_hung_reads(hanging) -> None:  # type: ignore[no-untyped-def]
    repo, backend = hanging
    node = _spread(repo, b"dump", 4)
    snapshot_of(repo, [node])

    def dump() -> None:
        with ChunkReader.for_node(repo, node, name="dump") as reader:
            reader.read()

    backend.arm(repo, node.content)
    _stops_at_once(dump)
    assert backend.hanging


def test_a_copy_stops_without_waiting_for_hung_reads(hanging, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src, backend = hanging
    big = _spread(src, b"big", 4)
    snapshot_of(src, [dir_node(src, b"top", [big])])  # its trees in a pack of their own
    dst = make_repo(MemoryBackend())
    backend.arm(src, big.content)
    _stops_at_once(lambda: copy_snapshots(src, dst, CopyOptions()))
    assert backend.hanging
    backend.release.set()
    assert dst.list_snapshots() == []  # nothing committed half-way


def test_the_pool_runs_work_and_waits_for_it_when_done_normally() -> None:
    pool = ReaderPool(3, "t")
    futures = [pool.submit(pow, 2, i) for i in range(20)]
    pool.shutdown(wait=True)
    assert [f.result() for f in futures] == [2**i for i in range(20)]
    with pytest.raises(RuntimeError):
        pool.submit(pow, 2, 2)


def test_a_copy_holds_one_trees_read_ahead_at_a_time(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Each folder entered kept its parent's read-ahead (two windows of up to 16 MiB):
    memory grew with the depth of the tree being copied from an object store."""
    from casbackup.archiver import readplan

    src = make_repo(RemoteMemory())
    folder = None
    for depth in range(6):  # a file before the subfolder and one after it, at each level
        below = [folder] if folder is not None else []
        nodes = [file_node(src, b"a%d" % depth, os.urandom(5000), chunk=1000),
                 file_node(src, b"z%d" % depth, os.urandom(5000), chunk=1000), *below]  # fmt: skip
        folder = dir_node(src, b"m%d" % depth, nodes)
    snapshot_of(src, [folder])  # type: ignore[list-item]
    feeds: set[int] = set()
    most = 0
    plan, close = readplan.ChunkFeed._plan, readplan.ChunkFeed.close

    def planning(self, start):  # type: ignore[no-untyped-def]
        nonlocal most
        feeds.add(id(self))
        most = max(most, len(feeds))
        return plan(self, start)

    def closing(self) -> None:  # type: ignore[no-untyped-def]
        feeds.discard(id(self))
        close(self)

    monkeypatch.setattr(readplan.ChunkFeed, "_plan", planning)
    monkeypatch.setattr(readplan.ChunkFeed, "close", closing)
    dst = make_repo(MemoryBackend())
    result = copy_snapshots(src, dst, CopyOptions())
    assert len(result.copied) == 1
    assert most == 1, most


def test_a_file_reader_closed_by_a_stop_elsewhere_does_not_wait(hanging) -> None:  # type: ignore[no-untyped-def]
    # `db restore`: the stop reaches the main thread while it feeds the database tool,
    # not while it waits on a read; closing the reader must not wait for the reads ahead.
    repo, backend = hanging
    node = _spread(repo, b"dump", 4)
    snapshot_of(repo, [node])
    backend.arm(repo, node.content)
    backend.stop = None  # the first pack reads; the others hang

    def feed() -> None:
        with ChunkReader.for_node(repo, node, name="dump") as reader:
            assert reader.read(1000)
            deadline = time.monotonic() + DEADLINE
            while not backend.hanging and time.monotonic() < deadline:
                time.sleep(0.01)  # until a read ahead hangs
            raise KeyboardInterrupt  # Ctrl-C while writing to the tool

    _stops_at_once(feed)
    assert backend.hanging


def test_a_stopped_pool_fails_its_running_reads_at_once() -> None:
    pool = ReaderPool(2, "test-read")
    release = threading.Event()
    started = threading.Event()

    def hang() -> str:
        started.set()
        release.wait()
        return "late"

    running = pool.submit(hang)
    assert started.wait(DEADLINE)
    pool.stop(RuntimeError("stopped"))
    with pytest.raises(RuntimeError, match="stopped"):
        running.result(timeout=DEADLINE)  # at once, not when the read returns
    release.set()  # its late answer is dropped, without an error in the thread
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(hang)


def test_a_read_no_one_waits_for_is_not_retried() -> None:
    # A get that hung in a pool stopped without waiting ends with the store's timeout:
    # retried, it would hold its thread (and, in the service, a connection) for the
    # timeout times the attempts.
    from casbackup.errors import TransientStorageError
    from casbackup.store.retry import RetryingBackend

    attempts: list[int] = []

    class Flaky(MemoryBackend):
        def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
            attempts.append(1)
            if len(attempts) == 1:
                gate.set()
                release.wait()
            raise TransientStorageError("reading x: timed out")

    gate, release = threading.Event(), threading.Event()
    backend = RetryingBackend(Flaky(), attempts=5, sleep=lambda s: None)
    pool = ReaderPool(1, "test-read")
    future = pool.submit(backend.get, "config")
    assert gate.wait(DEADLINE)
    pool.shutdown(wait=False, cancel_futures=True)
    release.set()
    with pytest.raises(TransientStorageError):
        future.result(timeout=DEADLINE)
    assert len(attempts) == 1
    done = ReaderPool(1, "test-read")  # a pool someone waits for still retries
    attempts.clear()
    with pytest.raises(TransientStorageError, match="gave up after 5 attempts"):
        done.submit(backend.get, "config").result(timeout=DEADLINE)
    assert len(attempts) == 5
    done.shutdown()
