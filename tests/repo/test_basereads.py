"""Delta bases read from an object store (repo/basereads.py): a pack read a second time is
read ahead in one window, reads inside a kept window cost no request, a window never asks
past the pack's end, memory stays bounded; and (deltastore) a base taken from the local
copy is only used when every link of its chain still authenticates."""

from __future__ import annotations

import os
from pathlib import Path

from casbackup.archiver import delta_bases
from casbackup.repo.basereads import PackWindows
from casbackup.repo.ids import Kind
from casbackup.repo.repository import Repository
from casbackup.testing.fixtures import flip_stored_byte, make_repo, open_repo

PACK = "ab" * 32


def changed(piece: bytes, at: int) -> bytes:
    """``piece`` with its byte ``at`` changed (a fixed byte written there left random data
    as it was one time in 256: a chunk that was not new, and a flaky test)."""
    return piece[:at] + bytes([(piece[at] + 1) % 256]) + piece[at + 1 :]


class Store:
    remote = True

    def __init__(self, size: int) -> None:
        self.data = os.urandom(size)
        self.calls: list[tuple] = []

    def get(self, name: str, offset: int, length: int) -> bytes:
        self.calls.append(("get", offset, length))
        assert offset + length <= len(self.data)
        return self.data[offset : offset + length]

    def stat(self, name: str) -> int:
        self.calls.append(("stat",))
        return len(self.data)


def test_a_pack_read_twice_is_read_ahead_within_its_size() -> None:
    store = Store(1_000_000)
    reads = PackWindows(store, window=300_000, keep=2)  # type: ignore[arg-type]
    got = [reads.fetch(PACK, j * 10_000, 10_000) for j in range(100)]
    assert b"".join(got) == store.data
    # One exact read, then a window per 300 kB, the last cut at the pack's end.
    assert store.calls == [
        ("get", 0, 10_000), ("stat",), ("get", 10_000, 300_000), ("get", 310_000, 300_000),
        ("get", 610_000, 300_000), ("get", 910_000, 90_000),
    ]  # fmt: skip
    assert reads.requests == len(store.calls)
    # At most `keep` windows: the first ones are gone, a read there asks again.
    store.calls.clear()
    assert reads.fetch(PACK, 20_000, 10) == store.data[20_000:20_010]
    assert store.calls == [("get", 20_000, 300_000)]
    # A read as large as a window is made as it is.
    store.calls.clear()
    reads.fetch(PACK, 0, 300_000)
    assert store.calls == [("get", 0, 300_000)]


def test_a_pack_read_once_costs_one_exact_read() -> None:
    store = Store(100_000)
    reads = PackWindows(store)  # type: ignore[arg-type]
    assert reads.fetch(PACK, 500, 20) == store.data[500:520]
    assert store.calls == [("get", 500, 20)]


def test_a_base_from_the_copy_whose_chain_is_damaged_below_is_refused(tmp_path: Path) -> None:
    """Damage to the full blob at the bottom of a base's chain (not the base itself): the
    copy still holds the base, but the repository could not give it back, so it is
    refuted (the chunk is stored whole) instead of being built on."""
    path = str(tmp_path / "r")
    repo = make_repo(path)
    first = [os.urandom(30_000) for _ in range(3)]
    ids = delta_bases.store_chunks(repo, iter(first), None)[0]
    versions = [first]
    for _ in range(2):
        bases = delta_bases.BaseFinder.for_content(repo, ids, "k")
        new = [changed(p, 100) for p in versions[-1]]
        ids = delta_bases.store_chunks(repo, iter(new), bases, copy_key="k")[0]
        versions.append(new)
    repo.flush()
    assert repo.delta_depth(ids[0]) == 2
    top = repo.locate(ids[0])
    bottom = repo.locate(repo.locate(top.base).base)
    assert bottom.kind == Kind.DATA
    plain = versions[-1][0]
    assert repo.delta_base_for(ids[0], plain).plain == plain  # intact: the copy's bytes
    repo.close()
    flip_stored_byte(path, bottom.pack, bottom.offset, bottom.stored_len)
    repo = open_repo(path)
    refused = repo.delta_base_for(ids[0], plain)
    assert refused is not None and refused.refuted and refused.plain is None
    repo.close()


def test_a_pack_asked_for_many_links_is_hashed_whole_once(tmp_path: Path) -> None:
    from casbackup.repo import deltastore

    path = str(tmp_path / "r")
    repo = make_repo(path)
    blobs = [os.urandom(2_000) for _ in range(12)]
    ids = [repo.save_blob(Kind.DATA, b)[0] for b in blobs]
    repo.flush()
    links = [(i, repo.locate(i)) for i in ids]
    assert len({loc.pack for _, loc in links}) == 1
    pack = links[0][1].pack
    assert all(repo._chain_intact([link]) for link in links)
    assert repo._packs_checked[pack] == deltastore.PACK_WHOLE
    repo.close()
    # The last blob damaged: the first links still authenticate one by one, the pack read
    # whole does not hash to its name, and from then on every link in it is refused.
    last = links[-1][1]
    flip_stored_byte(path, pack, last.offset, last.stored_len)
    repo = open_repo(path)
    verdicts = [repo._chain_intact([(i, repo.locate(i))]) for i in ids]
    assert verdicts == [True] * (deltastore.WHOLE_PACK_AFTER - 1) + [False] * (
        len(ids) - deltastore.WHOLE_PACK_AFTER + 1
    )
    assert repo._packs_checked[pack] == deltastore.PACK_BAD
    repo.close()


def test_a_pack_offered_whole_answers_every_read_and_a_large_one_is_not_kept() -> None:
    store = Store(500_000)
    reads = PackWindows(store, window=300_000, keep=2)  # type: ignore[arg-type]
    reads.fetch(PACK, 0, 100)
    reads.offer(PACK, store.data)
    store.calls.clear()
    assert reads.fetch(PACK, 499_000, 1_000) == store.data[499_000:]
    assert reads.fetch(PACK, 1_000, 10) == store.data[1_000:1_010]
    assert store.calls == []
    other = "cd" * 32
    reads.offer(other, os.urandom(700_000))  # more than two windows: not kept
    reads.fetch(other, 0, 10)
    assert store.calls == [("get", 0, 10)]  # asked of the store, as any first read


class Remote:
    """A local folder seen as an object store, counting its reads."""

    remote = True

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self.gets: list[tuple[str, int]] = []

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        self.gets.append((name, -1 if length is None else length))
        return self._inner.get(name, offset, length)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def _remote_pack(tmp_path: Path, n: int) -> tuple[Remote, Repository, list]:
    """A repository holding ``n`` small blobs in one pack, opened through ``Remote``:
    (the store, the repository, [(id, location)] of the blobs)."""
    from casbackup.store.local import LocalBackend

    path = str(tmp_path / "r")
    repo = make_repo(path)
    ids = [repo.save_blob(Kind.DATA, os.urandom(2_000))[0] for _ in range(n)]
    repo.flush()
    repo.close()
    store = Remote(LocalBackend(path))
    repo = open_repo(store)  # type: ignore[arg-type]
    return store, repo, [(i, repo.locate(i)) for i in ids]


def test_from_an_object_store_a_pack_is_hashed_whole_at_its_second_link_and_read_once(
    tmp_path: Path,
) -> None:
    from casbackup.repo import deltastore

    store, repo, links = _remote_pack(tmp_path, 12)
    pack = links[0][1].pack
    store.gets.clear()
    assert all(repo._chain_intact([link]) for link in links)
    assert repo._packs_checked[pack] == deltastore.PACK_WHOLE
    # One ranged read for the first link, the whole pack at the second, nothing after:
    # the pack is downloaded once (it was twice: windows for the links, then whole).
    assert [length for _, length in store.gets] == [links[0][1].stored_len, -1]
    fetch = repo._base_reads()
    for _, loc in links:
        fetch(loc.pack, loc.offset, loc.stored_len)
    assert len(store.gets) == 2
    repo.close()


def test_from_an_object_store_a_pack_read_before_its_chain_check_is_hashed_whole_at_once(
    tmp_path: Path,
) -> None:
    store, repo, links = _remote_pack(tmp_path, 6)
    store.gets.clear()
    first = links[0][1]
    repo._base_reads()(first.pack, first.offset, first.stored_len)  # a spot check's read
    assert all(repo._chain_intact([link]) for link in links[1:])
    # Not a read-ahead window and then the whole pack again: the whole pack, once.
    assert [length for _, length in store.gets] == [first.stored_len, -1]
    repo.close()


def test_a_window_that_reaches_the_pack_s_end_is_used_when_it_is_hashed_whole() -> None:
    store = Store(500_000)
    reads = PackWindows(store, window=300_000, keep=2)  # type: ignore[arg-type]
    reads.fetch(PACK, 0, 100)
    reads.fetch(PACK, 250_000, 100)  # a window 250,000-500,000: the pack's end
    store.calls.clear()
    assert reads.whole(PACK) == store.data
    assert store.calls == [("get", 0, 250_000)]  # only the bytes before the window
    store.calls.clear()
    assert reads.fetch(PACK, 10, 10) == store.data[10:20] and store.calls == []
