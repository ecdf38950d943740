"""A backend decorator that misbehaves on a script: the fault-injecting backend of STYLE.md.

Wraps any backend and, following a :class:`FaultScript`, fails the Nth put with a
``StorageError``, "kills the process" after N puts (raises :class:`ProcessDeath`, a
``BaseException`` so no ``except Exception`` handler in the code under test can swallow
it, just as nothing runs after SIGKILL), flips one bit of matching objects as ``get``
sees them (damage at rest: every read that covers the bit sees it), or makes matching objects look
truncated (short ``stat``/``list`` sizes, short reads, ranged reads past the new end
fail). Every call is counted, so tests can also assert how often something was read.
"""

from __future__ import annotations

import fnmatch
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from casbackup.errors import StorageError
from casbackup.store.base import Backend, is_remote
from casbackup.store.names import SkippedEntries


class ProcessDeath(BaseException):
    """The simulated process died: raised instead of the put, nothing of it is written."""


@dataclass(frozen=True)
class FaultScript:
    # 1-based numbers of the puts (counting every put) that raise StorageError.
    fail_puts: frozenset[int] = frozenset()
    # Only puts whose name matches this glob count towards fail_puts ("*" = all).
    fail_puts_matching: str = "*"
    # After this many successful puts, every further put raises ProcessDeath.
    crash_after_puts: int | None = None
    # Flip bit ``flip_bit`` (mod the object's size) of matching objects: whole and ranged
    # reads that cover it see it flipped, reads elsewhere in the object see clean bytes.
    flip_on_get: str | None = None
    flip_bit: int = 0
    # Matching objects look ``truncate_by`` bytes shorter than they are.
    truncate_on_get: str | None = None
    truncate_by: int = 1


@dataclass
class FaultyBackend:
    inner: Backend
    script: FaultScript = field(default_factory=FaultScript)
    counts: Counter[str] = field(default_factory=Counter)  # operation -> calls
    gets: Counter[str] = field(default_factory=Counter)  # object name -> get calls
    puts: list[str] = field(default_factory=list)  # names successfully put, in order
    #: Stand in for an object store (tests of the readers' object-store paths on a folder).
    pretend_remote: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _matching_puts: int = 0

    @property
    def location(self) -> str:
        return self.inner.location

    @property
    def skipped(self) -> SkippedEntries:
        return self.inner.skipped

    @property
    def remote(self) -> bool:
        """The inner backend's (store/base.is_remote): faults change answers, not where
        the store is, so the readers choose as they would for it."""
        return self.pretend_remote or is_remote(self.inner)

    def put(self, name: str, data: bytes | memoryview) -> None:
        s = self.script
        with self._lock:
            self.counts["put"] += 1
            if s.crash_after_puts is not None and len(self.puts) >= s.crash_after_puts:
                raise ProcessDeath(f"simulated crash before writing {name}")
            if fnmatch.fnmatchcase(name, s.fail_puts_matching):
                self._matching_puts += 1
                if self._matching_puts in s.fail_puts:
                    raise StorageError(f"writing {name}: injected failure")
        self.inner.put(name, data)
        with self._lock:
            self.puts.append(name)

    def _size(self, name: str, real: int) -> int:
        pattern = self.script.truncate_on_get
        if pattern is not None and fnmatch.fnmatchcase(name, pattern):
            return max(0, real - self.script.truncate_by)
        return real

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            self.counts["get"] += 1
            self.gets[name] += 1
        if self.script.truncate_on_get is not None and fnmatch.fnmatchcase(
            name, self.script.truncate_on_get
        ):
            size = self._size(name, self.inner.stat(name))
            if length is None:
                data = self.inner.get(name)[offset:size]
            elif offset + length > size:
                raise StorageError(f"{name} is truncated: wanted {length} bytes at offset {offset}")
            else:
                data = self.inner.get(name, offset, length)
        else:
            data = self.inner.get(name, offset, length)
        pattern = self.script.flip_on_get
        if data and pattern is not None and fnmatch.fnmatchcase(name, pattern):
            data = self._flip(name, offset, data)
        return data

    def _flip(self, name: str, offset: int, data: bytes) -> bytes:
        # A position in the object, not in this read, so that reading a pack in pieces
        # finds the same one damaged byte as reading it whole.
        size = self._size(name, self.inner.stat(name))
        bit = self.script.flip_bit % (size * 8) - offset * 8
        if not 0 <= bit < len(data) * 8:
            return data
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        return bytes(damaged)

    def delete(self, name: str) -> None:
        self.counts["delete"] += 1
        self.inner.delete(name)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        self.counts["list"] += 1
        for name, size in self.inner.list(prefix):
            yield name, self._size(name, size)

    def odd_entries(self, prefix: str = "") -> Iterator[tuple[str, str]]:
        self.counts["odd_entries"] += 1
        return self.inner.odd_entries(prefix)

    def stat(self, name: str) -> int:
        self.counts["stat"] += 1
        return self._size(name, self.inner.stat(name))

    def exists(self, name: str) -> bool:
        self.counts["exists"] += 1
        return self.inner.exists(name)

    def close(self) -> None:
        self.inner.close()
