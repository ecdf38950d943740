"""A process's shared map of a file: where it is, dropping its pages, reading ahead.

For the index cache (repo/indexcache.py), whose LMDB map would otherwise keep every page
a look-up visited in the process's resident set.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable

_MADV_DONTNEED = 4


def _libc_madvise():  # type: ignore[no-untyped-def]
    """libc's ``madvise`` through ctypes, or None where there is none (not Linux)."""
    from casbackup import libc

    fn = libc.function("madvise")
    if fn is None:
        return None
    fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


def _dontneed() -> Callable[[int, int], int] | None:
    fn = _libc_madvise()
    if fn is None:
        return None
    return lambda start, length: int(fn(start, length, _MADV_DONTNEED))


# ``madvise(start, length, MADV_DONTNEED)``: the pages of a read-only shared map leave this
# process (they stay in the page cache). None where there is no madvise.
madvise_dontneed = _dontneed()


def mapped_ranges(file_path: str) -> list[tuple[int, int]]:
    """(start, end) addresses of this process's mappings of ``file_path`` (/proc/self/maps;
    empty where that does not exist)."""
    real = os.path.realpath(file_path)
    ranges = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].rstrip("\n") == real:
                    start, end = parts[0].split("-")
                    ranges.append((int(start, 16), int(end, 16)))
    except (OSError, ValueError):
        return []
    return ranges


def read_ahead(file_path: str, limit: int) -> None:
    """Start reading ``file_path`` into the page cache in the background when it is at most
    ``limit`` bytes (one sequential read ahead instead of a random one per page later).
    Only a hint: never raises, never waits for the disk."""
    try:
        fd = os.open(file_path, os.O_RDONLY)
    except OSError:
        return
    try:
        if os.fstat(fd).st_size <= limit:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    except (OSError, AttributeError):  # AttributeError: no posix_fadvise (macOS)
        pass
    finally:
        os.close(fd)
