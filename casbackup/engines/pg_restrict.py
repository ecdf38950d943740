"""A `\\restrict` key that does not change while the script does not: nightly globals dedup.

Since 15.14/16.10/17.6 `pg_dumpall` (and plain-format `pg_dump`) brackets its SQL between
`\\restrict KEY` and `\\unrestrict KEY`, KEY random per run (CVE-2025-8714): while restricted,
`psql` refuses every backslash command, so a malicious superuser of the dumped server who
smuggles `\\! command` into a role's name or comment cannot run it on the machine that
restores the script with `psql -f`. The protection needs only that whoever writes the dumped
content cannot know KEY in advance, or they could end the restriction with a line of their
own, `\\unrestrict KEY`.

A random KEY makes every nightly globals file new (about 1 KB a night, and an unchanged
database never looks unchanged). `StableKeyStream` therefore replaces the tool's random key
with the SHA-256 of the script itself, computed with the tool's own key lines blanked (the
random key is what finds them: the dumped content cannot contain it). The same content gives
the same key, so the file is byte-identical when nothing changed; and the protection stays:
to end the restriction early, content would have to hold the hash of a script that holds that
very content, a fixed point of SHA-256. A constant or per-repository key would not do: a
server's superuser could read it from an earlier file (or `ps`) and plant it.

`--restrict-key` is not used: it would put the key in argv, and older tools (which write no
key) would refuse the option; their output passes through unchanged here.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import replace
from typing import IO

from casbackup.engines.base import DumpInfo, DumpStream
from casbackup.errors import DatabaseError

_SPOOL_MEMORY = 8 << 20  # bytes of a script kept in memory before it spills to a temp file
_FIRST_LINES = 64  # lines of the script in which the tool writes its \restrict line
_RESTRICT = re.compile(rb"\\restrict ([A-Za-z0-9]{1,256})\r?\n")
_DOMAIN = b"casbackup pg restrict key v1\0"  # so the key is no hash of anything else


def _swap_key(line: bytes, key: bytes, new: bytes) -> bytes:
    """`line` with `key` replaced by `new` when it is one of the tool's own key lines
    (`\\restrict KEY`, `\\unrestrict KEY`), else `line` itself."""
    stripped = line.rstrip(b"\r\n")
    for command in (b"\\restrict ", b"\\unrestrict "):
        if stripped == command + key:
            return command + new + line[len(stripped) :]
    return line


class StableKeyStream(DumpStream):
    """A plain SQL dump stream whose `\\restrict` key is derived from its content (see the
    module docstring). The inner stream is read whole into a spool (memory up to 8 MiB,
    then a private temporary file) before the first byte comes out: the key is at the top.
    `finish()` is the inner stream's, with the size of what came out of this one."""

    def __init__(self, inner: DumpStream, what: str) -> None:
        super().__init__()
        self._inner = inner
        self._what = what
        self._spool: IO[bytes] | None = None
        self._key = b""
        self._new = b""
        self._pending = b""  # the rest of a rewritten line the caller's buffer did not take
        self._size = 0
        self._eof = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> IO[bytes]:
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_MEMORY)
        try:
            while chunk := self._inner.read(1 << 20):
                spool.write(chunk)
            spool.seek(0)
            head = [spool.readline() for _ in range(_FIRST_LINES)]
            found = next((m for ln in head if (m := _RESTRICT.fullmatch(ln))), None)
            if found is not None:
                self._key = found.group(1)
                digest = hashlib.sha256(_DOMAIN)
                spool.seek(0)
                for line in spool:
                    digest.update(_swap_key(line, self._key, b""))
                self._new = digest.hexdigest().encode()
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._eof:
            return 0
        if self._spool is None:
            self._spool = self._fill()
        view = memoryview(b)
        if not self._pending:
            line = self._spool.readline()
            if not line:
                self._eof = True
                return 0
            self._pending = self._rewrite(line)
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._size += n
        return n

    def _rewrite(self, line: bytes) -> bytes:
        return _swap_key(line, self._key, self._new) if self._key else line

    def finish(self) -> DumpInfo:
        if not self._eof and self.read(1):
            self.close()
            raise DatabaseError(f"{self._what}: finish() called before the dump was read to EOF")
        info = self._inner.finish()
        return replace(info, size=self._size)

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()
        self._inner.close()
        super().close()
