"""What a whole-stream reverse delta of a nightly dump would cost (issue 16's 30-night bar).

Not a casbackup code path: a measurement that decides whether a format built on it could
meet the bar. For each engine, fill the bench's table (bench/dump_dedup.py's ``Subject``,
about --mb MB of dump), take night 0's dump, then for each of --nights nights rewrite 1%
of the rows at random in place (the same predicate as dump_dedup's ``--nights``) and dump
again. For each pair of consecutive nights it reports the size of:

- the rows that night changed, zstd level 3 on their own (dump_dedup's "floor");
- night n-1 as one zstd frame compressed *against night n* (zstd's "patch-from": night n
  as a raw-content dictionary, a window covering the whole dump): a reverse delta, so the
  newest night stays whole and reads as fast as the first;
- for dumps of equal length (SQLite's page image, rows rewritten in place), night n-1's
  differing byte runs (gap <= 8 bytes merged), each as (distance from the previous run,
  length, night n-1's bytes), zstd level 3: an aligned diff.

The whole dump is held in memory (twice): a measurement only; a format would delta in
bounded windows. Needs the zstd command (Debian's zstd).

    .venv/bin/python bench/stream_delta_probe.py [--mb 100] [--engines sqlite,postgresql,mysql]
        [--nights 3]
"""

from __future__ import annotations

import argparse
import resource
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dump_dedup import ROW_BYTES, Subject, random_rows  # noqa: E402

BLOCK = 64  # bytes compared at once before a byte-by-byte scan of a differing block


def patch_from(older: Path, newer: Path, level: int = 3) -> tuple[int, float]:
    """Bytes of ``older`` compressed as one zstd frame against ``newer`` (``zstd
    --patch-from=newer older --long``: the zstd command, whose prefix reference
    python-zstandard's raw-content dictionaries do not match the same way), and the
    command's CPU seconds."""
    out = older.with_suffix(".zst")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["zstd", "-q", "-f", f"-{level}", "--single-thread", "--long=30",
                    f"--patch-from={newer}", str(older), "-o", str(out)],
                   check=True, stderr=subprocess.DEVNULL)  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return out.stat().st_size, cpu


def aligned_diff(older: bytes, newer: bytes) -> int:
    """Compressed size (zstd 3) of ``older``'s byte runs that differ from ``newer`` at the
    same offsets (equal lengths only), runs closer than 9 bytes merged."""
    runs: list[tuple[int, int]] = []
    for i in range(0, len(older), BLOCK):
        if older[i : i + BLOCK] == newer[i : i + BLOCK]:
            continue
        for j in range(i, min(i + BLOCK, len(older))):
            if older[j] != newer[j]:
                if runs and j - runs[-1][1] <= 8:
                    runs[-1] = (runs[-1][0], j + 1)
                else:
                    runs.append((j, j + 1))
    out = bytearray()
    prev = 0
    for start, end in runs:
        out += struct.pack("<II", start - prev, end - start) + older[start:end]
        prev = end
    return len(zstandard.ZstdCompressor(level=3).compress(bytes(out)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--engines", default="sqlite,postgresql,mysql")
    parser.add_argument("--nights", type=int, default=3)
    args = parser.parse_args()
    for engine in args.engines.split(","):
        with tempfile.TemporaryDirectory(prefix="casb-sdp-") as tmp:
            work = Path(tmp)
            subject = Subject(engine, int(args.mb * 1e6 / ROW_BYTES), work)
            subject.create()
            try:
                subject.dump_to(work / "newer.dump")
                newer = (work / "newer.dump").read_bytes()
                whole = len(zstandard.ZstdCompressor(level=3).compress(newer))
                print(f"{engine}: night 0's dump {len(newer) / 1e6:.1f} MB, zstd 3 whole "
                      f"{whole / 1e6:.2f} MB", flush=True)  # fmt: skip
                for night in range(1, args.nights + 1):
                    older = newer
                    subject.change_in_place(random_rows(night))
                    rows = subject.changed_rows(random_rows(night))
                    floor = len(zstandard.ZstdCompressor(level=3).compress(rows))
                    (work / "newer.dump").rename(work / "older.dump")
                    subject.dump_to(work / "newer.dump")
                    newer = (work / "newer.dump").read_bytes()
                    reverse, cpu = patch_from(work / "older.dump", work / "newer.dump")
                    aligned = aligned_diff(older, newer) if len(older) == len(newer) else None
                    line = (f"  night {night}: rows {floor / 1e6:.3f} MB; night {night - 1} "
                            f"against night {night}: patch-from {reverse / 1e6:.3f} MB "
                            f"({cpu:.2f} s CPU)")  # fmt: skip
                    if aligned is not None:
                        line += f", aligned diff {aligned / 1e6:.3f} MB"
                    print(line, flush=True)
            finally:
                subject.drop()


if __name__ == "__main__":
    main()
