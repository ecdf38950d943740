"""readcheck.read_and_verify: a recovery's re-check reads per pack, and names what is wrong.

Found by timing `recover` by hand: its re-check read file by file, one get per chunk, one
after the other. On SeaweedFS over loopback the re-check of an 8,104-file application
(160 MiB, 9,502 chunks) took 26.6-31.8 s before a restore that takes a few seconds; over a
real network each get is a round trip more.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
from dataclasses import replace

import pytest

from casbackup.archiver import readcheck
from casbackup.archiver.export import archive_stream, tree_members
from casbackup.archiver.readcheck import read_and_verify
from casbackup.archiver.stream import ChunkReader
from casbackup.errors import IntegrityError, NotFound
from casbackup.repo.repository import Repository

from .test_restore_readplan import CountingBackend, counted  # noqa: F401 (fixture)
from .trees import dir_node, file_node, snapshot_of


def test_files_are_read_per_pack_across_batches_and_come_back_in_order(  # type: ignore[no-untyped-def]
    counted,  # noqa: F811
) -> None:
    repo, backend = counted
    files = {b"f%04d" % i: os.urandom(2000) + b"%d" % i for i in range(readcheck.BATCH_FILES + 44)}
    nodes = [file_node(repo, name, data, chunk=700) for name, data in files.items()]
    snapshot_of(repo, nodes)  # stores the packs
    chunks = sum(len(n.content) for n in nodes)
    backend.gets.clear()
    got = list(read_and_verify(repo, ((n, n.name) for n in nodes)))
    assert [c.tag for c in got] == list(files)
    assert all(c.problem is None for c in got), [c for c in got if c.problem][:3]
    assert [c.size for c in got] == [len(d) for d in files.values()]
    assert len(backend.gets) < chunks / 20  # not one get per chunk (there are 900 chunks)


def test_each_fault_fails_only_its_file(counted) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    repo, backend = counted
    good = file_node(repo, b"good", os.urandom(3000), chunk=1000)
    bad = file_node(repo, b"bad", os.urandom(3000), chunk=1000)
    other = file_node(repo, b"other", os.urandom(100))
    snapshot_of(repo, [good, bad, other])
    loc = repo.locate(bad.content[1])
    name = f"data/{loc.pack[:2]}/{loc.pack}"
    raw = bytearray(backend.objects[name])
    raw[loc.offset + loc.stored_len // 2] ^= 0xFF
    backend.objects[name] = bytes(raw)
    lost = replace(good, name=b"lost", content=(good.content[0], b"\x07" * 32))
    short = replace(other, name=b"short", size=other.size + 1)
    forged = replace(other, name=b"forged", content_hash=b"\x00" * 32)
    got = {
        c.tag: c.problem
        for c in read_and_verify(
            repo, ((n, n.name) for n in (good, bad, lost, short, forged, other))
        )
    }
    assert got[b"good"] is None and got[b"other"] is None
    assert got[b"bad"] is not None and "damaged" in got[b"bad"]
    assert got[b"lost"] is not None and "is not in the index" in got[b"lost"]
    assert got[b"short"] == f"read {other.size} bytes but the snapshot records {other.size + 1}"
    assert got[b"forged"] == "content does not match the hash recorded at backup time"


def test_an_empty_file_and_no_files(counted) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    repo: Repository = counted[0]
    empty = file_node(repo, b"empty", b"")
    snapshot_of(repo, [empty])
    assert [(c.tag, c.size, c.problem) for c in read_and_verify(repo, [(empty, 1)])] == [
        (1, 0, None)
    ]
    assert list(read_and_verify(repo, [])) == []


def test_a_stream_on_an_object_store_reads_ahead_per_pack(counted) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """`db restore`, `dump` and recover's loads read a stored file through ChunkReader: on
    an object store one get per chunk, each a round trip, until this."""
    repo, backend = counted
    data = os.urandom(60_000)
    node = file_node(repo, b"dump", data, chunk=1000)
    snapshot_of(repo, [node])
    backend.remote = True  # an object store to the readers (store/base.is_remote)
    threads = threading.active_count()
    backend.gets.clear()
    with ChunkReader.for_node(repo, node, name="dump") as reader:
        assert reader.read() == data
    assert len(backend.gets) < 6  # not 60
    assert threading.active_count() == threads  # its reader threads are gone
    # a reader closed half-way stops its threads too
    reader = ChunkReader.for_node(repo, node, name="dump")
    piece = reader.read(5000)  # a raw read: at most one chunk
    assert piece and data.startswith(piece)
    reader.close()
    assert threading.active_count() == threads


def test_a_damaged_chunk_read_ahead_fails_the_stream_never_ends_it(counted) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    repo, backend = counted
    node = file_node(repo, b"dump", os.urandom(20_000), chunk=1000)
    snapshot_of(repo, [node])
    loc = repo.locate(node.content[7])
    name = f"data/{loc.pack[:2]}/{loc.pack}"
    raw = bytearray(backend.objects[name])
    raw[loc.offset + 5] ^= 0x01
    backend.objects[name] = bytes(raw)
    with ChunkReader.for_node(repo, node, name="dump") as reader:
        with pytest.raises(IntegrityError, match="damaged"):
            reader.read()
    missing = replace(node, content=(*node.content[:3], b"\x05" * 32, *node.content[4:]))
    with ChunkReader.for_node(repo, missing, name="dump") as reader:
        with pytest.raises(NotFound, match="is not in the index"):
            reader.read()


def test_a_folder_archive_reads_per_pack_and_still_checks_every_file(counted) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """`dump SNAPSHOT:FOLDER` read each file through its own ChunkReader: a get per chunk."""
    repo, backend = counted
    files = {b"f%03d" % i: os.urandom(1500) + b"%d" % i for i in range(120)}
    top = dir_node(repo, b"top", [file_node(repo, n, d, chunk=500) for n, d in files.items()])
    snapshot_of(repo, [top])
    backend.gets.clear()
    data = b"".join(archive_stream("tar", tree_members(repo, top, "top")))
    assert len(backend.gets) < 12  # 360 chunks
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        got = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert got == {f"top/{n.decode()}": d for n, d in files.items()}
    forged = replace(top, subtree=None)  # (a folder with nothing below it)
    assert [m.path for m in tree_members(repo, forged, "x")] == ["x"]
    wrong = file_node(repo, b"wrong", b"abc")
    wrong = replace(wrong, content_hash=b"\x01" * 32)
    folder = dir_node(repo, b"w", [wrong])
    snapshot_of(repo, [folder])
    with pytest.raises(IntegrityError, match="w/wrong: content does not match"):
        b"".join(archive_stream("tar", tree_members(repo, folder, "w")))


def test_an_error_shared_by_two_files_names_each_once() -> None:
    """A failed range's error object is shared by every blob in it: naming the file by
    changing that object made the second file's message 'b: a: ...' (helper-69)."""
    from casbackup.archiver.export import Member, _contents
    from casbackup.repo.tree import Node, NodeKind

    shared = IntegrityError("blob 1234 in pack abcd is damaged")

    def fail(pos: int, n: int) -> bytes:
        raise shared

    seen = []
    for name in ("a", "b"):
        node = Node(name=name.encode(), kind=NodeKind.FILE, size=10)
        with pytest.raises(IntegrityError) as exc:
            list(_contents(Member(name, node, fail)))
        seen.append(str(exc.value))
    assert seen == ["a: blob 1234 in pack abcd is damaged", "b: blob 1234 in pack abcd is damaged"]
    assert str(shared) == "blob 1234 in pack abcd is damaged"
