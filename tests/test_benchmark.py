"""The benchmark library: structure and sanity of its results, never timings."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import zstandard

from casbackup.benchmark import BenchResult, _run_threads, _Tally, make_sample, run_benchmarks
from casbackup.errors import UsageError

EXPECTED_NAMES = [
    "chunk fastcdc",
    "hash blake3-keyed",
    "compress zstd-1",
    "compress zstd-3",
    "compress zstd-6",
    "decompress zstd-3",
    "encrypt aes-256-gcm",
    "encrypt chacha20-poly1305",
    "pipeline",
]


def test_run_benchmarks_small() -> None:
    lines: list[str] = []
    results = run_benchmarks(size_mib=4, threads=(1, 2), progress=lines.append)
    assert all(isinstance(r, BenchResult) for r in results)
    assert [(r.name, r.threads) for r in results] == [
        (name, n) for name in EXPECTED_NAMES for n in (1, 2)
    ]
    for r in results:
        assert r.mb_per_s > 0, r
        assert r.detail, r
    assert lines[0].startswith("preparing")
    assert len(lines) == 1 + len(results)
    ratios = [r.detail for r in results if r.name == "compress zstd-3"]
    assert all("ratio" in d for d in ratios)


def test_odd_sizes_and_thread_counts() -> None:
    # 3 MiB over 2 threads does not split evenly; 3 threads is more than this machine may have.
    results = run_benchmarks(size_mib=3, threads=(3,))
    assert {r.threads for r in results} == {3}
    assert all(r.mb_per_s > 0 for r in results)


def test_sample_is_deterministic_and_mixed() -> None:
    size = 4 << 20
    sample = make_sample(size)
    assert len(sample) == size
    assert sample == make_sample(size)
    assert make_sample(size, seed=1) != sample
    ratio = len(sample) / len(zstandard.ZstdCompressor(level=3).compress(sample))
    # Half text (~3-4x), a quarter incompressible, a quarter nearly free: about 2x overall.
    assert 1.5 < ratio < 3.5
    assert len(make_sample(1000)) == 1000


@pytest.mark.parametrize(
    ("size", "threads"), [(0, (1,)), (-1, (1,)), (4, ()), (4, (0,)), (4, (1, -2))]
)
def test_bad_arguments_are_usage_errors(size: int, threads: tuple[int, ...]) -> None:
    with pytest.raises(UsageError):
        run_benchmarks(size_mib=size, threads=threads)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fail_in", ["factory", "warm-up", "work"])
def test_a_failing_worker_is_reported_not_hung(fail_in: str) -> None:
    def factory(index: int) -> Callable[[int], _Tally]:
        if fail_in == "factory" and index == 1:
            raise RuntimeError("boom")

        def work(units: int) -> _Tally:
            if index == 1 and (fail_in == "warm-up" or (fail_in == "work" and units > 1)):
                raise RuntimeError("boom")
            return _Tally(units, 0)

        return work

    with pytest.raises(RuntimeError, match="boom"):
        _run_threads(factory, 2, 8)
    seconds, tally = _run_threads(lambda index: lambda units: _Tally(units, 1), 3, 8)
    assert seconds > 0
    assert (tally.bytes, tally.extra) == (8, 3)
