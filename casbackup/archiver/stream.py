"""A stored file read back as a stream: one chunk in memory at a time, checked at the end.

`db restore` feeds a dump from a snapshot straight into a database tool with this reader, so
neither a temporary file nor the whole dump ever sits on disk or in memory: memory is bounded by
the largest chunk (1 MiB for dumps, 8 MiB for files) whatever the dump's size.

Each chunk is authenticated when it is loaded; the whole-file BLAKE3 recorded at backup time is
compared at EOF as well, so chunks that are individually valid but wrong for this file (a damaged
tree) can never end in a clean EOF. The mismatch is raised *instead of* EOF, so a consumer that
commits only on EOF (pg_restore's single transaction) never commits bad data.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import blake3

from casbackup.archiver.readcheck import PlannedReads
from casbackup.errors import CasError, IntegrityError
from casbackup.repo.ids import BlobId, Kind
from casbackup.repo.nodecheck import require_sound_file
from casbackup.repo.repository import Repository
from casbackup.repo.tree import Node
from casbackup.store import stopping
from casbackup.store.base import is_remote


class ChunkReader(io.RawIOBase):
    """Read-only, forward-only file over a list of chunk ids."""

    def __init__(
        self,
        repo: Repository,
        chunks: Sequence[BlobId],
        *,
        size: int | None = None,
        content_hash: bytes | None = None,
        name: str = "file",
    ) -> None:
        super().__init__()
        self._repo = repo
        self._chunks = list(chunks)
        self._next = 0  # index of the next chunk to load
        self._buf = b""
        self._pos = 0  # read position inside _buf
        self._size = size
        self._expected_hash = content_hash or None
        self._hasher = blake3.blake3()
        self._read = 0
        self._checked = False
        self.name = name
        # On an object store every chunk's get is a round trip: a file of more than one
        # chunk is read ahead per pack, in merged ranges, several gets in flight
        # (readcheck.PlannedReads). A local folder keeps one pread per chunk, in this
        # thread: read-ahead threads there cost more CPU than they saved (bench/DUMPS.md).
        self._ahead = len(self._chunks) > 1 and is_remote(repo.backend)
        self._planned: PlannedReads | None = None
        self._leaving = False  # closed by an exception on its way out (__exit__)

    @classmethod
    def for_node(cls, repo: Repository, node: Node, name: str = "file") -> ChunkReader:
        require_sound_file(node, None, name)  # a node contradicting itself is never read
        return cls(repo, node.content, size=node.size, content_hash=node.content_hash, name=name)

    @property
    def bytes_read(self) -> int:
        return self._read

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        if not len(view):
            return 0
        while self._pos >= len(self._buf):
            if self._next >= len(self._chunks):
                self._check_end()
                return 0
            self._buf = self._load_next()
            self._next += 1
            self._pos = 0
            self._hasher.update(self._buf)
        n = min(len(view), len(self._buf) - self._pos)
        view[:n] = self._buf[self._pos : self._pos + n]
        self._pos += n
        self._read += n
        if self._pos >= len(self._buf):
            self._buf = b""  # release the chunk as soon as it is consumed
            self._pos = 0
        return n

    def _load_next(self) -> bytes:
        try:
            return self._load_chunk()
        except CasError as exc:
            # A damaged, missing or unreadable chunk says which file it stops (`dump`,
            # `db restore`): the blob and pack alone leave the user to find out.
            if str(exc).startswith(f"{self.name}: "):
                raise
            raise exc.saying(f"{self.name}: {exc}") from None

    def _load_chunk(self) -> bytes:
        if not self._ahead:
            return self._repo.load_blob(self._chunks[self._next], Kind.DATA)
        if self._planned is None:
            self._planned = PlannedReads(self._repo, self._chunks)
        try:
            return next(self._planned.pieces)
        except BaseException:
            # Damage, or Ctrl-C while a get hangs: the reads ahead are dropped, not awaited.
            self._planned.close(wait=False)
            raise

    def _check_end(self) -> None:
        if self._checked:
            return
        if self._size is not None and self._read != self._size:
            raise IntegrityError(
                f"{self.name}: read {self._read} bytes but the snapshot records {self._size}"
            )
        if self._expected_hash is not None and self._hasher.digest() != self._expected_hash:
            raise IntegrityError(
                f"{self.name}: content does not match the hash recorded at backup time"
            )
        self._checked = True

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._leaving = exc_type is not None
        self.close()

    def close(self) -> None:
        self._buf = b""
        if self._planned is not None:
            # A consumer that stopped early waits for the reads ahead, as an executor does;
            # on the way out of an error or a stop that came while the caller was elsewhere
            # (feeding a database tool), a get ahead that hangs must not hold it.
            leaving = self._leaving or stopping.stopped() is not None
            self._planned.close(wait=self._checked or not leaving)
            self._planned = None
        super().close()
