"""A Bloom filter over the index cache's blob ids, so new chunks skip the B-tree.

A first backup into a repository that already indexes millions of blobs asks the
index about every chunk it reads; nearly all are new. In LMDB each such question
walks to a random leaf page: with 5 million entries (about 700 MiB of pages) a cold
page each time, which made that backup 1.65x slower than into an empty repository.
This filter answers "certainly not there" from 10 bits per blob held in one file
(8 MiB for 5 million), and only a "maybe" goes on to LMDB.

Kept beside the LMDB files in the local cache, never in the repository. Its header
records how many LMDB entries it covers; an index cache whose count differs (a crash
between the two, another program) gets the filter rebuilt from LMDB's keys. Bits are
set before the entries are committed, so the filter may hold too much, never too
little: a false "maybe" costs one look-up, a false "no" would store a chunk twice.

Long-lived readers (the service, ``mount``) keep their map while backups in other processes
write. A rebuild replaces the file (a new inode: the old map no longer sees new bits), and a
writer without a filter adds entries the file does not cover; so the index cache confirms
every "no" (only those: a "maybe" goes to LMDB anyway) against the file's identity and its
covered count, reloading or asking LMDB when either changed (repo/indexcache.py).

Layout: magic ``CBBF`` | version u8 = 1 | log2 of the bit count u8 | 2 bytes zero |
covered entries u64 little-endian | 16 bytes zero | the bits (bit ``h`` is bit
``h & 7`` of byte ``h >> 3``). Probes: the first 7 little-endian u32 of the blob id
(a keyed BLAKE3 hash, so uniform), each masked to the bit count.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections.abc import Iterable

MAGIC = b"CBBF"
VERSION = 1
HEADER = struct.Struct("<4sBB2xQ16x")  # 32 bytes
PROBES = 7
BITS_PER_ID = 10  # with 7 probes: about 1% of absent ids answer "maybe"
MIN_LOG2 = 23  # 1 MiB of bits
# The share of bits set when a filter holds its capacity of ids (about 0.5): false "maybe"s
# are about that share to the power PROBES (0.8 %). A filter kept across a rebuild
# (repo/indexcache.py) keeps the bits of ids no longer indexed: past this it is made anew.
FULL_FILL = 1 - math.exp(-PROBES / BITS_PER_ID)
_PROBE = struct.Struct("<7I")


class BlobFilter:
    """An open filter file; ``writable`` in the process that adds to the index cache."""

    def __init__(self, path: str, *, writable: bool) -> None:
        fd = os.open(path, os.O_RDWR if writable else os.O_RDONLY)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER.size:
                raise ValueError("not a blob filter: too short")
            access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
            self._map = mmap.mmap(fd, size, access=access)
            st = os.fstat(fd)
            # Which file this map is: another process that rebuilds the filter replaces the
            # file (``create``), and a long-lived reader must notice (see ``is_current``).
            self.identity = (st.st_dev, st.st_ino)
        finally:
            os.close(fd)
        magic, version, log2, _ = HEADER.unpack_from(self._map, 0)
        if magic != MAGIC or version != VERSION or size != HEADER.size + (1 << log2) // 8:
            self._map.close()
            raise ValueError("not a blob filter of this version")
        self._mask = (1 << log2) - 1
        self.capacity = (1 << log2) // BITS_PER_ID

    @classmethod
    def create(cls, path: str, capacity: int) -> BlobFilter:
        """An empty filter for ``capacity`` ids, replacing any file at ``path``."""
        log2 = max(MIN_LOG2, (max(1, capacity) * BITS_PER_ID - 1).bit_length())
        tmp = f"{path}.tmp-{os.urandom(6).hex()}"
        # Private, as the rest of the index cache (repo/indexcache.py CACHE_FILE_MODE), and a
        # fresh name that no link planted beforehand can redirect.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(tmp, flags, 0o600), "wb") as f:
            f.write(HEADER.pack(MAGIC, VERSION, log2, 0))
            f.truncate(HEADER.size + (1 << log2) // 8)  # sparse zeros
        os.replace(tmp, path)
        return cls(path, writable=True)

    @property
    def covered(self) -> int:
        return int(HEADER.unpack_from(self._map, 0)[3])

    def set_covered(self, entries: int) -> None:
        magic, version, log2, _ = HEADER.unpack_from(self._map, 0)
        HEADER.pack_into(self._map, 0, magic, version, log2, entries)

    def add(self, blob_ids: Iterable[bytes]) -> None:
        bits, mask, base = self._map, self._mask, HEADER.size
        for blob_id in blob_ids:
            for h in _PROBE.unpack_from(blob_id):
                h &= mask
                bits[base + (h >> 3)] |= 1 << (h & 7)

    def might_contain(self, blob_id: bytes) -> bool:
        bits, mask, base = self._map, self._mask, HEADER.size
        for h in _PROBE.unpack_from(blob_id):
            h &= mask
            if not bits[base + (h >> 3)] >> (h & 7) & 1:
                return False
        return True

    def fill(self) -> float:
        """The share of the bits that are set, 0.0 to 1.0 (one pass over the map: about
        20 ms for 16 MiB)."""
        ones = int.from_bytes(self._map[HEADER.size :], "little").bit_count()
        return ones / (self._mask + 1)

    def is_current(self, path: str) -> bool:
        """Whether ``path`` still names the file this filter maps (False once another
        process replaced it by a rebuilt one, or removed it). One ``stat``."""
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.identity

    def close(self) -> None:
        self._map.close()
