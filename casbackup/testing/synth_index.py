"""Fill a repository with N synthetic index entries, for the scale benchmarks only.

    CASBACKUP_PASSWORD=... python -m casbackup.testing.synth_index REPO N [--packs]

Without ``--packs`` the entries name a pack that does not exist (the quickest way to a
large index for timing backups against it), so `check` on such a repository reports
them: never run this on a repository that holds real backups.

With ``--packs`` every entry is a real blob (48 random bytes, sealed like any chunk)
in real packs of ``PACK_BLOBS`` blobs, and one snapshot uses most of them, so ``check``,
``check --read-data`` and ``prune`` have real work at scale. The snapshot's files each
hold ``FILE_CHUNKS`` chunks; which packs it leaves unused is fixed (see ``pack_use``):
2 % of the packs wholly unused (prune deletes them), 2 % half unused (prune repacks
them), the rest wholly used.

Either way index files hold at most ``PER_FILE`` entries each, and the local LMDB cache
is brought up to date at the end, so a timed command afterwards measures work on a
large index, not the one-time cache build.
"""

from __future__ import annotations

import os
import sys
import time

from casbackup.repo import codec
from casbackup.repo.ids import BlobId, FileId, Kind
from casbackup.repo.index import Location, encode_index
from casbackup.repo.pack import PackWriter, pack_name
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.tree import Node, NodeKind
from casbackup.store.local import LocalBackend

PER_FILE = 100_000
PACK_BLOBS = 10_000
BLOB_SIZE = 48  # under codec.compress's 64-byte floor: stored raw, no zstd call per blob
FILE_CHUNKS = 100
DIR_FILES = 100


def pack_use(pack_no: int) -> str:
    """Which blobs of synthetic pack ``pack_no`` the snapshot uses: all, half or none."""
    if pack_no % 50 == 0:
        return "none"
    if pack_no % 50 == 1:
        return "half"
    return "all"


def fill(repo: Repository, count: int, *, packs: bool = False) -> None:
    """Add ``count`` index entries (and, with ``packs``, their packs and a snapshot)."""
    if packs:
        _fill_packs(repo, count)
    else:
        _fill_index_only(repo, count)
    repo.sync_index()


def _fill_index_only(repo: Repository, count: int) -> None:
    fake_pack = FileId("f" * 64)
    done = 0
    while done < count:
        n = min(PER_FILE, count - done)
        entries = [
            (BlobId(os.urandom(32)), Location(fake_pack, i * 100, 100, 100, Kind.DATA))
            for i in range(n)
        ]
        repo.save_file_object("index", Kind.INDEX, encode_index({fake_pack: entries}))
        done += n


class _TreeBuilder:
    """Turns a stream of used chunk ids into file nodes, folders and one root tree."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.chunks: list[BlobId] = []
        self.files: list[Node] = []
        self.dirs: list[Node] = []

    def add(self, blob_id: BlobId) -> None:
        self.chunks.append(blob_id)
        if len(self.chunks) >= FILE_CHUNKS:
            self._file()

    def _file(self) -> None:
        if not self.chunks:
            return
        name = f"f{len(self.files):06d}".encode()
        self.files.append(
            Node(
                name, NodeKind.FILE, size=BLOB_SIZE * len(self.chunks),
                content=tuple(self.chunks), content_hash=bytes(32),
            )
        )  # fmt: skip
        self.chunks = []
        if len(self.files) >= DIR_FILES:
            self._dir()

    def _dir(self) -> None:
        if not self.files:
            return
        subtree = self.repo.save_tree(self.files)
        self.dirs.append(Node(f"d{len(self.dirs):06d}".encode(), NodeKind.DIR, subtree=subtree))
        self.files = []

    def root(self) -> BlobId:
        self._file()
        self._dir()
        return self.repo.save_tree(self.dirs)


def _fill_packs(repo: Repository, count: int) -> None:
    trees = _TreeBuilder(repo)
    pending: dict[FileId, list[tuple[BlobId, Location]]] = {}
    in_pending = 0
    pack_no = 0
    done = 0
    while done < count:
        n = min(PACK_BLOBS, count - done)
        use = pack_use(pack_no)
        raw = os.urandom(BLOB_SIZE * n)
        writer = PackWriter()
        for i in range(n):
            data = raw[i * BLOB_SIZE : (i + 1) * BLOB_SIZE]
            blob_id = repo.blob_id(data)
            sealed = repo.sealer.seal(Kind.DATA, blob_id, codec.compress(data, None))
            writer.add(Kind.DATA, blob_id, sealed, BLOB_SIZE)
            if use == "all" or (use == "half" and i % 2 == 0):
                trees.add(blob_id)
        pack_id, data, written = writer.finish(repo.sealer)
        repo.backend.put(pack_name(pack_id), data)
        pending[pack_id] = [
            (e.id, Location(pack_id, e.offset, e.stored_len, BLOB_SIZE, e.kind)) for e in written
        ]
        in_pending += n
        if in_pending >= PER_FILE:
            repo.save_file_object("index", Kind.INDEX, encode_index(pending))
            pending, in_pending = {}, 0
        done += n
        pack_no += 1
    if pending:
        repo.save_file_object("index", Kind.INDEX, encode_index(pending))
    root = trees.root()
    now = time.time_ns()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(now // 10**9))
    snap = Snapshot(
        time=stamp, start_ns=now, host="synth", user="synth", paths=("/synth",), tree=root.hex()
    )
    repo.save_snapshot(snap)  # flushes the tree packs and their index first


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--packs"]
    if len(args) != 2:
        sys.exit("usage: python -m casbackup.testing.synth_index REPO N [--packs]")
    repo = Repository.open(LocalBackend(args[0]), os.environ["CASBACKUP_PASSWORD"].encode())
    try:
        fill(repo, int(args[1]), packs="--packs" in sys.argv[1:])
        print(f"index now holds {repo.cache.count()} entries")
    finally:
        repo.close()


if __name__ == "__main__":
    main()
