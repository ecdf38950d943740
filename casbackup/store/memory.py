"""An in-memory backend: a real backend with the same semantics, for tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from casbackup.errors import NotFound, StorageError


class MemoryBackend:
    def __init__(self, location: str = "memory:") -> None:
        self.location = location
        self.objects: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def put(self, name: str, data: bytes | memoryview) -> None:
        with self._lock:
            self.objects[name] = bytes(data)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._lock:
            try:
                data = self.objects[name]
            except KeyError:
                raise NotFound(f"{name} is missing from the repository") from None
        if length is None:
            return data[offset:]
        if offset + length > len(data):
            raise StorageError(
                f"{name} is truncated: wanted {length} bytes at offset {offset}, got {max(0, len(data) - offset)}"
            )
        return data[offset : offset + length]

    def delete(self, name: str) -> None:
        with self._lock:
            if self.objects.pop(name, None) is None:
                raise NotFound(f"{name} is missing from the repository")

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        with self._lock:
            items = sorted((n, len(d)) for n, d in self.objects.items() if n.startswith(prefix))
        yield from items

    def stat(self, name: str) -> int:
        with self._lock:
            try:
                return len(self.objects[name])
            except KeyError:
                raise NotFound(f"{name} is missing from the repository") from None

    def exists(self, name: str) -> bool:
        with self._lock:
            return name in self.objects

    def close(self) -> None:
        pass
