"""Reading delta bases from an object store: packs read ahead in windows, not one ranged GET
per link of every chain.

Why: a backup that stores a database dump as deltas loads, for each new chunk, its base
from the parent snapshot, through the base's chain (``delta.resolve_chain``): one ranged
read per link. On a local folder that is a ``pread``; on an object store a request of
~20-50 ms, made one after another: a 48 MB SQLite night with no local copy of the stream
(archiver/base_copies.py) made 485-2,311 GETs and took 23-105 s on loopback SeaweedFS
(bench/DUMPS.md). The links a night's bases go through are not scattered, though: the
parent's chunks are read in stream order, and each night's chunks were stored together,
so the next link needed is usually just after the last one read from the same pack.

What: the second read from a pack (and every later one) fetches a window of up to
``WINDOW`` bytes from where it starts (bounded by the pack's size, asked once per pack),
and later reads inside a kept window are answered from memory. A pack read once (a night
that changed one chunk) costs what it did: one exact read. At most ``KEEP`` windows are
kept (least recently used go first): memory ``2 * KEEP * WINDOW`` at most (a pack read
whole by the caller, two windows long at most, is kept as one: ``offer``).

Trust: none needed here; what comes back is what the store holds, authenticated by the
caller (``open_blob``, ``open_delta``) exactly as a direct read would be.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from casbackup.repo.pack import pack_name
from casbackup.store.base import Backend

#: Bytes one read-ahead fetches at most (a data pack is ~16 MiB at most).
WINDOW = 4 << 20
#: Windows kept.
KEEP = 8


class PackWindows:
    """``fetch(pack, offset, length)`` with read-ahead, for ``delta.resolve_chain``.
    Thread-safe. Raises what ``backend.get`` and ``backend.stat`` raise."""

    def __init__(self, backend: Backend, window: int = WINDOW, keep: int = KEEP) -> None:
        self._backend = backend
        self._window = window
        self._keep = keep
        self._lock = threading.Lock()
        self._windows: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._sizes: dict[str, int] = {}  # packs read at least once: their size, or -1
        self.requests = 0

    def seen(self, pack: str) -> bool:
        """Whether pack ``pack`` was read from already (its next read fetches a window)."""
        with self._lock:
            return pack in self._sizes

    def whole(self, pack: str) -> bytes:
        """Pack ``pack``'s bytes, kept (``offer``) for later reads. A kept window that
        reaches the pack's end is used, and only the bytes before it are asked for (a
        pack read ahead and then hashed is not downloaded twice); else one read."""
        with self._lock:
            size = self._sizes.get(pack, -1)
            tail: tuple[int, bytes] | None = None
            for (name, start), data in self._windows.items():
                if name == pack and size >= 0 and start + len(data) == size:
                    if tail is None or start < tail[0]:
                        tail = (start, data)
        if tail is None:
            self.requests += 1
            whole = self._backend.get(pack_name(pack))
        elif tail[0] == 0:
            whole = tail[1]
        else:
            self.requests += 1
            whole = self._backend.get(pack_name(pack), 0, tail[0]) + tail[1]
        self.offer(pack, whole)
        return whole

    def offer(self, pack: str, data: bytes) -> None:
        """Keep pack ``pack``'s whole bytes ``data`` (read by the caller, e.g. to hash it)
        as a window, when it is at most two windows long: later reads of it then cost no
        request. The caller vouches that ``data`` is the pack; reads are authenticated by
        their callers all the same."""
        if len(data) > 2 * self._window:
            return
        with self._lock:
            self._sizes[pack] = len(data)
            for key in [k for k in self._windows if k[0] == pack]:
                del self._windows[key]
            self._windows[(pack, 0)] = data
            while len(self._windows) > self._keep:
                self._windows.popitem(last=False)

    def fetch(self, pack: str, offset: int, length: int) -> bytes:
        """``length`` stored bytes at ``offset`` of pack ``pack``."""
        with self._lock:
            for (name, start), data in self._windows.items():
                if name == pack and start <= offset and offset + length <= start + len(data):
                    self._windows.move_to_end((name, start))
                    return data[offset - start : offset - start + length]
            seen = pack in self._sizes
        name = pack_name(pack)
        if not seen or length >= self._window:
            with self._lock:
                self._sizes.setdefault(pack, -1)
            self.requests += 1
            return self._backend.get(name, offset, length)
        with self._lock:
            size = self._sizes.get(pack, -1)
        if size < 0:
            size = self._backend.stat(name)
            self.requests += 1
            with self._lock:
                self._sizes[pack] = size
        end = min(max(size, offset + length), offset + self._window)
        data = self._backend.get(name, offset, end - offset)
        self.requests += 1
        with self._lock:
            self._windows[(pack, offset)] = data
            while len(self._windows) > self._keep:
                self._windows.popitem(last=False)
        return data[:length]
