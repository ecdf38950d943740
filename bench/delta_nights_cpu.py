"""Backup CPU of each night of a SQLite dump, format 2 (no deltas) against formats with deltas.

A table dumped to about --mb MB (bench/dump_dedup.py's SQLite subject): the first night,
one night of 1% scattered changes (values grow), then --nights nights of 1% random
in-place changes. Each night's dump is backed up into a repository of each format given
(default 2 and 3; 6 writes aligned deltas, repo/aligned_delta.py); with deltas (3 and
later) the parent's chunks are the delta bases, one level deeper each
night until ``delta.MAX_DEPTH`` (then a delta of each chain's bottom blob, or a full copy:
repo/delta.py choose_base). Prints, per night,
what each backup stored and its CPU time (user+sys of this process, as dump_dedup.py).

    .venv/bin/python bench/delta_nights_cpu.py [--mb 100] [--nights 9] [--formats 2,5,6]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from dump_dedup import ROW_BYTES, FileDump, Run, Subject, random_rows

from casbackup.repo.config import DUMP_CHUNKER


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="approximate dump size in MB")
    parser.add_argument("--nights", type=int, default=9, help="nights of in-place changes")
    parser.add_argument("--formats", default="2,3", help="format versions (comma-separated)")
    args = parser.parse_args()
    versions = [int(v) for v in args.formats.split(",")]
    rows = args.mb * 1_000_000 // ROW_BYTES
    with tempfile.TemporaryDirectory(prefix="casb-delta-cpu-") as tmp:
        work = Path(tmp)
        os.environ["CASBACKUP_CACHE_DIR"] = str(work / "cache")
        os.environ.setdefault("CASBACKUP_STATE_DIR", str(work / "state"))
        subject = Subject("sqlite", rows, work)
        subject.create()
        runs = [Run(DUMP_CHUNKER, version, work) for version in versions]
        try:
            for night in range(args.nights + 2):
                if night == 1:
                    subject.change("id % 100 = 37")
                elif night > 1:
                    subject.change_in_place(random_rows(night))
                path = work / "night.dump"
                dump = FileDump(path, subject.dump_to(path))
                cells = [run.backup(dump) for run in runs]
                path.unlink()
                print(f"night {night}: " + " | ".join(
                    f"format {v} {stored / 1e6:.3f} MB {cpu:.2f}s"
                    for v, (stored, cpu) in zip(versions, cells, strict=True)), flush=True)  # fmt: skip
        finally:
            for run in runs:
                run.repo.close()


if __name__ == "__main__":
    main()
