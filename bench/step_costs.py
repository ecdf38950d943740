"""CPU cost of each step a reader process runs, per small file and per GiB (CPU time).

Measures the libraries and system calls a backup's readers call for every file and chunk,
on real data, one step at a time, in this thread's CPU time (``time.thread_time``), so
the numbers hold on a machine shared with other work. What a backup costs beyond their
sum is ours (Python per file and per chunk, messages between processes).

    python -m bench.step_costs SMALL_FILES_DIR CORPUS_DIR [--files 5000] [--mib 64]
"""

from __future__ import annotations

import argparse
import os
import pickle
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import blake3
import zstandard

from casbackup.crypto.envelope import Opener, Sealer
from casbackup.repo import codec

KIND = 1
OBJECT_ID = b"\x01" * 32


def _files(root: Path) -> list[str]:
    out = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.isfile(path) and not os.path.islink(path):
                out.append(path)
    return sorted(out)


def _cpu(fn: Callable[[Any], object], items: Iterable[Any]) -> float:
    start = time.thread_time()
    for item in items:
        fn(item)
    return time.thread_time() - start


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("small", type=Path, help="a small-files tree (bench.corpus build_small_files)")
    ap.add_argument("corpus", type=Path, help="the bench corpus (bench.corpus)")
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--mib", type=int, default=64)
    args = ap.parse_args(argv)
    root, key = os.urandom(32), os.urandom(32)
    sealer, opener = Sealer(root), Opener(root)
    paths = _files(args.small)[: args.files]
    small = [Path(p).read_bytes() for p in paths]
    budget = args.mib << 20
    blocks: list[bytes] = []
    for path in _files(args.corpus):
        if budget <= 0:
            break
        data = Path(path).read_bytes()[:budget]
        budget -= len(data)
        blocks.extend(data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20))
    n = len(small)
    total = sum(map(len, blocks))
    gib = total / (1 << 30)
    print(f"{n} small files, {sum(map(len, small)) // n} B each on average; {total >> 20} MiB mix")

    def per_file(label: str, seconds: float) -> None:
        print(f"  {label:44} {seconds / n * 1e6:7.2f} us/file")

    def per_gib(label: str, seconds: float) -> None:
        print(f"  {label:44} {seconds / gib:7.2f} s/GiB")

    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_NOATIME", 0)

    def read(path: str) -> None:
        fd = os.open(path, flags)
        os.read(fd, os.fstat(fd).st_size + 1)
        os.fstat(fd)
        os.close(fd)

    def prefetch(path: str) -> None:
        fd = os.open(path, flags)
        os.posix_fadvise(fd, 0, 4096, os.POSIX_FADV_WILLNEED)
        os.close(fd)

    def hashes(data: bytes) -> None:
        blake3.blake3(data).digest()
        blake3.blake3(data, key=key).digest()

    def verify(envelope: bytes) -> None:
        plain = codec.decompress(opener.open(KIND, OBJECT_ID, envelope))
        blake3.blake3(plain, key=key).digest()

    print("per small file (warm page cache):")
    per_file("open, fstat, read, fstat, close", _cpu(read, paths))
    per_file("prefetch: open, fadvise, close", _cpu(prefetch, paths))
    per_file("BLAKE3 content hash + keyed chunk id", _cpu(hashes, small))
    per_file("zstd level 3 (codec.compress)", _cpu(lambda d: codec.compress(d, 3), small))
    packed = [codec.compress(d, 3) for d in small]
    per_file("AES-GCM seal", _cpu(lambda p: sealer.seal(KIND, OBJECT_ID, p), packed))
    sealed = [sealer.seal(KIND, OBJECT_ID, p) for p in packed]
    per_file("verify: open, decompress, keyed hash", _cpu(verify, sealed))
    print("per GiB of the corpus mix, in 1 MiB pieces:")
    per_gib("BLAKE3 content hash + keyed chunk id", _cpu(hashes, blocks))
    for level in (3, 1):
        comp = zstandard.ZstdCompressor(level=level, write_content_size=True)
        out = [0]

        def squeeze(block: bytes, comp: Any = comp, out: list[int] = out) -> None:
            out[0] += len(comp.compress(block))

        seconds = _cpu(squeeze, blocks)
        per_gib(f"zstd level {level} (output {out[0] / total:.3f} of input)", seconds)
    packed = [codec.compress(b, 3) for b in blocks]
    per_gib("AES-GCM seal", _cpu(lambda p: sealer.seal(KIND, OBJECT_ID, p), packed))
    sealed = [sealer.seal(KIND, OBJECT_ID, p) for p in packed]
    per_gib("verify: open, decompress, keyed hash", _cpu(verify, sealed))
    per_gib(
        "pickle to and from the parent", _cpu(lambda s: pickle.loads(pickle.dumps([s])), sealed)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
