"""Deterministic benchmark corpora: a server-like tree, a small-files tree, a dedup file.

Everything is derived from one integer seed: the plan (paths, kinds, sizes, per-file seeds) comes
from a master ``random.Random(seed)``; each file's bytes come from its own ``Random`` seeded from
the plan, produced in large blocks (``randbytes``, ``bytes.translate``, ``choices`` over a line
pool), never byte by byte. The same seed gives byte-identical trees, names, modes and mtimes.

    python -m bench.corpus DIR [--quick] [--seed N] [--mutate]
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30
BASE_MTIME = 1_700_000_000  # 2023-11-14; every corpus file gets BASE_MTIME + a seeded offset
MUTATION_MTIME = 1_750_000_000  # mtime of files the mutation touches or adds
LARGE_MIN = 8 * MiB + 512 * 1024  # "a few files over 8 MiB" stay over 8 MiB after scaling
TEXT_EXTS = (".py", ".c", ".h", ".js", ".conf", ".md", ".txt", ".html", ".json", ".yaml", ".sh")
BIN_EXTS = (".so", ".so.1", ".so.2.4", ".a", "", ".bin", ".o")
RANDOM_EXTS = (".jpg", ".png", ".gz", ".zip", ".xz", ".mp4")
# A byte mapping with about 4 bits of entropy: "machine code" that compresses to roughly 55-60 %.
CODE_TABLE = bytes(
    (
        0x00,
        0x48,
        0x89,
        0x8B,
        0xE8,
        0xFF,
        0x0F,
        0x83,
        0xC3,
        0x74,
        0x75,
        0x41,
        0x45,
        0x24,
        0x10,
        0x08,
    )[min(15, int(-math.log2((i + 1) / 257) * 2.2))]
    for i in range(256)
)


@dataclass(frozen=True)
class CorpusSpec:
    total_bytes: int
    n_files: int
    seed: int = 42

    def scaled(self, count: int, minimum: int = 1) -> int:
        """``count`` is meant for the 60,000-file default; scale it to this corpus."""
        return max(minimum, round(count * self.n_files / 60_000))


DEFAULT_SPEC = CorpusSpec(total_bytes=1 * GiB, n_files=60_000)
QUICK_SPEC = CorpusSpec(total_bytes=100 * MiB, n_files=6_000)


@dataclass(frozen=True)
class Entry:
    path: str  # relative, "/"-separated
    kind: str  # text | binary | random | log | db | archive | dup | symlink
    size: int
    seed: int
    target: str = ""  # dup: the relative path copied; symlink: the link's target
    mode: int = 0o644
    mtime: int = BASE_MTIME


@dataclass
class CorpusStats:
    files: int = 0
    symlinks: int = 0
    dirs: int = 0
    bytes: int = 0
    by_kind: dict[str, list[int]] = field(default_factory=dict)  # kind -> [count, bytes]
    seconds: float = 0.0

    def add(self, kind: str, size: int) -> None:
        c = self.by_kind.setdefault(kind, [0, 0])
        c[0] += 1
        c[1] += size


# ---------------------------------------------------------------------------- content primitives


class TextSource:
    """Lines built from a seeded word list; text files are seeded selections of these lines."""

    def __init__(self, seed: int, n_words: int = 4000, n_lines: int = 30_000) -> None:
        rng = random.Random(f"words:{seed}")
        letters = "etaoinshrdlcumwfgypbvkjxqz"
        weights = [26 - i for i in range(26)]
        words = [
            "".join(rng.choices(letters, weights, k=rng.randint(2, 11))) for _ in range(n_words)
        ]
        words += ["def", "return", "if", "else", "for", "int", "static", "const", "=", "==", "{"]
        cum = list(_cumulative([1.0 / (i + 1) for i in range(len(words))]))  # Zipf-like
        punct = [";", ":", ",", ".", "", "", "()", " {", " }", " = 0;"]
        lines = []
        for _ in range(n_lines):
            indent = " " * (4 * rng.randint(0, 3))
            body = " ".join(rng.choices(words, cum_weights=cum, k=rng.randint(2, 14)))
            lines.append(f"{indent}{body}{rng.choice(punct)}\n".encode())
        self.lines = lines
        self.avg_line = sum(map(len, lines)) / len(lines)

    def text(self, rng: random.Random, size: int, header: str = "") -> bytes:
        if size <= 0:
            return b""
        k = int(size / self.avg_line) + 2
        data = header.encode() + b"".join(rng.choices(self.lines, k=k))
        while len(data) < size:
            data += b"".join(rng.choices(self.lines, k=k))
        return data[:size]

    def log(self, rng: random.Random, size: int) -> Iterator[bytes]:
        """A large log file in ~1 MiB blocks: timestamps, levels, text."""
        t = BASE_MTIME - 86_400 * 30
        levels = (b"INFO", b"INFO", b"INFO", b"DEBUG", b"WARN", b"ERROR")
        left = size
        while left > 0:
            parts = []
            n = 0
            while n < MiB:
                t += rng.randint(0, 3)
                line = b"%d %s worker-%d " % (t, rng.choice(levels), rng.randint(1, 16))
                line += rng.choice(self.lines).lstrip()
                parts.append(line)
                n += len(line)
            block = b"".join(parts)[:left]
            left -= len(block)
            yield block


def _cumulative(ws: list[float]) -> Iterator[float]:
    s = 0.0
    for w in ws:
        s += w
        yield s


def random_blocks(rng: random.Random, size: int, block: int = 4 * MiB) -> Iterator[bytes]:
    left = size
    while left > 0:
        n = min(block, left)
        yield rng.randbytes(n)
        left -= n


def binary_bytes(rng: random.Random, size: int, text: TextSource) -> bytes:
    """Shared-library-like bytes: code-like low-entropy runs, string tables, zero padding, noise."""
    out: list[bytes] = [b"\x7fELF\x02\x01\x01\x00" + rng.randbytes(56)]
    n = 64
    while n < size:
        seg = rng.randint(256, 16 * 1024)
        r = rng.random()
        if r < 0.45:
            part = rng.randbytes(seg).translate(CODE_TABLE)
        elif r < 0.70:
            part = text.text(rng, seg).replace(b"\n", b"\x00")
        elif r < 0.85:
            part = bytes(seg)
        else:
            part = rng.randbytes(seg)
        out.append(part)
        n += len(part)
    return b"".join(out)[:size]


def db_blocks(rng: random.Random, size: int, text: TextSource) -> Iterator[bytes]:
    """A database-file-like layout in 4 KiB pages: rows of text, random blobs, empty pages."""
    page = 4096
    left = size
    while left > 0:
        pages = []
        for _ in range(256):
            r = rng.random()
            if r < 0.5:
                pages.append(text.text(rng, page))
            elif r < 0.8:
                pages.append(rng.randbytes(page))
            else:
                pages.append(bytes(page))
        block = b"".join(pages)[:left]
        left -= len(block)
        yield block


# ---------------------------------------------------------------------------- the server corpus


def _sizes(rng: random.Random, n: int, mu: float, sigma: float, lo: int, hi: int, budget: int):
    raw = [rng.lognormvariate(mu, sigma) for _ in range(n)]
    scale = budget / max(1.0, sum(raw))
    return [min(hi, max(lo, int(x * scale))) for x in raw]


def plan_corpus(spec: CorpusSpec) -> list[Entry]:
    """The deterministic list of what a corpus holds (no I/O)."""
    rng = random.Random(f"corpus:{spec.seed}")
    n, total = spec.n_files, spec.total_bytes
    n_large = spec.scaled(6, minimum=2)
    n_random = max(3, round(n * 0.025))
    n_binary = max(5, round(n * 0.14))
    n_dup = max(3, round(n * 0.05))
    n_link = max(3, round(n * 0.005))
    n_text = max(10, n - n_large - n_random - n_binary - n_dup - n_link)

    entries: list[Entry] = []

    def placed(area: str, i: int, per_dir: int, name: str) -> str:
        d = i // per_dir
        return f"{area}/{d // 20:03d}/{d % 20:02d}/{name}"

    def mtime() -> int:
        return BASE_MTIME + rng.randrange(30_000_000)

    areas_text = ("srv/app/src", "etc", "home/user/docs", "srv/www", "usr/share/doc")
    sizes = _sizes(rng, n_text, math.log(3000), 1.2, 40, 2 * MiB, int(total * 0.26))
    for i, sz in enumerate(sizes):
        area = areas_text[i % len(areas_text)]
        name = f"f{i:06d}{rng.choice(TEXT_EXTS)}"
        entries.append(
            Entry(placed(area, i, 40, name), "text", sz, rng.getrandbits(63), mtime=mtime())
        )
    sizes = _sizes(rng, n_binary, math.log(30_000), 1.3, 4096, 6 * MiB, int(total * 0.30))
    for i, sz in enumerate(sizes):
        area = ("usr/lib", "opt/vendor/lib", "usr/bin")[i % 3]
        name = f"lib{i:05d}{rng.choice(BIN_EXTS)}"
        entries.append(
            Entry(placed(area, i, 60, name), "binary", sz, rng.getrandbits(63), "", 0o755, mtime())
        )
    sizes = _sizes(rng, n_random, math.log(200_000), 1.0, 8192, 7 * MiB, int(total * 0.12))
    for i, sz in enumerate(sizes):
        area = ("home/user/photos", "var/backups", "srv/www/media")[i % 3]
        name = f"blob{i:05d}{rng.choice(RANDOM_EXTS)}"
        entries.append(
            Entry(placed(area, i, 30, name), "random", sz, rng.getrandbits(63), mtime=mtime())
        )
    large_budget = int(total * 0.25)
    raw = [rng.uniform(1.0, 4.0) for _ in range(n_large)]
    for i, w in enumerate(raw):
        sz = max(LARGE_MIN, int(large_budget * w / sum(raw)))
        kind = ("log", "db", "archive", "log", "db", "log")[i % 6]
        name = {"log": f"var/log/app{i}.log", "db": f"var/lib/db/table{i}.db"}.get(
            kind, f"var/backups/dump{i}.tar.zst"
        )
        entries.append(Entry(name, kind, sz, rng.getrandbits(63), mtime=mtime()))

    sources = [e for e in entries if e.kind in ("text", "binary", "random") and e.size < 4 * MiB]
    for i in range(n_dup):
        src = rng.choice(sources)
        base = src.path.rsplit("/", 1)[1]
        path = placed("srv/app-copy", i, 40, f"copy{i:05d}-{base}")
        entries.append(Entry(path, "dup", src.size, 0, src.path, src.mode, src.mtime))
    regular = [e for e in entries if e.kind in ("text", "binary")]
    for i in range(n_link):
        tgt = rng.choice(regular)
        link = f"{tgt.path.rsplit('/', 1)[0]}/link{i:05d}"
        if i < 3:  # a few dangling links, as on any real server
            entries.append(Entry(link, "symlink", 0, 0, f"missing-{i}", mtime=mtime()))
        else:
            entries.append(Entry(link, "symlink", 0, 0, tgt.path.rsplit("/", 1)[1]))
    return entries


def _write(path: Path, chunks: Iterator[bytes] | bytes) -> None:
    with open(path, "wb") as f:
        if isinstance(chunks, bytes):
            f.write(chunks)
        else:
            for c in chunks:
                f.write(c)


def build_corpus(root: Path, spec: CorpusSpec) -> CorpusStats:
    """Write the corpus planned by ``spec`` into ``root`` (which must not exist or be empty)."""
    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    text = TextSource(spec.seed)
    stats = CorpusStats()
    entries = plan_corpus(spec)
    dirs = sorted({e.path.rsplit("/", 1)[0] for e in entries})
    for d in dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    stats.dirs = len(dirs)
    for e in entries:
        p = root / e.path
        rng = random.Random(e.seed)
        if e.kind == "text":
            _write(p, text.text(rng, e.size, header=f"# {e.path}\n"))
        elif e.kind == "binary":
            _write(p, binary_bytes(rng, e.size, text))
        elif e.kind in ("random", "archive"):
            _write(p, random_blocks(rng, e.size))
        elif e.kind == "log":
            _write(p, text.log(rng, e.size))
        elif e.kind == "db":
            _write(p, db_blocks(rng, e.size, text))
        elif e.kind == "dup":
            shutil.copyfile(root / e.target, p)
        elif e.kind == "symlink":
            os.symlink(e.target, p)
            stats.symlinks += 1
            stats.add(e.kind, 0)
            continue
        os.chmod(p, e.mode)
        os.utime(p, (e.mtime, e.mtime))
        stats.files += 1
        stats.bytes += e.size
        stats.add(e.kind, e.size)
    for d in dirs:  # directory mtimes last: creating files changed them
        os.utime(root / d, (BASE_MTIME, BASE_MTIME))
    stats.seconds = time.perf_counter() - t0
    return stats


# ---------------------------------------------------------------------------- the 1 % mutation


@dataclass
class MutationReport:
    appended: list[str] = field(default_factory=list)
    inserted: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    bytes_written: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "appended": len(self.appended),
            "inserted": len(self.inserted),
            "added": len(self.added),
            "deleted": len(self.deleted),
            "bytes_written": self.bytes_written,
        }


def regular_files(root: Path) -> list[str]:
    """Sorted relative paths of the regular files under ``root`` (symlinks excluded)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                out.append(os.path.relpath(p, root))
    out.sort()
    return out


def mutate_corpus(
    root: Path, spec: CorpusSpec, undo_dir: Path | None = None, seed: int | None = None
) -> MutationReport:
    """About 1 % change: appends to a few hundred text files, 4 KiB inserted in the middle of a
    few large files, files added and deleted (50 each at the default size). Deterministic for a
    given corpus and seed. With ``undo_dir``, originals are saved there first (see ``revert``)."""
    rng = random.Random(f"mutate:{spec.seed if seed is None else seed}")
    text = TextSource(spec.seed)
    files = regular_files(root)
    sizes = {f: os.path.getsize(root / f) for f in files}
    small_text = [f for f in files if f.endswith(TEXT_EXTS) and sizes[f] < MiB]
    large = [f for f in files if sizes[f] >= 8 * MiB]
    rep = MutationReport()
    rep.appended = sorted(rng.sample(small_text, min(len(small_text), spec.scaled(300, 5))))
    rep.inserted = sorted(rng.sample(large, min(len(large), 3)))
    touched = set(rep.appended) | set(rep.inserted)
    rest = [f for f in files if f not in touched]
    rep.deleted = sorted(rng.sample(rest, min(len(rest), spec.scaled(50, 5))))
    dirs = sorted({f.rsplit("/", 1)[0] for f in files if "/" in f})
    n_add = spec.scaled(50, 5)
    rep.added = sorted(f"{rng.choice(dirs)}/new-{i:04d}.dat" for i in range(n_add))

    def save(rel: str) -> None:
        if undo_dir is not None:
            dst = undo_dir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, dst)

    for rel in rep.appended:
        save(rel)
        extra = text.text(rng, rng.randint(200, 4000))
        with open(root / rel, "ab") as f:
            f.write(extra)
        rep.bytes_written += len(extra)
    for rel in rep.inserted:
        save(rel)
        p = root / rel
        data = p.read_bytes()
        mid = len(data) // 2
        _write(p, data[:mid] + rng.randbytes(4096) + data[mid:])
        rep.bytes_written += 4096
    for rel in rep.deleted:
        save(rel)
        os.unlink(root / rel)
    for rel in rep.added:
        size = rng.randint(8 * 1024, 256 * 1024)
        if rng.random() < 0.5:
            data = text.text(rng, size)
        else:
            data = binary_bytes(rng, size, text)
        _write(root / rel, data)
        rep.bytes_written += size
    for rel in rep.appended + rep.inserted + rep.added:
        os.utime(root / rel, (MUTATION_MTIME, MUTATION_MTIME))
    return rep


def revert_mutation(root: Path, rep: MutationReport, undo_dir: Path) -> None:
    """Undo ``mutate_corpus`` from the originals it saved in ``undo_dir``."""
    for rel in rep.added:
        (root / rel).unlink(missing_ok=True)
    for rel in rep.appended + rep.inserted + rep.deleted:
        shutil.copy2(undo_dir / rel, root / rel)
    for d in {rel.rsplit("/", 1)[0] for rel in rep.added + rep.deleted}:
        os.utime(root / d, (BASE_MTIME, BASE_MTIME))
    shutil.rmtree(undo_dir, ignore_errors=True)


# ---------------------------------------------------------------------------- other data sets


def build_small_files(root: Path, n: int, seed: int = 42) -> CorpusStats:
    """``n`` files of 1-4 KiB, 100 per directory: 70 % text, 30 % random."""
    t0 = time.perf_counter()
    rng = random.Random(f"small:{seed}")
    text = TextSource(seed)
    stats = CorpusStats()
    for i in range(n):
        if i % 100 == 0:
            d = root / f"d{i // 10_000:03d}" / f"{(i // 100) % 100:02d}"
            d.mkdir(parents=True, exist_ok=True)
            stats.dirs += 1
        size = rng.randint(1024, 4096)
        if rng.random() < 0.7:
            data = text.text(rng, size, header=f"# small {i}\n")
            kind = "text"
        else:
            data = rng.randbytes(size)
            kind = "random"
        p = d / f"s{i:07d}.txt"
        _write(p, data)
        mt = BASE_MTIME + rng.randrange(30_000_000)
        os.utime(p, (mt, mt))
        stats.files += 1
        stats.bytes += size
        stats.add(kind, size)
    stats.seconds = time.perf_counter() - t0
    return stats


def write_random_file(path: Path, size: int, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, random_blocks(random.Random(f"dedup:{seed}"), size))
    os.utime(path, (BASE_MTIME, BASE_MTIME))


def insert_bytes(path: Path, offset: int, data: bytes) -> None:
    """Insert ``data`` at ``offset`` (rewrites the file; meant for a few hundred MiB at most)."""
    old = path.read_bytes()
    _write(path, old[:offset] + data + old[offset:])


# ---------------------------------------------------------------------------- comparing trees


def _same_content(a: str, b: str, bufsize: int = 1 << 20) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x = fa.read(bufsize)
            if x != fb.read(bufsize):
                return False
            if not x:
                return True


def compare_trees(a: Path, b: Path, check_mtime: bool = True, limit: int = 20) -> list[str]:
    """Differences between two trees: names, types, symlink targets, sizes, permission bits,
    mtimes (to the second) of regular files, and contents. Empty list = identical."""
    diffs: list[str] = []

    def scan(root: Path) -> dict[str, os.stat_result]:
        out = {}
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                out[os.path.relpath(p, root)] = os.lstat(p)
        return out

    sa, sb = scan(a), scan(b)
    for rel in sorted(sa.keys() ^ sb.keys()):
        diffs.append(f"only in {'first' if rel in sa else 'second'}: {rel}")
    for rel in sorted(sa.keys() & sb.keys()):
        if len(diffs) >= limit:
            break
        x, y = sa[rel], sb[rel]
        pa, pb = os.path.join(a, rel), os.path.join(b, rel)
        if (x.st_mode >> 12) != (y.st_mode >> 12):
            diffs.append(f"type differs: {rel}")
        elif os.path.islink(pa):
            if os.readlink(pa) != os.readlink(pb):
                diffs.append(f"symlink target differs: {rel}")
        elif os.path.isfile(pa):
            if x.st_size != y.st_size:
                diffs.append(f"size differs: {rel} ({x.st_size} != {y.st_size})")
            elif (x.st_mode & 0o7777) != (y.st_mode & 0o7777):
                diffs.append(f"mode differs: {rel} ({x.st_mode:o} != {y.st_mode:o})")
            elif check_mtime and int(x.st_mtime) != int(y.st_mtime):
                diffs.append(f"mtime differs: {rel} ({int(x.st_mtime)} != {int(y.st_mtime)})")
            elif not _same_content(pa, pb):
                diffs.append(f"content differs: {rel}")
    return diffs[:limit]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--quick", action="store_true", help="~100 MiB / 6,000 files")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--mutate", action="store_true", help="apply the 1%% mutation to DIR instead")
    args = ap.parse_args(argv)
    base = QUICK_SPEC if args.quick else DEFAULT_SPEC
    spec = CorpusSpec(base.total_bytes, base.n_files, args.seed)
    if args.mutate:
        print(mutate_corpus(args.dir, spec).as_dict())
    else:
        st = build_corpus(args.dir, spec)
        print(
            f"{st.files} files, {st.symlinks} symlinks, {st.dirs} dirs, "
            f"{st.bytes / MiB:.1f} MiB in {st.seconds:.1f} s"
        )
        for kind, (count, size) in sorted(st.by_kind.items()):
            print(f"  {kind:8} {count:7} files {size / MiB:9.1f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
