"""Sets and tables of blob records that live in temporary files, one bucket in memory at a time.

``prune`` and ``check`` on a repository of millions of blobs must not hold a Python object
per blob (about 150 bytes each: 5 million cost 750 MiB). Here records of a fixed size are
appended to one of ``buckets`` files by a key the caller chooses (the first byte of a blob
id, which a keyed hash spreads evenly; or a pack number); a pass over the data then loads
one bucket at a time. With 256 buckets and 5 million ids a bucket holds about 20,000:
well under a megabyte.

Exact, never approximate: a bucket holds every record added to it, so a set built on
them never answers "not there" for an id that was added (prune's safety rests on that:
a blob wrongly called unused would be deleted).

Files go to a private (0700) folder under the cache root, removed by ``close`` (or when
the object is collected, or at exit): they name keyed blob ids, nobody else's business.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import tempfile
import weakref
from collections.abc import Iterable, Iterator
from operator import itemgetter

from casbackup.errors import StorageError
from casbackup.repo.indexcache import cache_root, private_dirs
from casbackup.repo.userdirs import ForeignCacheEntry, unwritable_because

log = logging.getLogger("casbackup.maintenance")
_warned: set[str] = set()  # cache folders warned about in this process (once each)


def _new_folder() -> str:
    """A new private folder under the cache root's tmp/; where that cannot be used (read-only,
    not ours: userdirs.refuse_foreign), one in the system's temporary folder after one
    warning. StorageError when neither can be made (a full disk: the caller changed nothing)."""
    root = os.path.join(cache_root(), "tmp")
    try:
        private_dirs(root)
        return tempfile.mkdtemp(prefix="spill-", dir=root)
    except OSError as exc:
        if isinstance(exc, ForeignCacheEntry):
            why = f"{exc.filename} {exc.strerror}"
        else:
            why = unwritable_because(root, cache_root(), exc)
    try:
        folder = tempfile.mkdtemp(prefix="casbackup-spill-")
    except OSError:
        raise StorageError(
            f"cannot create temporary files for prune/check in {root}: {why}"
        ) from None
    if root not in _warned:
        _warned.add(root)
        log.warning(f"cannot use {root} for temporary files: {why}; using {tempfile.gettempdir()}")
    return folder


ID_BUCKETS = 256  # by an id's first byte
_FLUSH_AT = (
    16 * 1024
)  # bytes buffered per bucket before they are appended to its file (4 MiB in all)
_SWEEP_AT = 1 << 20  # bytes ``add_by_byte`` buffers before flushing every full bucket


class RecordSpill:
    """``buckets`` files of ``record_size``-byte records; ``add`` buffers, ``read`` loads one.

    Raises StorageError when the temporary folder cannot be made or written (a full disk:
    the caller stops, having changed nothing)."""

    def __init__(self, record_size: int, buckets: int, *, folder: str | None = None) -> None:
        self.record_size = record_size
        self.buckets = buckets
        self.count = 0
        self._buffers = [bytearray() for _ in range(buckets)]
        self._unswept = 0  # bytes ``add_by_byte`` buffered since it last flushed full buffers
        self._owned = folder is None
        if folder is None:
            folder = _new_folder()
        self.folder = folder
        self._cleanup = weakref.finalize(self, _remove, folder if self._owned else None)

    def _path(self, bucket: int) -> str:
        return os.path.join(self.folder, f"{id(self):x}-{bucket}")

    def add(self, bucket: int, record: bytes | memoryview) -> None:
        """Append one record (exactly ``record_size`` bytes) to ``bucket``."""
        buf = self._buffers[bucket]
        buf += record
        self.count += 1
        if len(buf) >= _FLUSH_AT:
            self._flush(bucket)

    def add_by_first_byte(self, records: Iterable[bytes]) -> None:
        """``add_by_byte(records, 0)``: each record goes by its first byte (a blob id's)."""
        self.add_by_byte(records, 0)

    def add_by_byte(self, records: Iterable[bytes], at: int) -> None:
        """Append each of ``records`` (``record_size`` bytes each) to the bucket its byte
        at ``at`` names (``ID_BUCKETS`` buckets: the first byte of a blob id in it, or the
        low byte of a big-endian number). Raises ValueError for a record of another size.

        One loop step per record and no call: ``add`` per chunk was a tenth of ``check``'s
        and ``prune``'s CPU time at millions of chunks. Full buffers are flushed every
        ``_SWEEP_AT`` bytes added: memory stays under ``buckets * _FLUSH_AT`` plus that."""
        records = records if isinstance(records, (list, tuple)) else list(records)
        if not records:
            return
        if self.buckets != ID_BUCKETS or not 0 <= at < self.record_size:
            raise ValueError("records go by one of their bytes into ID_BUCKETS buckets")
        if set(map(len, records)) != {self.record_size}:
            raise ValueError(f"a record here is {self.record_size} bytes")
        buffers = self._buffers
        if at == 0:
            for record in records:
                buffers[record[0]] += record
        else:
            for record in records:
                buffers[record[at]] += record
        self.count += len(records)
        self._unswept += len(records) * self.record_size
        if self._unswept >= _SWEEP_AT:
            self._unswept = 0
            for bucket, buf in enumerate(buffers):
                if len(buf) >= _FLUSH_AT:
                    self._flush(bucket)

    def _flush(self, bucket: int) -> None:
        buf = self._buffers[bucket]
        if not buf:
            return
        try:
            with open(self._path(bucket), "ab") as f:
                f.write(buf)
        except OSError as exc:
            raise StorageError(f"cannot write temporary files for prune/check: {exc}") from None
        buf.clear()

    def read(self, bucket: int) -> bytes:
        """Every record added to ``bucket`` so far, concatenated, in the order added."""
        self._flush(bucket)
        try:
            with open(self._path(bucket), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise StorageError(f"cannot read temporary files for prune/check: {exc}") from None

    def records(self, bucket: int) -> Iterator[bytes]:
        """``read`` split into records."""
        data = self.read(bucket)
        size = self.record_size
        return (data[i : i + size] for i in range(0, len(data), size))

    def close(self) -> None:
        """Remove the files (idempotent)."""
        for bucket in range(self.buckets):
            try:
                os.unlink(self._path(bucket))
            except OSError:
                pass
        self._cleanup()


def _remove(folder: str | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


_ID = struct.Struct("32s")
_FIRST = itemgetter(0)


class IdSet:
    """An exact set of 32-byte blob ids, added in any order, read one id bucket at a time.

    ``add``/``update`` take any number of ids (duplicates are fine); ``bucket(b)`` is
    the set of ids whose first byte is ``b``; ``__contains__`` and ``__len__`` load
    buckets on demand (the last one stays loaded), for tests and small callers.
    """

    def __init__(self, *, folder: str | None = None) -> None:
        self._spill = RecordSpill(32, ID_BUCKETS, folder=folder)
        self._loaded: tuple[int, frozenset[bytes]] | None = None
        self._len: int | None = None

    def add(self, blob_id: bytes) -> None:
        if len(blob_id) != 32:
            raise ValueError("a blob id is 32 bytes")
        self._spill.add(blob_id[0], blob_id)
        self._loaded = None
        self._len = None

    def update(self, blob_ids: Iterable[bytes]) -> None:
        self._spill.add_by_first_byte(blob_ids)  # ValueError for an id not 32 bytes
        self._loaded = None
        self._len = None

    def bucket(self, bucket: int) -> frozenset[bytes]:
        """The ids (each once) whose first byte is ``bucket``."""
        if self._loaded is not None and self._loaded[0] == bucket:
            return self._loaded[1]
        # By ``iter_unpack`` and ``map``, no Python step per id: a slice each made this 8 %
        # of prune's CPU time at 1M blobs (py-spy).
        ids = frozenset(map(_FIRST, _ID.iter_unpack(self._spill.read(bucket))))
        self._loaded = (bucket, ids)
        return ids

    def __contains__(self, blob_id: object) -> bool:
        if not isinstance(blob_id, bytes) or len(blob_id) != 32:
            return False
        return blob_id in self.bucket(blob_id[0])

    def __len__(self) -> int:
        if self._len is None:
            self._len = sum(len(self.bucket(b)) for b in range(ID_BUCKETS))
        return self._len

    def __iter__(self) -> Iterator[bytes]:
        for b in range(ID_BUCKETS):
            yield from self.bucket(b)

    def close(self) -> None:
        self._loaded = None
        self._spill.close()
