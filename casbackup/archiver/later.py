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
