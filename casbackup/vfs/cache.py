"""A thread-safe LRU cache bounded by the total weight (bytes) of its values.

Loads go through :meth:`WeightedLru.get_or_load`, which lets only one thread load a
given key while the others wait for its result: the kernel's read-ahead sends
several reads for the same chunk at once, and decrypting it once is the point.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class _Flight:
    """One load in progress; waiters block on ``done`` and then read the outcome."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: object = None
        self.error: BaseException | None = None


class WeightedLru(Generic[V]):
    def __init__(self, capacity: int, weigh: Callable[[V], int]) -> None:
        self.capacity = capacity
        self._weigh = weigh
        self._items: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()
        self.weight = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item[0]

    def put(self, key: Hashable, value: V) -> None:
        weight = self._weigh(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.weight -= old[1]
            if weight > self.capacity:
                return  # bigger than the whole cache: caching it would only evict everything
            self._items[key] = (value, weight)
            self.weight += weight
            while self.weight > self.capacity:
                _, (_, dropped) = self._items.popitem(last=False)
                self.weight -= dropped

    def __contains__(self, key: Hashable) -> bool:
        """Whether ``key`` is cached or being loaded (no hit or miss is counted)."""
        with self._lock:
            return key in self._items or key in self._flights

    def get_or_load(self, key: Hashable, load: Callable[[], V]) -> V:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return item[0]
            self.misses += 1
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value  # type: ignore[return-value]
        try:
            value = load()
        except BaseException as exc:
            flight.error = exc
            raise
        else:
            flight.value = value
            self.put(key, value)
            return value
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
