"""``casbackup benchmark``: how fast this machine chunks, hashes, compresses and encrypts.

Measures the native building blocks of a backup, one and several threads at a time, so a
user can choose a compression level and AEAD and see whether more threads would help.
Kopia's ``benchmark`` commands are the model.

What is measured, and what is not:

- CPU throughput on data in memory. Disk and network are not involved: a real backup is
  bounded by whichever of reading, these steps and writing is slowest.
- The data is a deterministic mixed sample (see :func:`make_sample`): half text-like, a
  quarter random (incompressible), a quarter repeated. Compression speed depends heavily on
  the data; the ratio is printed so the number can be judged.
- Memory stays bounded whatever ``size_mib`` is: the sample is at most 16 MiB and is
  processed repeatedly; each output is dropped as soon as it is produced.
- Rates are in MB/s (10^6 bytes per second, as restic and Kopia print them) of *input*
  bytes, except decompression, which counts the bytes it produces, so "compress" and
  "decompress" rates of one level can be compared directly.
- Threads each get their own chunker, compressor and cipher objects (zstd compressors and
  FastCDC instances are not safe to share) and split ``size_mib`` between them; they start
  together at a barrier, so thread start-up is not timed. All these libraries release the
  GIL while working, so two threads can approach twice the speed on two cores; the steps
  that run at several GB/s (BLAKE3, AES-GCM) may instead hit the memory bandwidth, since
  the sample is larger than a CPU cache, as real file data is.
- Each measurement is split into rounds and the fastest round is reported: other programs
  running on the machine can only slow a round down.

Nothing here prints: ``progress`` receives one line before each measurement and the CLI
renders the returned results.
"""

from __future__ import annotations

import itertools
import os
import random
import string
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import blake3
import zstandard
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from pyfastcdc import FastCDC

from casbackup.errors import UsageError
from casbackup.threadsig import quiet_thread

MiB = 1 << 20
MB = 1_000_000

# The sample is reused instead of growing with size_mib: memory stays bounded, and 16 MiB
# is large enough to spread over many CDC chunks yet small enough to build in well under
# a second.
SAMPLE_MAX_MIB = 16
# Chunks of 1 MiB are what hashing, compression and encryption see in a repository with
# the default chunker (about 1 MiB on average).
UNIT = MiB
# Mirrors the repository's default chunker (repo/config.py ChunkerParams): pyfastcdc's
# real mean chunk is about avg_size + min_size, so these give ~1 MiB chunks.
CDC_MIN = 256 * 1024
CDC_AVG = 768 * 1024
CDC_MAX = 8 * MiB
# size_mib is spread over this many rounds and the fastest round is reported.
ROUNDS = 3
COMPRESSION_LEVELS = (1, 3, 6)
DECOMPRESSION_LEVEL = 3  # the repository default; decompression speed barely depends on it
PIPELINE_LEVEL = 3
# Text segments alternate with random and repeated ones at this granularity, so every
# 1 MiB chunk holds a mix, as a chunk that spans several small files does.
SEGMENT = 256 * 1024


@dataclass(frozen=True)
class BenchResult:
    """One measurement: ``name`` says what ran ("compress zstd-3"), ``detail`` how."""

    name: str
    threads: int
    mb_per_s: float
    detail: str


@dataclass
class _Tally:
    """What one thread did: bytes counted for the rate, and one benchmark-specific count."""

    bytes: int = 0
    extra: int = 0  # chunks cut, or compressed bytes produced


# A worker processes a number of 1 MiB units and returns its tally. A factory builds one
# worker per thread (the thread index lets it start at a different place in the sample).
_Worker = Callable[[int], _Tally]
_WorkerFactory = Callable[[int], _Worker]


def make_sample(size: int, seed: int = 0) -> bytes:
    """Deterministic mixed data: 1/2 text-like, 1/4 random, 1/4 repeated, interleaved.

    The text is log-like lines: a template chosen from a Zipf-weighted pool (the way
    logs, source code and configuration repeat themselves) with a fresh number in each
    line, so zstd finds real but not trivial redundancy (about 4x on its own, 2.5x for the
    whole sample at level 3). The random quarter stands for already-compressed or
    encrypted files, the repeated quarter (one 4 KiB block over and over) for sparse
    regions, zero padding and copies.
    """
    rng = random.Random(seed)
    words = [
        "".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 10))) for _ in range(3000)
    ]
    word_weights = list(itertools.accumulate(1 / (rank + 1) for rank in range(len(words))))
    templates = [
        " ".join(rng.choices(words, cum_weights=word_weights, k=rng.randint(3, 12)))
        for _ in range(8000)
    ]
    # A flatter Zipf than the words' (exponent 0.5): text alone then compresses about 4x
    # at zstd level 3, between source code and logs.
    template_weights = list(
        itertools.accumulate(1 / (rank + 1) ** 0.5 for rank in range(len(templates)))
    )
    repeated_block = rng.randbytes(4096)

    def text(n: int) -> bytes:
        lines: list[str] = []
        produced = 0
        while produced < n:
            for template in rng.choices(templates, cum_weights=template_weights, k=1000):
                line = f"{template} {rng.randrange(10**9)}\n"
                lines.append(line)
                produced += len(line)
        return "".join(lines).encode()[:n]

    kinds = ("text", "random", "text", "repeated")
    parts: list[bytes] = []
    for index in range(-(-size // SEGMENT)):
        n = min(SEGMENT, size - index * SEGMENT)
        kind = kinds[index % len(kinds)]
        if kind == "text":
            parts.append(text(n))
        elif kind == "random":
            parts.append(rng.randbytes(n))
        else:
            parts.append((repeated_block * (n // len(repeated_block) + 1))[:n])
    return b"".join(parts)


def _units(sample: memoryview, start: int, count: int) -> list[memoryview]:
    """``count`` consecutive 1 MiB views of the sample from unit ``start``, wrapping around."""
    total = len(sample) // UNIT
    return [sample[((start + i) % total) * UNIT :][:UNIT] for i in range(count)]


def _run_threads(factory: _WorkerFactory, threads: int, units: int) -> tuple[float, _Tally]:
    """Split ``units`` over ``threads`` workers; return wall seconds and the summed tally."""
    shares = [units // threads + (1 if i < units % threads else 0) for i in range(threads)]
    tallies: list[_Tally] = [_Tally() for _ in range(threads)]
    errors: list[BaseException] = []
    # Each worker reads the clock itself: with every core busy, the calling thread may
    # only be scheduled long after the workers have started, which would inflate rates.
    starts = [0.0] * threads
    ends = [0.0] * threads
    barrier = threading.Barrier(threads + 1)
    finished = threading.Barrier(threads + 1)

    def body(index: int) -> None:
        # Every exception is handed to the calling thread: a worker must neither die
        # silently nor print a traceback of its own.
        try:
            worker = factory(index)
            worker(1)  # warm-up: first-touch of buffers and lazy library set-up are not timed
            barrier.wait()
            starts[index] = time.perf_counter()
            tallies[index] = worker(shares[index])
            ends[index] = time.perf_counter()
            finished.wait()
        except threading.BrokenBarrierError:
            pass  # another thread failed first; its exception is the one reported
        except BaseException as exc:
            errors.append(exc)
            barrier.abort()
            finished.abort()

    # Quiet threads: a Ctrl-C must reach the main thread waiting at the barrier (threadsig.py).
    pool = [quiet_thread(body, (i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    try:
        barrier.wait()
        finished.wait()
    except threading.BrokenBarrierError:
        pass  # a worker failed; raised below
    except BaseException:
        # Interrupted (Ctrl-C): release the workers instead of leaving them blocked.
        barrier.abort()
        finished.abort()
        raise
    finally:
        for thread in pool:
            thread.join()
    if errors:
        raise errors[0]
    total = _Tally(sum(t.bytes for t in tallies), sum(t.extra for t in tallies))
    # perf_counter is one monotonic clock for all threads. Its resolution is far below a
    # microsecond, but a rate must never divide by zero.
    return max(max(ends) - min(starts), 1e-9), total


def _chunker() -> FastCDC:
    return FastCDC(avg_size=CDC_AVG, min_size=CDC_MIN, max_size=CDC_MAX)


def _cdc_factory(sample: memoryview) -> _WorkerFactory:
    def factory(index: int) -> _Worker:
        cdc = _chunker()

        def work(units: int) -> _Tally:
            tally = _Tally()
            # Cut whole stretches of the sample, not 1 MiB pieces: CDC needs long input to
            # find its own boundaries.
            remaining = units * UNIT
            while remaining > 0:
                piece = sample[: min(remaining, len(sample))]
                for _chunk in cdc.cut_buf(piece):
                    tally.extra += 1
                tally.bytes += len(piece)
                remaining -= len(piece)
            return tally

        return work

    return factory


def _per_chunk_factory(
    sample: memoryview, make_op: Callable[[], Callable[[memoryview], int]]
) -> _WorkerFactory:
    """Workers that apply one operation (built per thread) to 1 MiB chunks of the sample.

    The operation returns the size of what it produced, which lands in ``extra``.
    """

    def factory(index: int) -> _Worker:
        op = make_op()
        total = len(sample) // UNIT

        def work(units: int) -> _Tally:
            tally = _Tally()
            # Threads start at different places so they do not march over the same cache
            # lines in lock-step.
            for chunk in _units(sample, index * total // 2, units):
                tally.extra += op(chunk)
                tally.bytes += len(chunk)
            return tally

        return work

    return factory


def _hash_op(key: bytes) -> Callable[[], Callable[[memoryview], int]]:
    def make() -> Callable[[memoryview], int]:
        def op(chunk: memoryview) -> int:
            return len(blake3.blake3(chunk, key=key).digest())

        return op

    return make


def _compress_op(level: int) -> Callable[[], Callable[[memoryview], int]]:
    def make() -> Callable[[memoryview], int]:
        # One compressor per thread: ZstdCompressor objects are not thread-safe.
        compressor = zstandard.ZstdCompressor(level=level, write_content_size=True)

        def op(chunk: memoryview) -> int:
            return len(compressor.compress(chunk))

        return op

    return make


def _aead_op(
    cipher: type[AESGCM] | type[ChaCha20Poly1305],
) -> Callable[[], Callable[[memoryview], int]]:
    def make() -> Callable[[memoryview], int]:
        aead = cipher(os.urandom(32))
        # A counter nonce per thread and key, like the repository's envelope: never reused.
        counter = itertools.count()

        def op(chunk: memoryview) -> int:
            nonce = next(counter).to_bytes(12, "big")
            return len(aead.encrypt(nonce, chunk, None))

        return op

    return make


def _decompress_factory(frames: Sequence[bytes]) -> _WorkerFactory:
    def factory(index: int) -> _Worker:
        decompressor = zstandard.ZstdDecompressor()

        def work(units: int) -> _Tally:
            tally = _Tally()
            for i in range(units):
                frame = frames[(index * len(frames) // 2 + i) % len(frames)]
                # Output bytes are what counts: the rate at which restore gets plaintext.
                tally.bytes += len(decompressor.decompress(frame))
                tally.extra += len(frame)
            return tally

        return work

    return factory


def _pipeline_factory(sample: memoryview, key: bytes) -> _WorkerFactory:
    """What backup does to every byte after reading it: cut, id, compress, encrypt."""

    def factory(index: int) -> _Worker:
        cdc = _chunker()
        compressor = zstandard.ZstdCompressor(level=PIPELINE_LEVEL, write_content_size=True)
        aead = AESGCM(os.urandom(32))
        counter = itertools.count()

        def work(units: int) -> _Tally:
            tally = _Tally()
            remaining = units * UNIT
            while remaining > 0:
                piece = sample[: min(remaining, len(sample))]
                for chunk in cdc.cut_buf(piece):
                    data = chunk.data
                    chunk_id = blake3.blake3(data, key=key).digest()
                    packed = compressor.compress(data)
                    nonce = next(counter).to_bytes(12, "big")
                    tally.extra += len(aead.encrypt(nonce, packed, chunk_id))
                tally.bytes += len(piece)
                remaining -= len(piece)
            return tally

        return work

    return factory


def _kib(n: float) -> str:
    return f"{n / 1024:.0f} KiB"


def run_benchmarks(
    size_mib: int = 256,
    threads: tuple[int, ...] = (1, 2),
    progress: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Measure every building block with each thread count.

    Each measurement processes about ``size_mib`` of input in ``ROUNDS`` rounds and
    reports the fastest round. At the default 256 MiB this takes well under 30 s on two cores (zstd level 6 dominates).
    Raises UsageError for a size below 1 MiB or a thread count below 1.
    """
    if isinstance(size_mib, bool) or not isinstance(size_mib, int) or size_mib < 1:
        raise UsageError(f"benchmark size must be at least 1 MiB, not {size_mib!r}")
    if not threads or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in threads):
        raise UsageError(f"thread counts must be whole numbers of at least 1, not {threads!r}")

    def say(line: str) -> None:
        if progress is not None:
            progress(line)

    round_mib = -(-size_mib // ROUNDS)
    sample_mib = min(size_mib, SAMPLE_MAX_MIB)
    say(f"preparing {sample_mib} MiB of mixed sample data")
    sample = memoryview(make_sample(sample_mib * MiB))
    key = os.urandom(32)
    decompress_frames = [
        zstandard.ZstdCompressor(level=DECOMPRESSION_LEVEL, write_content_size=True).compress(chunk)
        for chunk in _units(sample, 0, sample_mib)
    ]

    # (name, factory, how to describe the tally)
    plan: list[tuple[str, _WorkerFactory, Callable[[_Tally], str]]] = [
        (
            "chunk fastcdc",
            _cdc_factory(sample),
            lambda t: (
                f"min {_kib(CDC_MIN)}, avg {_kib(CDC_AVG)}, max {_kib(CDC_MAX)}; "
                f"mean chunk {_kib(t.bytes / max(t.extra, 1))}"
            ),
        ),
        (
            "hash blake3-keyed",
            _per_chunk_factory(sample, _hash_op(key)),
            lambda t: "1 MiB chunks, 256-bit keyed hash",
        ),
    ]
    for level in COMPRESSION_LEVELS:
        plan.append(
            (
                f"compress zstd-{level}",
                _per_chunk_factory(sample, _compress_op(level)),
                lambda t: f"1 MiB chunks, ratio {t.bytes / max(t.extra, 1):.2f}",
            )
        )
    plan += [
        (
            f"decompress zstd-{DECOMPRESSION_LEVEL}",
            _decompress_factory(decompress_frames),
            lambda t: "1 MiB chunks, rate of output bytes",
        ),
        (
            "encrypt aes-256-gcm",
            _per_chunk_factory(sample, _aead_op(AESGCM)),
            lambda t: "1 MiB chunks",
        ),
        (
            "encrypt chacha20-poly1305",
            _per_chunk_factory(sample, _aead_op(ChaCha20Poly1305)),
            lambda t: "1 MiB chunks",
        ),
        (
            "pipeline",
            _pipeline_factory(sample, key),
            lambda t: (
                f"fastcdc, blake3, zstd-{PIPELINE_LEVEL}, aes-256-gcm; "
                f"stored {t.extra / max(t.bytes, 1):.0%} of input"
            ),
        ),
    ]

    results: list[BenchResult] = []
    for name, factory, describe in plan:
        for count in threads:
            say(f"{name}, {count} thread{'s' if count > 1 else ''}")
            # Best of several rounds: other processes on the machine only ever slow a
            # round down, so the fastest round is the closest to what the machine can do.
            rounds = [_run_threads(factory, count, round_mib) for _ in range(ROUNDS)]
            seconds, tally = min(rounds, key=lambda r: r[0] / max(r[1].bytes, 1))
            results.append(BenchResult(name, count, tally.bytes / MB / seconds, describe(tally)))
    return results
