"""Keep glibc from hoarding freed chunk buffers, so peak memory tracks live data.

A backup allocates and frees megabyte-sized buffers (chunks, compressed and encrypted
copies) in several threads. With glibc's defaults those land in per-thread arenas and
the heap is not trimmed, so the resident size grows well past what is live (measured:
212 MiB peak on a 1 GiB corpus, 146 MiB with the settings below, same speed). Serving
allocations of 1 MiB and more with mmap returns them to the system when freed. No effect
where the C library is not glibc.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


def _mallopt():  # type: ignore[no-untyped-def]
    from casbackup import libc

    return libc.function("mallopt")


_HEAP_THRESHOLD = 32 << 20  # while deltas are built (large_buffers_in_heap)
_heap_users = 0
_heap_lock = threading.Lock()
# The (mmap, trim) thresholds this process set last, which large_buffers_in_heap puts
# back; None: never tuned (the C library's own defaults, left alone).
_thresholds: tuple[int, int] | None = None


def _set_thresholds(mallopt, mmap: int, trim: int) -> None:  # type: ignore[no-untyped-def]
    global _thresholds
    mallopt(_M_MMAP_THRESHOLD, mmap)
    mallopt(_M_TRIM_THRESHOLD, trim)
    _thresholds = (mmap, trim)


def tune_allocator() -> None:
    mallopt = _mallopt()
    if mallopt is not None:
        _set_thresholds(mallopt, 1 << 20, 1 << 20)
        mallopt(_M_ARENA_MAX, 2)


def tune_allocator_single_thread() -> None:
    """For a reader process: one thread, so one arena and little fragmentation.

    Keeping megabyte buffers in the heap instead of mmap-ing each one saves a page
    fault per 4 KiB on every chunk (measured: about a third of the readers' system time).
    """
    mallopt = _mallopt()
    if mallopt is not None:
        _set_thresholds(mallopt, 4 << 20, 4 << 20)


# A restore writer's largest buffers: a pack range (readplan.MAX_RANGE, 4 MiB) and the
# blobs in it, decrypted and decompressed.
_WRITER_THRESHOLD = 8 << 20


def tune_allocator_writer() -> None:
    """For a restore's writer process (archiver/writers.py): buffers up to 8 MiB come from
    the heap, and up to 8 MiB of freed heap is kept for the next.

    A writer reads packs in ranges of up to 4 MiB, then decrypts and decompresses the
    blobs in them. With the CLI's 1 MiB mmap threshold (tune_allocator) every range was
    a new mmap, touched page by page and unmapped after use. Cold restore of the bench
    corpus (991 MiB, 59,700 files; bench/RESULTS.md, issue 17): 249,000 page faults, CPU
    8.93 s, peak PSS 93 MiB; with 8 MiB thresholds 96,000, 8.47 s, 97 MiB; with
    large_buffers_in_heap's 32 MiB 78,000, 7.98 s, but 120 MiB (the freed heap each of
    the 2 writers keeps between batches)."""
    mallopt = _mallopt()
    if mallopt is not None:
        _set_thresholds(mallopt, _WRITER_THRESHOLD, _WRITER_THRESHOLD)


@contextmanager
def large_buffers_in_heap() -> Iterator[None]:
    """While delta blobs are built in this process (archiver/delta_bases.py): serve
    allocations up to 32 MiB from the heap instead of mmap, and keep up to 32 MiB of
    freed heap instead of trimming it back after each.

    Each delta copies its chunk and its base (1-8 MiB with the files chunker) and makes
    zstd contexts and output buffers of that order; mmap-ing each one, or trimming the heap
    after it is freed, costs a page fault per 4 KiB touched on the next one. Measured on a
    night of 1% in-place changes to a 99 MB SQLite file (``--delta-files``): 325,000 page
    faults, system time 0.68 s of a 1.19 s backup; with the mmap threshold raised 0.29-0.32
    s of 0.80-0.96 s; with the trim threshold too, 0.12-0.30 s of 0.70-0.95 s, peak RSS
    104-113 MB (was 103-104). A night of the same database's dump (64 KiB chunks): 1.22-1.56
    s -> 1.17-1.24 s with the trim threshold raised. Nests, and works across threads: the
    thresholds this process had (tune_allocator's, or a reader's) come back when the last
    user leaves. Only where one of the tune_allocator functions ran (the CLI, the service,
    their helper processes): elsewhere the allocator is left as it is."""
    global _heap_users
    mallopt = _mallopt() if _thresholds is not None else None
    if mallopt is None:
        yield
        return
    with _heap_lock:
        _heap_users += 1
        if _heap_users == 1:
            mallopt(_M_MMAP_THRESHOLD, _HEAP_THRESHOLD)
            mallopt(_M_TRIM_THRESHOLD, _HEAP_THRESHOLD)
    try:
        yield
    finally:
        with _heap_lock:
            _heap_users -= 1
            if _heap_users == 0 and _thresholds is not None:
                _set_thresholds(mallopt, *_thresholds)
