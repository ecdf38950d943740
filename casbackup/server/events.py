"""Server-sent events: job created / progress / finished, fanned out to every listener.

Jobs publish from worker threads; listeners are asyncio queues on the event loop, so publishing
hops onto the loop with ``call_soon_threadsafe``. Each event has an increasing id; the last
``BACKLOG`` are kept so a client that reconnects with ``Last-Event-ID`` misses nothing recent.
A listener that falls ``QUEUE_LIMIT`` events behind is dropped (its stream ends; the browser's
EventSource reconnects and replays from the backlog) instead of growing memory without bound.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

BACKLOG = 1000
QUEUE_LIMIT = 1000


@dataclass(frozen=True)
class Event:
    id: int
    type: str  # job.created | job.progress | job.finished | job.log
    data: dict[str, Any]
    app: str | None  # for filtering by what the listener may see

    def encode(self) -> str:
        return f"id: {self.id}\nevent: {self.type}\ndata: {json.dumps(self.data, separators=(',', ':'))}\n\n"


class Listener:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()


class EventBus:
    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._backlog: deque[Event] = deque(maxlen=BACKLOG)
        self._listeners: set[Listener] = set()
        self._lock = threading.Lock()

    def publish(self, type_: str, data: dict[str, Any], app: str | None = None) -> Event:
        with self._lock:
            event = Event(next(self._ids), type_, data, app)
            self._backlog.append(event)
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener.loop.call_soon_threadsafe(self._deliver, listener, event)
            except RuntimeError:  # the loop is closed: the listener is gone
                self.unsubscribe(listener)
        return event

    def _deliver(self, listener: Listener, event: Event) -> None:
        if listener.queue.qsize() >= QUEUE_LIMIT:
            self.unsubscribe(listener)
            listener.queue.put_nowait(None)
            return
        listener.queue.put_nowait(event)

    def subscribe(self, after_id: int | None = None) -> tuple[Listener, list[Event]]:
        """A new listener and the backlog events after ``after_id`` (none when None)."""
        listener = Listener(asyncio.get_running_loop())
        with self._lock:
            self._listeners.add(listener)
            replay = [] if after_id is None else [e for e in self._backlog if e.id > after_id]
        return listener, replay

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.discard(listener)

    def close(self) -> None:
        """End every stream (shutdown)."""
        with self._lock:
            listeners = list(self._listeners)
            self._listeners.clear()
        for listener in listeners:
            try:
                listener.loop.call_soon_threadsafe(listener.queue.put_nowait, None)
            except RuntimeError:
                pass
