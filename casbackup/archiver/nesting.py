"""Walking nested folders to any depth without recursion on the Python stack.

A folder 1,000 levels deep is legal on every Unix file system, and Python's recursion
limit (1,000 frames by default) would stop a recursive walk with a ``RecursionError``
there, losing the whole backup. So each level of a walk is written as a generator:
where a recursive walk would call itself for a subfolder, it yields the generator for
that subfolder and is sent its result back. ``drive`` keeps the generators on a list,
so depth costs heap memory (one suspended frame per open folder), never stack.

Exceptions behave as in the recursive form: one raised in a subfolder's generator is
thrown into its parent's at the ``yield``, so ``try``/``finally`` blocks around the
descent run in the same order.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

T = TypeVar("T")
# A level of a walk: yields the levels below it, is sent each one's result, returns its own.
Level = Generator["Level[Any]", Any, T]


def drive(top: Level[T]) -> T:
    """Run ``top`` and every level it yields, depth first; return ``top``'s result.

    Raises whatever ``top`` raises (including what a deeper level raised and no level
    above it caught).
    """
    stack: list[Level[Any]] = [top]
    value: Any = None
    error: BaseException | None = None
    while True:
        current = stack[-1]
        try:
            if error is not None:
                thrown, error = error, None
                child = current.throw(thrown)
            else:
                child = current.send(value)
        except StopIteration as stop:
            stack.pop()
            if not stack:
                return stop.value  # type: ignore[no-any-return]
            value = stop.value
            continue
        except BaseException as exc:  # noqa: BLE001 - handed to the level above, as a raise would be
            stack.pop()
            if not stack:
                raise
            error = exc
            continue
        stack.append(child)
        value = None
