"""An in-memory backend: a real backend with the same semantics, for tests.

It keeps the same name rules and size caps as the local backend (store/names.py); a
test plays a hostile storage by writing odd names straight into ``objects``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from casbackup.errors import NotFound, StorageError
from casbackup.store.names import SkippedEntries, check_name, check_size, filter_listing, rule_for


class MemoryBackend:
    def __init__(self, location: str = "memory:") -> None:
        self.location = location
        self.objects: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self.skipped = SkippedEntries()

    def put(self, name: str, data: bytes | memoryview) -> None:
        check_name(name)
        with self._lock:
            self.objects[name] = bytes(data)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        rule = check_name(name)
        with self._lock:
            try:
                data = self.objects[name]
            except KeyError:
                raise NotFound(f"{name} is missing from the repository") from None
        if length is None:
            check_size(name, len(data), rule)
            return data[offset:]
        if offset + length > len(data):
            raise StorageError(
                f"{name} is truncated: wanted {length} bytes at offset {offset}, got {max(0, len(data) - offset)}"
            )
        return data[offset : offset + length]

    def delete(self, name: str) -> None:
        check_name(name)
        with self._lock:
            if self.objects.pop(name, None) is None:
                raise NotFound(f"{name} is missing from the repository")

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        with self._lock:
            items = sorted((n, len(d)) for n, d in self.objects.items() if n.startswith(prefix))
        yield from filter_listing(items, prefix, self.skipped)

    def odd_entries(self, prefix: str = "") -> Iterator[tuple[str, str]]:
        """(name, why) of every object under ``prefix`` whose name the format never writes."""
        with self._lock:
            names = sorted(n for n in self.objects if n.startswith(prefix))
        for name in names:
            if rule_for(name) is None:
                yield name, "is not a name the repository format uses"

    def stat(self, name: str) -> int:
        check_name(name)
        with self._lock:
            try:
                return len(self.objects[name])
            except KeyError:
                raise NotFound(f"{name} is missing from the repository") from None

    def exists(self, name: str) -> bool:
        check_name(name)
        with self._lock:
            return name in self.objects

    def close(self) -> None:
        pass
