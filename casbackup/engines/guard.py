"""A third-party database engine behind casbackup's error contract.

An engine plugin (README "Plugins") is another package's code: its ``dump`` may raise
anything, its stream may fail half-way, its ``finish`` may return something that is not a
``DumpInfo``. Each of those reached the user as a traceback. ``GuardedEngine`` wraps such an
engine (never casbackup's own): its ``CasError``s pass through, anything else becomes
``DatabaseError`` (exit 27: the backup fails loudly and saves no snapshot, as for a failed
dump tool) naming the plugin and what it was doing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, TypeVar

from casbackup.engines.base import DatabaseSpec, DumpInfo, DumpStream, RestoreInfo
from casbackup.errors import CasError, DatabaseError

T = TypeVar("T")


def _guarded(engine: str, doing: str, run: Callable[[], T]) -> T:
    try:
        return run()
    except CasError:
        raise
    except Exception as exc:  # noqa: BLE001 - another package's fault, told in one line
        raise DatabaseError(
            f"database engine plugin {engine!r} failed to {doing}: {type(exc).__name__}: {exc}"
        ) from None


class GuardedStream(DumpStream):
    """A plugin's dump stream whose faults are DatabaseError and whose ``finish`` is checked."""

    def __init__(self, inner: Any, engine: str, database: str) -> None:
        super().__init__()
        self._inner, self._engine = inner, engine
        self._doing = f"dump {database!r}"

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = _guarded(self._engine, self._doing, lambda: self._inner.readinto(b))
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= len(b):
            raise DatabaseError(
                f"database engine plugin {self._engine!r} failed to {self._doing}: its stream "
                f"answered {n!r:.40} to a read of {len(b)} bytes"
            )
        return n

    def finish(self) -> DumpInfo:
        info = _guarded(self._engine, self._doing, self._inner.finish)
        if not isinstance(info, DumpInfo):
            raise DatabaseError(
                f"database engine plugin {self._engine!r} failed to {self._doing}: its "
                f"stream's finish() returned {type(info).__name__}, not a DumpInfo"
            )
        return info

    def close(self) -> None:
        try:
            _guarded(self._engine, self._doing, self._inner.close)
        finally:
            super().close()


class GuardedEngine:
    """``inner`` (a plugin's engine named ``name``) with every fault a DatabaseError. Other
    attributes (``file_extension``, ``extra_dumps``) are the plugin's own."""

    def __init__(self, inner: Any, name: str) -> None:
        self.inner, self.name = inner, name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)

    def dump(self, spec: DatabaseSpec) -> DumpStream:
        stream = _guarded(self.name, f"dump {spec.name!r}", lambda: self.inner.dump(spec))
        if not callable(getattr(stream, "readinto", None)):
            raise DatabaseError(
                f"database engine plugin {self.name!r} failed to dump {spec.name!r}: "
                f"dump() returned {type(stream).__name__}, not a stream"
            )
        return GuardedStream(stream, self.name, spec.name)

    def restore(
        self,
        spec: DatabaseSpec,
        stream: BinaryIO,
        *,
        overwrite: bool = False,
        properties: Mapping[str, object] | None = None,
    ) -> RestoreInfo:
        doing = f"restore {spec.name!r}"
        kwargs: dict[str, Any] = {"overwrite": overwrite}
        if properties is not None:
            kwargs["properties"] = properties
        return _guarded(self.name, doing, lambda: self.inner.restore(spec, stream, **kwargs))

    def row_counts(self, spec: DatabaseSpec) -> dict[str, int]:
        doing = f"count the rows of {spec.name!r}"
        return _guarded(self.name, doing, lambda: self.inner.row_counts(spec))

    def drop(self, spec: DatabaseSpec) -> None:
        _guarded(self.name, f"drop {spec.name!r}", lambda: self.inner.drop(spec))

    def check_available(self) -> None:
        _guarded(self.name, "check its tools", self.inner.check_available)


__all__ = ["GuardedEngine", "GuardedStream"]
