"""One retry policy for every backend: transient failures are asked again, bounded.

A ``TransientStorageError`` (timeouts, 5xx, throttling, connection resets: store/s3.py
classifies them) is retried with exponential backoff and full jitter (a random wait in
``[0, min(cap, base * 2**attempt)]``, so clients that failed together do not retry
together). Anything else (NotFound, a permanent StorageError such as 403 or no such
bucket, an invalid name) passes through at once. When the attempts run out the last
error is raised with how many attempts were made, on one line.

Idempotence: every operation of the Backend protocol is safe to repeat, with two
subtleties handled here. A ``delete`` whose first attempt reached the server but whose
answer was lost meets NotFound on the retry: that is success. A ``put_new`` (create-only
write) whose first attempt was stored meets "already exists" on the retry: lock names
are 128 random bits, so the object is ours and that too is success.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from casbackup.errors import NotFound, TransientStorageError, UsageError
from casbackup.store import stopping
from casbackup.store.base import Backend

T = TypeVar("T")


class RetryingBackend:
    """A backend wrapper that retries transient failures (see the module docstring).

    ``attempts`` bounds the tries per operation (first one included); ``base`` and
    ``cap`` are the backoff's first and largest wait in seconds; ``sleep`` is injectable
    so tests need not wait.
    """

    def __init__(
        self,
        inner: Backend,
        *,
        attempts: int = 7,
        base: float = 0.25,
        cap: float = 15.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.inner = inner
        self.location = inner.location
        self.skipped = inner.skipped
        self.attempts = max(1, attempts)
        self.base, self.cap = base, cap
        self._sleep = sleep
        self.fork_safe = getattr(inner, "fork_safe", True)
        self.remote = getattr(inner, "remote", False)
        self.retries = 0  # transient failures retried in this run (for logs and bench/)
        if hasattr(inner, "modified"):
            self.modified = lambda name: self._retry(lambda: inner.modified(name))  # type: ignore[attr-defined]

    def _retry(
        self, fn: Callable[[], T], *, after_failure: Callable[[Exception], T] | None = None
    ) -> T:
        failed = False
        for attempt in range(self.attempts):
            try:
                return fn()
            except TransientStorageError as exc:
                failed = True
                if stopping.abandoned():
                    raise  # no one waits for this answer any more (store/stopping.py)
                if attempt + 1 >= self.attempts:
                    raise TransientStorageError(
                        f"{exc.message} (gave up after {self.attempts} attempts)"
                    ) from None
                self.retries += 1
                self._sleep(random.uniform(0, min(self.cap, self.base * 2**attempt)))
            except Exception as exc:
                if failed and after_failure is not None:
                    return after_failure(exc)
                raise
        raise AssertionError("unreachable")

    def put(self, name: str, data: bytes | memoryview) -> None:
        self._retry(lambda: self.inner.put(name, data))

    def put_new(self, name: str, data: bytes | memoryview) -> bool:
        """Create-only write where the inner backend has one (else a plain put, True)."""
        create = getattr(self.inner, "put_new", None)
        if create is None:
            self.put(name, data)
            return True
        first = [True]

        def attempt() -> bool:
            created = bool(create(name, data))
            if not created and not first[0]:
                return True  # our earlier attempt was stored; its answer was lost
            first[0] = False
            return created

        def once() -> bool:
            try:
                return attempt()
            except TransientStorageError:
                first[0] = False
                raise

        return self._retry(once)

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        return self._retry(lambda: self.inner.get(name, offset, length))

    def delete(self, name: str) -> None:
        def gone(exc: Exception) -> None:
            if isinstance(exc, NotFound):
                return None  # the lost attempt deleted it
            raise exc

        self._retry(lambda: self.inner.delete(name), after_failure=gone)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """The whole listing, retried as one (a listing that fails midway starts again)."""
        yield from self._retry(lambda: list(self.inner.list(prefix)))

    def odd_entries(self, prefix: str = "") -> Iterator[tuple[str, str]]:
        scan = getattr(self.inner, "odd_entries", None)
        if scan is None:
            return iter(())
        return iter(self._retry(lambda: list(scan(prefix))))

    def stat(self, name: str) -> int:
        return self._retry(lambda: self.inner.stat(name))

    def exists(self, name: str) -> bool:
        return self._retry(lambda: self.inner.exists(name))

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, attr: str) -> Any:
        # Counters and other read-only extras of the inner backend (``requests``).
        if attr in ("requests",):
            return getattr(self.inner, attr)
        raise AttributeError(attr)


def retry_settings() -> dict[str, float]:
    """``attempts`` and ``base`` from CASBACKUP_S3_RETRIES (1-50 tries) and
    CASBACKUP_S3_RETRY_BASE (seconds, 0-60); the defaults when unset. UsageError otherwise."""
    out: dict[str, float] = {}
    for var, key, low, high in (("CASBACKUP_S3_RETRIES", "attempts", 1, 50),
                                ("CASBACKUP_S3_RETRY_BASE", "base", 0, 60)):  # fmt: skip
        raw = os.environ.get(var)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            raise UsageError(f"{var}={raw!r} is not a number") from None
        if not low <= value <= high:
            raise UsageError(f"{var}={raw!r} is outside {low}..{high}")
        out[key] = value
    return out
