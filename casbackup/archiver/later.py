"""A result that arrives later, for the hundreds of thousands of files a backup waits on.

``concurrent.futures.Future`` builds a Condition (a lock and a waiter list) per
instance: with one per file it was a visible share of a small-files backup. ``Later``
keeps the part of that API the pipeline uses and shares one Condition per backup.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Later(Generic[T]):
    __slots__ = ("_cond", "_done", "_value", "_error", "_callbacks")

    def __init__(self, cond: threading.Condition) -> None:
        self._cond = cond
        self._done = False
        self._value: T | None = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Later[T]], None]] | None = None

    def done(self) -> bool:
        return self._done

    def result(self) -> T:
        """The value (waiting for it), or raise the error it was settled with."""
        if not self._done:
            with self._cond:
                while not self._done:
                    self._cond.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def set_result(self, value: T) -> None:
        self._settle(value, None)

    def set_exception(self, error: BaseException) -> None:
        self._settle(None, error)

    def _settle(self, value: T | None, error: BaseException | None) -> None:
        with self._cond:
            if self._done:
                raise RuntimeError("a result was settled twice")
            self._value, self._error = value, error
            self._done = True
            callbacks, self._callbacks = self._callbacks, None
            self._cond.notify_all()
        for fn in callbacks or ():
            fn(self)

    def add_done_callback(self, fn: Callable[[Later[T]], None]) -> None:
        """Call ``fn(self)`` once settled: now if it is, else on the settling thread."""
        with self._cond:
            if not self._done:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        fn(self)


def settle_all(
    cond: threading.Condition, items: list[tuple[Later[T], T | None, BaseException | None]]
) -> None:
    """Settle many Laters sharing ``cond`` (value, or error when not None) at once.

    One lock round and one wake-up for a whole batch of files instead of one each: the
    receiver threads settle every file of a small-files backup, under the walker's GIL.
    Callbacks run after the lock is released, on this thread. Raises RuntimeError if
    one was settled already (a bug).
    """
    pending: list[tuple[Later[T], list[Callable[[Later[T]], None]]]] = []
    with cond:
        for later, value, error in items:
            if later._done:
                raise RuntimeError("a result was settled twice")
            later._value, later._error = value, error
            later._done = True
            if later._callbacks is not None:
                pending.append((later, later._callbacks))
                later._callbacks = None
        cond.notify_all()
    for later, fns in pending:
        for fn in fns:
            fn(later)
