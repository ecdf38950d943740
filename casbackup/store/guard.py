"""A third-party storage backend behind casbackup's error contract.

A backend plugin (README "Plugins") is another package's code: it may raise anything
(``RuntimeError``, ``KeyError``, a library's own exceptions) where the protocol says
``NotFound``/``StorageError``, return what the protocol does not allow (``None`` from
``get``, a short range, a listing of non-names), or not be a backend at all. Every one of
those used to reach the user as a traceback. ``GuardedBackend`` wraps such a backend (never
casbackup's own, which keep the contract and are tested for it): the plugin's own
``CasError``s pass through, ``OSError`` and any other exception become ``StorageError``
(exit 25) naming the plugin, the operation and the object, and each answer is checked for
its type (and a ranged ``get`` for its length) before anyone uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from casbackup.errors import CasError, StorageError
from casbackup.store.names import SkippedEntries

T = TypeVar("T")

REQUIRED = ("put", "get", "delete", "list", "stat", "exists", "close")


class GuardedBackend:
    """``inner`` (a backend plugin's object for ``scheme``) with every fault one line.

    Raises StorageError at once when ``inner`` lacks a protocol method or a ``location``."""

    def __init__(self, inner: Any, scheme: str) -> None:
        self.inner, self.scheme = inner, scheme
        missing = [m for m in REQUIRED if not callable(getattr(inner, m, None))]
        location = getattr(inner, "location", None)
        if missing or not isinstance(location, str):
            what = ", ".join(missing) if missing else "location"
            raise StorageError(
                f"storage plugin {scheme!r} returned {type(inner).__name__}, not a backend "
                f"(missing: {what})"
            )
        self.location: str = location
        skipped = getattr(inner, "skipped", None)
        self.skipped = skipped if isinstance(skipped, SkippedEntries) else SkippedEntries()
        self.fork_safe = bool(getattr(inner, "fork_safe", True))
        self.remote = bool(getattr(inner, "remote", False))
        # Optional extras, offered only when the plugin has them (callers look them up).
        if callable(put_new := getattr(inner, "put_new", None)):
            self.put_new = lambda name, data: bool(
                self._call("put", name, lambda: put_new(name, data))
            )
        if callable(modified := getattr(inner, "modified", None)):
            self.modified = lambda name: float(self._call("stat", name, lambda: modified(name)))

    def _call(self, op: str, name: str, run: Callable[[], T]) -> T:
        try:
            return run()
        except CasError:
            raise
        except OSError as exc:
            raise StorageError(
                f"storage plugin {self.scheme!r}: {op} {name}: {exc.strerror or exc}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - another package's fault, told in one line
            raise StorageError(
                f"storage plugin {self.scheme!r} failed to {op} {name}: {type(exc).__name__}: {exc}"
            ) from None

    def _lie(self, op: str, name: str, what: str) -> StorageError:
        return StorageError(f"storage plugin {self.scheme!r}: {op} {name} returned {what}")

    def put(self, name: str, data: bytes | memoryview) -> None:
        self._call("put", name, lambda: self.inner.put(name, data))

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        data = self._call("get", name, lambda: self.inner.get(name, offset, length))
        if not isinstance(data, bytes | bytearray | memoryview):
            raise self._lie("get", name, type(data).__name__)
        if length is not None and len(data) != length:
            raise self._lie("get", name, f"{len(data)} bytes instead of {length}")
        return bytes(data)

    def delete(self, name: str) -> None:
        self._call("delete", name, lambda: self.inner.delete(name))

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        entries = iter(self._call("list", prefix or "/", lambda: self.inner.list(prefix)))
        end = object()
        while True:
            entry = self._call("list", prefix or "/", lambda: next(entries, end))
            if entry is end:
                return
            if not (
                isinstance(entry, tuple)
                and len(entry) == 2
                and isinstance(entry[0], str)
                and isinstance(entry[1], int)
            ):
                raise self._lie("list", prefix or "/", f"{entry!r:.80}, not (name, size)")
            yield entry

    def stat(self, name: str) -> int:
        size = self._call("stat", name, lambda: self.inner.stat(name))
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise self._lie("stat", name, f"{size!r:.80}, not a size")
        return size

    def exists(self, name: str) -> bool:
        return bool(self._call("exists", name, lambda: self.inner.exists(name)))

    def odd_entries(self, prefix: str = "") -> Iterator[tuple[str, str]]:
        scan = getattr(self.inner, "odd_entries", None)
        if scan is None:
            return iter(())
        return iter(self._call("list", prefix or "/", lambda: list(scan(prefix))))

    def close(self) -> None:
        self._call("close", self.location, self.inner.close)
