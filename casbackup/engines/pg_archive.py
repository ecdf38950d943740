"""Is a `pg_dump --format=custom` stream whole? A check that reads it as it goes by.

A custom dump has no trailer to look for: written to a pipe, it is a header, the table of
contents (TOC), then one data block per TOC entry that has data (a table's rows, the large
objects), and it simply ends after the last one. A dump cut short anywhere (a wrapper that
stops copying, a pipe that broke while the tool still exited 0) still begins with `PGDMP`;
only its structure says it is short. `CustomDumpCheck` follows that structure byte by byte
while the dump streams into the repository, in bounded memory (one TOC string or chunk
header at a time), and `finish()` fails unless the stream ended exactly after the last
block and every TOC entry with data had its block.

The layout (PostgreSQL's pg_backup_archiver.c and pg_backup_custom.c), for archive versions
1.10 to 1.16 (pg_dump 8.4 to 18):
- header: `PGDMP`, version bytes (major, minor, revision), int size, offset size, format (1
  = custom); compression (1.15+: an algorithm byte; older: an int level); the creation time
  as 7 ints; the database name, the server's and pg_dump's versions as strings.
- TOC: an int count, then per entry: int dump id, int had-data, strings (table oid, oid,
  tag, desc), int section (1.11+), strings (defn, drop, copy, namespace, tablespace,
  table access method 1.14+), int relkind (1.16+), strings (owner, "false"), dependency
  strings up to a NULL one, then the data state byte (1 or 2: has data, 3: none) and an
  offset of `offset size` bytes.
- data: per block, a type byte (1 table data, 3 large objects), the int dump id, then
  chunks (int length, bytes) up to a zero length; large objects are (int oid, chunks) up to
  a zero oid.
- int: a sign byte, then `int size` bytes little-endian; string: an int length (-1 for
  NULL), then the bytes.

An archive version this module does not know (a newer pg_dump) is checked for its header
only, never refused: a dump must not fail because the tool is newer than casbackup.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Generator

from casbackup.errors import DatabaseError

MAGIC = b"PGDMP"
_FIRST_KNOWN = (1, 10)
_LAST_KNOWN = (1, 16)
_FORMAT_CUSTOM = 1
_BLK_DATA, _BLK_BLOBS = 1, 3
_HAS_DATA = (1, 2)  # K_OFFSET_POS_NOT_SET, K_OFFSET_POS_SET; 3 is K_OFFSET_NO_DATA
_MAX_STRING = 1 << 30  # bytes: pg_dump writes no TOC string longer (a view or function body)
_MAX_ENTRIES = 1 << 24

# What the parser asks of `feed`: (READ, n) the next n bytes, sent back as `bytes`;
# (CHUNKS, 0) the chunk sequence of a data block up to its zero length, consumed by feed's
# own loop (it is most of a dump: one chunk per row), which then sends back None.
_READ, _CHUNKS = 0, 1
_Request = tuple[int, int]


class CustomDumpCheck:
    """Follows a custom-format dump fed to it piece by piece (`feed`), and says at the end
    whether it was whole (`finish`). `what` names the dump in errors ("database 'shop'").

    `feed(data)`: bytes of the dump, in order, any piece sizes; never raises (a malformed
    stream is remembered and reported by `finish`). `finish()`: raises DatabaseError when the
    stream ended early, held something after its last block, or is no custom dump.
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._buf = bytearray()
        self._problem: str | None = None
        self._done = False
        self._int_size = 4
        self._unpack = _int_reader(4)
        self._in_chunks = False  # inside a data block's chunk sequence
        self._skip = 0  # bytes of the current chunk still to pass over
        self._len_buf = bytearray()  # a chunk length split between two pieces
        self._unknown = False  # an archive version this module does not know
        self._parser = self._parse()
        self._request: _Request | None = self._advance(None)

    # --- feeding ---------------------------------------------------------------------------

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        pos, n = 0, len(view)
        while pos < n and self._problem is None and not self._unknown:
            if self._done:
                self._problem = "bytes after the last data block"
                return
            if self._in_chunks:
                pos = self._chunks(view, pos, n)
                continue
            assert self._request is not None
            want = self._request[1] - len(self._buf)
            take = min(want, n - pos)
            self._buf += view[pos : pos + take]
            pos += take
            if len(self._buf) == self._request[1]:
                piece = bytes(self._buf)
                self._buf.clear()
                self._request = self._advance(piece)

    def _chunks(self, view: memoryview, pos: int, n: int) -> int:
        """Pass over a block's chunks from view[pos:]; the position where feed goes on."""
        size = self._int_size + 1
        unpack = self._unpack
        while pos < n:
            if self._skip:
                take = min(self._skip, n - pos)
                self._skip -= take
                pos += take
                continue
            if self._len_buf or n - pos < size:
                take = min(size - len(self._len_buf), n - pos)
                self._len_buf += view[pos : pos + take]
                pos += take
                if len(self._len_buf) < size:
                    return pos
                sign, length = unpack(self._len_buf)
                self._len_buf = bytearray()
            else:
                # The hot loop: one chunk per row of a table. Short chunks are passed over
                # here without going round the outer loop.
                sign, length = unpack(view, pos)
                pos += size
                while not sign and length and pos + length + size <= n:
                    pos += length
                    sign, length = unpack(view, pos)
                    pos += size
            if sign:  # pg_dump never writes a negative length
                self._problem = "a data chunk of negative length"
                return n
            if length == 0:
                self._in_chunks = False
                self._request = self._advance(None)
                return pos
            self._skip = length
        return pos

    def _advance(self, piece: bytes | None) -> _Request | None:
        """Send the parser what it asked for; its next request (None when it is done)."""
        try:
            request = self._parser.send(piece)  # the first send(None) starts it
        except StopIteration:
            self._done = True
            return None
        except _Malformed as exc:
            self._problem = str(exc)
            self._done = True
            return None
        if request[0] == _CHUNKS:
            self._in_chunks = True
        return request

    # --- the structure ---------------------------------------------------------------------

    def _parse(self) -> Generator[_Request, bytes | None, None]:
        head = yield (_READ, len(MAGIC) + 3)
        assert head is not None
        if head[: len(MAGIC)] != MAGIC:
            raise _Malformed("no custom-format header")
        version = (head[5], head[6])
        if not _FIRST_KNOWN <= version <= _LAST_KNOWN:
            self._unknown = True  # feed() stops here: the header is all that is checked
            return
        sizes = yield (_READ, 3)
        assert sizes is not None
        self._int_size, off_size, fmt = sizes
        self._unpack = _int_reader(self._int_size)
        if not 1 <= self._int_size <= 8 or not 1 <= off_size <= 16 or fmt != _FORMAT_CUSTOM:
            raise _Malformed("a header that is not a custom dump's")
        if version >= (1, 15):
            yield (_READ, 1)  # compression algorithm
        else:
            yield from self._int()  # compression level
        for _ in range(7):  # creation time
            yield from self._int()
        for _ in range(3):  # database name, server version, pg_dump version
            yield from self._str()
        count = yield from self._int()
        if not 0 <= count <= _MAX_ENTRIES:
            raise _Malformed(f"a table of contents of {count} entries")
        expected: list[int] = []
        for _ in range(count):
            dump_id = yield from self._int()
            yield from self._int()  # had a data dumper
            for _ in range(4):  # table oid, oid, tag, desc
                yield from self._str()
            if version >= (1, 11):
                yield from self._int()  # section
            for _ in range(5 + (version >= (1, 14))):  # defn .. tablespace [, table AM]
                yield from self._str()
            if version >= (1, 16):
                yield from self._int()  # relkind
            yield from self._str()  # owner
            yield from self._str()  # "false" (with oids)
            while (yield from self._str()) is not None:
                pass  # dependencies, up to a NULL string
            state = yield (_READ, 1 + off_size)
            assert state is not None
            if state[0] in _HAS_DATA:
                expected.append(dump_id)
            elif state[0] != 3:
                raise _Malformed(f"a table of contents entry with data state {state[0]}")
        for dump_id in expected:
            kind = yield (_READ, 1)
            assert kind is not None
            if kind[0] not in (_BLK_DATA, _BLK_BLOBS):
                raise _Malformed(f"a data block of unknown type {kind[0]}")
            block_id = yield from self._int()
            if block_id != dump_id:
                raise _Malformed(f"data block {block_id} where block {dump_id} belongs")
            if kind[0] == _BLK_DATA:
                yield (_CHUNKS, 0)
                continue
            while (yield from self._int()) != 0:  # large objects: oid, chunks; oid 0 ends
                yield (_CHUNKS, 0)

    def _int(self) -> Generator[_Request, bytes | None, int]:
        raw = yield (_READ, self._int_size + 1)
        assert raw is not None
        sign, value = self._unpack(raw)
        return -value if sign else value

    def _str(self) -> Generator[_Request, bytes | None, bytes | None]:
        length = yield from self._int()
        if length < 0:
            return None
        if length > _MAX_STRING:
            raise _Malformed(f"a table of contents string of {length} bytes")
        if length == 0:
            return b""
        return (yield (_READ, length))

    # --- the verdict -----------------------------------------------------------------------

    def finish(self) -> None:
        """Raise DatabaseError unless everything fed was one whole custom dump."""
        if self._problem is not None:
            raise DatabaseError(
                f"{self._what}: pg_dump output is not a whole custom dump ({self._problem})"
            )
        if self._unknown:
            return
        if not self._done:
            raise DatabaseError(
                f"{self._what}: pg_dump output ends before the dump does (truncated)"
            )


def _int_reader(int_size: int) -> Callable[..., tuple[int, int]]:
    """unpack_from(buffer, offset=0) -> (sign byte, magnitude) of an archive int."""
    code = {1: "B", 2: "H", 4: "I", 8: "Q"}.get(int_size)
    if code is not None:
        return struct.Struct("<B" + code).unpack_from

    def unpack(buf: bytes | bytearray | memoryview, offset: int = 0) -> tuple[int, int]:
        raw = bytes(buf[offset : offset + int_size + 1])
        return raw[0], int.from_bytes(raw[1:], "little")

    return unpack


class _Malformed(Exception):
    """The stream is no custom dump at this point (internal to the parser)."""
