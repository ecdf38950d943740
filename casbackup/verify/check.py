"""``check``: prove the repository's structure and, with read_data, every stored byte.

Order matters for precise reports: first the index files and pack headers, then
(optionally) the pack contents, so the set of damaged or missing blobs is known
before the snapshot trees are walked once to name every affected file.
"""

from __future__ import annotations

import contextlib
import gc
import os
import random
import re
import struct
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from casbackup import procs
from casbackup.errors import CasError, StorageError, UsageError
from casbackup.maintenance.spill import ID_BUCKETS, RecordSpill
from casbackup.repo import delta
from casbackup.repo.ids import FULL_KIND, BlobId, FileId, Kind
from casbackup.repo.index import (
    RECORD_SIZE,
    Location,
    decode_index_records,
    decode_supersedes,
    iter_records,
)
from casbackup.repo.nodecheck import file_node_problem
from casbackup.repo.pack import pack_name, read_header
from casbackup.repo.repository import Repository
from casbackup.repo.tree import NodeKind
from casbackup.reporter import NULL_REPORTER, Progress, Reporter
from casbackup.store.base import odd_entries, skipped_warnings
from casbackup.threadsig import quiet_thread, stop_signals_blocked
from casbackup.units import plural
from casbackup.verify.check_state import load_check_state, save_check_state
from casbackup.verify.metacheck import check_metadata
from casbackup.verify.pack_scan import PackVerdict, verify_pack

_FILE_NO = struct.Struct(">Q")  # a file's number in the walk, after its chunk id
# Where an index cache value (``Location.encode``: pack, offset, stored, raw, kind) holds
# the raw length and the kind.
_RAW_LEN = struct.Struct(">I")
_RAW_LEN_AT = 40
_KIND_AT = 44
# A file's recorded size as ``_collect`` holds it (a signed 64-bit slot): no sum of chunk
# sizes comes near it, so a forged size of 2**64-1 still disagrees with its chunks.
_SIZE_CAP = 1 << 62


@dataclass(frozen=True)
class Subset:
    """Which packs to read: all, a fraction, bucket n of t, or about ``size`` bytes."""

    fraction: float | None = None
    bucket: tuple[int, int] | None = None
    size: int | None = None

    @classmethod
    def parse(cls, text: str) -> Subset:
        text = text.strip()
        m = re.fullmatch(r"(\d+(?:\.\d+)?)%", text)
        if m:
            value = float(m.group(1))
            if not 0 < value <= 100:
                raise UsageError("--read-data-subset percentage must be in (0, 100]")
            return cls(fraction=value / 100)
        m = re.fullmatch(r"(\d+)/(\d+)", text)
        if m:
            n, t = int(m.group(1)), int(m.group(2))
            if not 1 <= n <= t:
                raise UsageError("--read-data-subset n/t needs 1 <= n <= t")
            return cls(bucket=(n, t))
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?", text, re.IGNORECASE)
        if m:
            unit = (m.group(2) or "B").upper().rstrip("B").rstrip("I")
            mult = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit]
            return cls(size=int(float(m.group(1)) * mult))
        raise UsageError(f"--read-data-subset {text!r}: use N%, n/t or a size such as 500M")

    def choose(self, packs: dict[FileId, int]) -> list[FileId]:
        names = sorted(packs)
        if self.bucket is not None:
            n, t = self.bucket
            return [p for p in names if int(p[:8], 16) % t == n - 1]
        rng = random.Random()
        rng.shuffle(names)
        if self.fraction is not None:
            return sorted(names[: max(1, round(len(names) * self.fraction))]) if names else []
        if self.size is not None:
            chosen, total = [], 0
            for p in names:
                if total >= self.size:
                    break
                chosen.append(p)
                total += packs[p]
            return sorted(chosen)
        return sorted(names)


@dataclass(frozen=True)
class CheckOptions:
    read_data: bool = False
    subset: Subset | None = None
    # Read the least recently verified packs first and stop starting new ones after this
    # many seconds; per-pack results are kept in the repository's check state.
    max_duration: float | None = None
    workers: int = 2  # processes reading packs in parallel with read_data


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    damaged_packs: set[str] = field(default_factory=set)
    affected: dict[str, list[str]] = field(default_factory=dict)  # snapshot id -> paths
    snapshots: int = 0
    trees: int = 0
    blobs: int = 0
    packs: int = 0
    packs_read: int = 0
    bytes_read: int = 0
    # After recording this run's reads (None when no data was read): how much of the
    # repository has never been verified, and the oldest verification time (unix s).
    packs_never_verified: int | None = None
    oldest_verified: int | None = None
    # How many of ``errors`` are the store refusing a read (permission denied, I/O error)
    # or follow from one (a tree in a pack that could not be read): not damage.
    storage_errors: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def damaged(self) -> bool:
        """Whether anything found is damage (``check`` exits 29), not only storage errors
        (exit 25: fixing the storage may well be all it takes)."""
        return len(self.errors) > self.storage_errors


class Checker:
    def __init__(
        self, repo: Repository, options: CheckOptions, reporter: Reporter = NULL_REPORTER
    ) -> None:
        self.repo = repo
        self.options = options
        self.reporter = reporter
        self.report = CheckReport()
        # Nothing here grows with the number of blobs: index files are read one at a time
        # and each blob's home pack and kind come from the LMDB index cache (which
        # ``sync_index`` derives from the same files) when the walk needs them. Held are
        # the packs the index names, and what is damaged:
        self.indexed: set[FileId] = set()
        # A pack missing or with an unreadable header: every blob whose home it is
        # (the copy readers use, per the index cache) is damaged; (why, blobs named).
        self.bad_packs: dict[FileId, tuple[str, int]] = {}
        self.unreadable_packs: set[FileId] = set()  # bad_packs the store refused to read
        self.damaged: dict[bytes, str] = {}  # one blob -> why
        # The index's records of packs whose header is unreadable: ``--read-data`` checks
        # their blobs through them (pack_scan falls back to the index).
        self.fallback: dict[FileId, bytes] = {}
        # Delta blobs (repo/delta.py) whose chain of bases was found broken, reported once.
        self._broken_chains: set[bytes] = set()

    def run(self) -> CheckReport:
        check_metadata(self.repo, self.report.errors, self.report.warnings)
        self._odd_entries()
        packs = self._check_packs()
        if not self.options.read_data:
            self._apply_walk(self._walk_snapshots())
            skipped_warnings(self.repo.backend)  # reported above as errors, once
            return self.report
        # The snapshot walk (load every tree, look every chunk up) runs in a thread while
        # the helpers read packs, where this process mostly waits: it cost ~1.2 s after
        # the reading. Damage found by the reading is named by walking again.
        walk = _Background(self._walk_snapshots)
        self._read_packs(packs, walk.start)
        found = walk.result()
        if self.damaged:
            found = self._walk_snapshots()
        self._apply_walk(found)
        skipped_warnings(self.repo.backend)  # reported above as errors, once
        return self.report

    def _odd_entries(self) -> None:
        """Whatever the storage holds besides the format's objects (a symlink, a FIFO, an
        unknown name or folder) is damage: planted, or left by something else. Named here,
        never followed, read or deleted by any command."""
        for name, why in odd_entries(self.repo.backend):
            self.report.errors.append(
                f"{name!r} {why}: not an object of the repository format (it was neither "
                "followed nor read nor deleted; remove it by hand if it is not yours)"
            )

    # ------------------------------------------------------------------ index
    def _live_index_files(self) -> list[FileId]:
        """The readable index files no other one supersedes; damaged ones are errors.

        Only each file's supersedes list is kept (files are decrypted again, one at a time,
        by ``_sections``): memory stays that of one index file."""
        readable: list[FileId] = []
        superseded: set[str] = set()
        for fid in self.repo.index_files():
            try:
                data = self.repo.get_encrypted(f"index/{fid}", Kind.INDEX)
                decode_index_records(data)  # the whole structure, so a damaged file is named
                supersedes = decode_supersedes(data)
            except CasError as exc:
                self._index_failed(fid, exc)
                continue
            del data
            readable.append(fid)
            superseded.update(supersedes)
        return [fid for fid in readable if fid not in superseded]

    def _index_failed(self, fid: FileId, exc: CasError) -> None:
        self.report.errors.append(_index_error(fid, exc))
        if isinstance(exc, StorageError):
            self.report.storage_errors += 1

    def _sections(self, files: list[FileId]) -> Iterator[tuple[FileId, bytes]]:
        """Every (pack, index records) of ``files``, one index file in memory at a time."""
        for fid in files:
            try:
                _, sections = self.repo.load_index_records(fid)
            except CasError as exc:  # read a moment ago: changed or gone since
                self._index_failed(fid, exc)
                continue
            yield from sections

    # ------------------------------------------------------------------ packs
    def _check_packs(self) -> dict[FileId, int]:
        """Every index entry against its pack's header; returns the indexed packs present."""
        present = {
            FileId(name.rsplit("/", 1)[1]): size for name, size in self.repo.backend.list("data/")
        }
        self.report.packs = len(present)
        for pack, records in self._sections(self._live_index_files()):
            self.indexed.add(pack)
            if pack in self.bad_packs:
                self._pack_damaged(pack, self.bad_packs[pack][0], records)
                continue
            if pack not in present:
                self._pack_damaged(pack, "is missing", records)
                continue
            try:
                header = read_header(
                    self.repo.backend.get, pack_name(pack), present[pack], self.repo.opener
                )
            except CasError as exc:
                if isinstance(exc, StorageError):
                    self.unreadable_packs.add(pack)
                self._pack_damaged(pack, f"has an unreadable header ({exc})", records)
                continue
            by_id = {e.id: e for e in header}
            for kind, blob_id, offset, stored_len, _raw in iter_records(records):
                e = by_id.get(BlobId(blob_id))
                if e is None or (e.offset, e.stored_len, e.kind) != (offset, stored_len, kind):
                    self._blob_damaged(blob_id, pack, "index and pack header disagree")
            del header, by_id
        for pack, (why, blobs) in sorted(self.bad_packs.items()):
            self.report.errors.append(f"pack {pack[:12]} {why}: {plural(blobs, 'blob')} affected")
            self.report.damaged_packs.add(pack)
            if pack in self.unreadable_packs:
                self.report.storage_errors += 1
        self.report.blobs = self.repo.cache.count()
        for pack in sorted(set(present) - self.indexed):
            self.report.warnings.append(
                f"pack {pack[:12]} is not in the index (left by an interrupted run; "
                "'repair index' adopts it; 'prune' removes it once it is an hour old)"
            )
        return {p: s for p, s in present.items() if p in self.indexed}

    def _pack_damaged(self, pack: FileId, why: str, records: bytes) -> None:
        """Every blob of ``pack`` is lost; those stored elsewhere too are read from there."""
        _, blobs = self.bad_packs.get(pack, (why, 0))
        self.bad_packs[pack] = (why, blobs + len(records) // RECORD_SIZE)
        if why.startswith("has an unreadable header"):
            self.fallback[pack] = self.fallback.get(pack, b"") + records

    def _blob_damaged(self, blob_id: bytes, pack: str, why: str) -> None:
        self.report.damaged_packs.add(pack)
        home = self.repo.cache.get(blob_id)
        if home is None or home.pack == pack:  # a copy elsewhere is the one readers use
            self.damaged[blob_id] = f"pack {pack[:12]}: {why}"

    def _damage(self, blob_id: bytes, loc: Location | None) -> str | None:
        """Why the copy of a blob that readers use (``loc``, from the index cache) is lost."""
        why = self.damaged.get(blob_id)
        if why is None and loc is not None and loc.pack in self.bad_packs:
            why = f"pack {loc.pack[:12]} {self.bad_packs[loc.pack][0]}"
        return why

    def _chain_damage(self, blob_id: bytes, loc: Location) -> str | None:
        """Why a DELTA or TREE_DELTA blob cannot be resolved (a base missing from the index,
        damaged, or a chain too deep, looping or mixing kinds), or None. Follows the index
        cache's bases: at most ``delta.MAX_DEPTH`` look-ups, nothing held. A broken chain
        becomes damage of the delta (``self.damaged``), so every later snapshot naming it
        is walked too."""
        why = None
        link = loc
        for _ in range(delta.MAX_DEPTH + 1):
            if link.kind != loc.kind:
                break
            base = link.base
            link = self.repo.cache.get(base) if base is not None else None
            if link is None:
                why = f"its base {base.hex()[:12] if base else '?'} is missing from the index"
                break
            damage = self._damage(base, link)  # type: ignore[arg-type]
            if damage is not None:
                why = f"its base {base.hex()[:12]} is damaged ({damage})"  # type: ignore[union-attr]
                break
        else:
            why = f"its delta chain is longer than {delta.MAX_DEPTH} or loops"
        if why is None and link is not None and link.kind != FULL_KIND[loc.kind]:
            why = f"its delta chain ends in a {link.kind.name} blob"
        if why is not None:
            why = f"delta blob {blob_id.hex()[:12]} cannot be read: {why}"
            self.damaged[blob_id] = why
            if blob_id not in self._broken_chains:
                self._broken_chains.add(blob_id)
                self.report.errors.append(why)
        return why

    def _verify_deltas(self, pack: FileId, deltas: list[bytes]) -> None:
        """--read-data: resolve each delta of a pack just read through its chain of bases;
        the full plaintext must hash to the delta's id (``Repository.load_blob``)."""
        for blob_id in deltas:
            if blob_id in self.damaged:
                continue
            try:
                self.repo.load_blob(BlobId(blob_id))  # a DELTA or a TREE_DELTA
            except CasError as exc:
                self.report.errors.append(f"delta blob {blob_id.hex()[:12]}: {exc}")
                self._blob_damaged(blob_id, pack, f"cannot be resolved ({exc})")

    def _read_packs(self, packs: dict[FileId, int], on_started: Callable[[], None]) -> None:
        """Read the chosen packs; ``on_started`` runs once the helper processes exist."""
        chosen = (self.options.subset or Subset()).choose(packs)
        state = load_check_state(self.repo, self.report.warnings)
        limit = self.options.max_duration
        if limit is not None:
            chosen = state.order(chosen)
        progress = Progress(
            phase="read data", files_total=len(chosen), bytes_total=sum(packs[p] for p in chosen)
        )
        started = time.monotonic()

        def jobs() -> Iterator[tuple[FileId, int, bytes]]:
            for i, pack in enumerate(chosen):
                if limit is not None and i and time.monotonic() - started >= limit:
                    return  # at least one pack per run, so a tiny budget still makes progress
                yield pack, packs[pack], self.fallback.get(pack, b"")

        read: list[FileId] = []
        # closing(): an exception here (Ctrl-C, SIGTERM in a progress report) must shut the
        # helper pool down now, while its handler threads run. Left to the garbage collector,
        # the generator's pool.terminate() ran at interpreter exit, after the pool's daemon
        # threads had stopped, and waited forever for a queue lock an idle helper holds.
        verdicts = _verify_all(self.repo, jobs(), self.options.workers, on_started)
        with contextlib.closing(verdicts):
            for pack, verdict in verdicts:
                self._apply(pack, verdict)
                read.append(pack)
                progress.files_done += 1
                progress.bytes_done += packs[pack]
                self.reporter.progress(progress)
        on_started()  # no pack to read: the helpers never started
        state.record(read, self.report.damaged_packs, int(time.time()))
        try:
            save_check_state(self.repo, state, packs)
        except CasError as exc:
            self.report.warnings.append(f"could not record which packs were verified: {exc}")
        verdicts = [state.packs[p] for p in packs if p in state.packs]
        self.report.packs_never_verified = len(packs) - len(verdicts)
        self.report.oldest_verified = min((v.verified for v in verdicts), default=None)

    def _apply(self, pack: FileId, verdict: PackVerdict) -> None:
        self.report.errors.extend(verdict.errors)
        if verdict.unreadable:
            self.report.storage_errors += len(verdict.errors)
        if verdict.bytes_read is not None:
            self.report.packs_read += 1
            self.report.bytes_read += verdict.bytes_read
        for blob_id, why in verdict.damaged:
            self._blob_damaged(blob_id, pack, why)
        self._verify_deltas(pack, verdict.deltas)

    # ------------------------------------------------------------------ snapshots
    def _apply_walk(self, walk: _Walk) -> None:
        self.report.errors.extend(walk.errors)
        self.report.storage_errors += walk.storage_errors
        self.report.snapshots = walk.snapshots
        self.report.trees = walk.trees
        self.report.affected.update(walk.affected)

    def _walk_snapshots(self) -> _Walk:
        """Walk every snapshot's trees: each must load, and each chunk be indexed.

        In time linear in the repository: the walk spills every (chunk, file) reference
        by the chunk's first byte; each bucket is then resolved against a sorted range of
        the index cache (``_resolve``), not one B-tree descent per chunk (at 5 million
        chunks those descents were page faults, 9x the time of 1 million). Only when
        something is wrong are the snapshots walked again to name it (``_name_damage``)."""
        warnings: list[str] = []
        snaps, storage = self._snapshots(warnings)
        refs = RecordSpill(32 + _FILE_NO.size, ID_BUCKETS)
        try:
            trees, unreadable, remaining, suspect = self._collect(snaps, refs)
            bad = self._resolve(refs, remaining)
        finally:
            refs.close()
        if (
            not unreadable
            and not suspect
            and not bad
            and not any(remaining)
            and not self.damaged
            and not self.bad_packs
        ):
            return _Walk(errors=warnings, snapshots=len(snaps), trees=trees, storage_errors=storage)
        return self._name_damage(
            snaps,
            _Walk(errors=warnings, snapshots=len(snaps), storage_errors=storage),
            bad,
            remaining,
        )

    def _snapshots(self, errors: list[str]) -> tuple[list[Any], int]:
        """Every usable snapshot, oldest first, as ``list_snapshots``: each unreadable one
        is an error in ``errors``; returns them and how many of those errors the store
        refusing the read caused (storage errors, not damage)."""
        snaps = []
        storage = 0
        for fid in self.repo.usable_snapshot_ids(self.repo.snapshot_ids()):
            try:
                snaps.append(self.repo.load_snapshot(fid))
            except CasError as exc:
                errors.append(f"snapshot {fid[:8]} is unreadable: {exc}")
                storage += isinstance(exc, StorageError)
        snaps.sort(key=lambda s: (s.start_ns, s.id))
        return snaps, storage

    def _collect(self, snaps: list[Any], refs: RecordSpill) -> tuple[int, bool, array[int], bool]:
        """Load every tree once; spill (chunk id, file number) of every file of every tree;
        returns (trees, whether one was unreadable, per file number its recorded size,
        whether a file node is wrong by itself). File numbers follow the walk's order,
        which ``_name_damage`` repeats."""
        seen: set[bytes] = set()
        unreadable: set[bytes] = set()
        remaining: array[int] = array("q")
        suspect = False
        add = refs.add
        for snap in snaps:
            stack: list[BlobId] = [snap.root]
            while stack:
                tree_id = stack.pop()
                if tree_id in seen or tree_id in unreadable:
                    continue
                try:
                    nodes = self._load_tree(tree_id)
                except CasError:
                    unreadable.add(tree_id)
                    continue
                seen.add(tree_id)
                for node in nodes:
                    if node.kind == NodeKind.FILE:
                        tag = _FILE_NO.pack(len(remaining))
                        remaining.append(min(node.size, _SIZE_CAP))
                        for chunk in node.content:
                            add(chunk[0], chunk + tag)
                        if not suspect and file_node_problem(node) is not None:
                            suspect = True
                    if node.subtree is not None:
                        stack.append(node.subtree)
        return len(seen), bool(unreadable), remaining, suspect

    def _resolve(self, refs: RecordSpill, remaining: array[int]) -> dict[bytes, str | None]:
        """Bucket by bucket: every referenced chunk's location from the index cache; each
        file's recorded size less its chunks' raw sizes goes to ``remaining`` (0 when they
        agree). Returns {chunk: why it is damaged, or None when it is not in the index}."""
        bad: dict[bytes, str | None] = {}
        bad_packs = {bytes.fromhex(p) for p in self.bad_packs}
        size = refs.record_size
        for bucket in range(ID_BUCKETS):
            data = refs.read(bucket)
            if not data:
                continue
            ids = sorted({data[i : i + 32] for i in range(0, len(data), size)})
            found = self.repo.cache.raw_values(ids)
            for blob_id in ids:
                value = found.get(blob_id)
                if value is None:
                    bad[blob_id] = None
                    continue
                why = self.damaged.get(blob_id)
                if why is None and bad_packs and value[:32] in bad_packs:
                    why = self._damage(blob_id, Location.decode(value))
                if why is None and value[_KIND_AT] == Kind.DELTA:
                    why = self._chain_damage(blob_id, Location.decode(value))
                if why is not None:
                    bad[blob_id] = why
            del ids
            for i in range(0, len(data), size):
                value = found.get(data[i : i + 32])
                if value is not None:
                    (f,) = _FILE_NO.unpack_from(data, i + 32)
                    remaining[f] -= _RAW_LEN.unpack_from(value, _RAW_LEN_AT)[0]
        return bad

    def _name_damage(
        self, snaps: list[Any], out: _Walk, bad: dict[bytes, str | None], remaining: array[int]
    ) -> _Walk:
        """Walk again, naming each unreadable folder, each wrong file node and each file
        that needs a chunk missing from the index or damaged (``bad``, from ``_resolve``;
        ``remaining``: per file number, its recorded size less its chunks' sizes)."""
        seen_trees: set[bytes] = set()
        bad_trees: dict[bytes, str] = {}
        file_no = 0
        for snap in snaps:
            affected: list[str] = []
            stack: list[tuple[BlobId, bytes]] = [(snap.root, b"")]
            while stack:
                tree_id, prefix = stack.pop()
                if tree_id in bad_trees:
                    affected.append(f"{os.fsdecode(prefix) or '/'} (folder unreadable)")
                    continue
                fresh = tree_id not in seen_trees
                if not fresh and not self.damaged and not self.bad_packs:
                    continue  # an unchanged subtree already checked under another snapshot
                try:
                    nodes = self._load_tree(tree_id)
                except CasError as exc:
                    bad_trees[tree_id] = str(exc)
                    out.errors.append(
                        f"snapshot {snap.short_id}: tree of {os.fsdecode(prefix) or '/'} is unreadable: {exc}"
                    )
                    if isinstance(exc, StorageError):  # its pack could not be read
                        out.storage_errors += 1
                    affected.append(f"{os.fsdecode(prefix) or '/'} (folder unreadable)")
                    continue
                files = [n for n in nodes if n.kind == NodeKind.FILE]
                if fresh:
                    seen_trees.add(tree_id)
                    out.trees += 1
                    for node in files:
                        known = not any(bad.get(c, "") is None for c in node.content)
                        chunks_hold = (
                            min(node.size, _SIZE_CAP) - remaining[file_no] if known else None
                        )
                        file_no += 1
                        problem = file_node_problem(
                            node, None if chunks_hold is None else [chunks_hold]
                        )
                        if problem is not None:
                            path = (prefix + b"/" + node.name).decode(errors="replace")
                            out.errors.append(f"snapshot {snap.short_id}: {path}: {problem}")
                            affected.append(path)
                for node in nodes:
                    if node.subtree is not None:
                        stack.append((node.subtree, prefix + b"/" + node.name))
                for node in files:
                    path = prefix + b"/" + node.name
                    for chunk in node.content:
                        if chunk not in bad:
                            continue
                        if bad[chunk] is None and fresh:
                            out.errors.append(
                                f"snapshot {snap.short_id}: {os.fsdecode(path)} needs a chunk that is not in the index"
                            )
                        affected.append(os.fsdecode(path))
                        break
            if affected:
                out.affected[snap.id] = sorted(set(affected))
        return out

    def _load_tree(self, tree_id: BlobId):  # type: ignore[no-untyped-def]
        loc = self.repo.cache.get(tree_id)
        why = self._damage(tree_id, loc)
        if why is not None:
            if (
                tree_id not in self.damaged
                and loc is not None
                and loc.pack in self.unreadable_packs
            ):
                raise StorageError(why)  # not damage: the store refused to read its pack
            raise CasError(why)
        if loc is None:
            raise CasError("tree is not in the index")
        if loc.kind not in (Kind.TREE, Kind.TREE_DELTA):
            raise CasError("index says this tree is a data blob")
        if loc.kind == Kind.TREE_DELTA:
            why = self._chain_damage(tree_id, loc)  # a base missing or damaged, named
            if why is not None:
                raise CasError(why)
        try:
            return self.repo.load_tree(
                tree_id, cached=False
            )  # the repository's copy, not a cache's
        finally:
            # Each tree costs two random look-ups (here and in load_blob). With the cache's
            # file warm in the page cache, a fault maps whole large folios around the leaf:
            # 486 trees between releases every 256 visits took a 5M-entry check to 382 MiB
            # of PSS (50-72 MiB with a colder file). A release is ~2 us a tree.
            self.repo.cache.release_pages()


def _index_error(fid: FileId, exc: CasError) -> str:
    """An index file that could not be used. One the store cannot read (permissions, I/O)
    is not called damaged: rebuilding the index would not help, fixing the storage would."""
    if isinstance(exc, StorageError):
        return f"index file {fid[:12]} cannot be read: {exc} (fix the storage; the file may well be intact)"
    return f"index file {fid[:12]} is damaged: {exc} (run 'casbackup repair index')"


@dataclass
class _Walk:
    """What walking the snapshots found."""

    errors: list[str] = field(default_factory=list)
    snapshots: int = 0
    trees: int = 0
    affected: dict[str, list[str]] = field(default_factory=dict)
    storage_errors: int = 0  # of errors, those a storage error caused (CheckReport's)


class _Background:
    """Runs ``fn`` in a thread from ``start`` on; ``result`` returns or raises its outcome."""

    def __init__(self, fn: Callable[[], _Walk]) -> None:
        self._fn = fn
        self._thread: threading.Thread | None = None
        self._result: _Walk | None = None
        self._error: BaseException | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = quiet_thread(self._run, name="check-walk")
            self._thread.start()

    def _run(self) -> None:
        try:
            self._result = self._fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            self._error = exc

    def result(self) -> _Walk:
        self.start()
        assert self._thread is not None
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


_helper_repo: Repository | None = None  # set in each helper process (inherited by fork)


def _helper_start(repo: Repository, parent: int) -> None:
    global _helper_repo
    procs.become_helper(parent)
    _helper_repo = repo


def _helper_verify(job: tuple[FileId, int, bytes]) -> PackVerdict:
    assert _helper_repo is not None
    return verify_pack(_helper_repo, *job)


def _verify_all(
    repo: Repository,
    jobs: Iterator[tuple[FileId, int, bytes]],
    workers: int,
    started: Callable[[], None],
) -> Iterator[tuple[FileId, PackVerdict]]:
    """Verify packs, in order, in ``workers`` helper processes.

    Decrypting and hashing a pack is CPU-bound and the GIL would leave other cores
    idle. This process only hands out packs and collects verdicts: when it verified
    packs itself as well, its GIL-bound work delayed the pool's hand-offs and the
    helper sat idle (measured: 1.6x slower). Each helper holds about one blob in
    memory (``pack_scan``); ``--workers 1`` verifies here with no helper, for the
    smallest footprint.
    """
    # Helpers are forked: a backend whose client runs its own threads (S3's obstore
    # runtime) hangs in a forked child, so such a backend is read here.
    if workers <= 1 or not getattr(repo.backend, "fork_safe", True):
        started()
        for job in jobs:
            yield job[0], verify_pack(repo, *job)
        return
    gc.freeze()  # what this process holds stays shared with the helpers instead of copied
    try:
        # The pool's handler threads inherit this thread's mask: blocked, so that a stop
        # signal reaches the main thread waiting in result.get() (casbackup/threadsig.py).
        with stop_signals_blocked():
            pool = procs.context().Pool(workers, _helper_start, (repo, os.getpid()))
    finally:
        gc.unfreeze()
    started()  # after the fork: no thread of ours may hold a lock a helper inherits
    try:
        pending: deque[tuple[FileId, Any]] = deque()
        for job in jobs:
            pending.append((job[0], pool.apply_async(_helper_verify, (job,))))
            if len(pending) > 2 * workers:  # bounded: a few packs in flight at a time
                pack, result = pending.popleft()
                yield pack, result.get()
        while pending:
            pack, result = pending.popleft()
            yield pack, result.get()
        pool.close()
    finally:
        pool.terminate()
        pool.join()


def check(
    repo: Repository, options: CheckOptions, reporter: Reporter = NULL_REPORTER
) -> CheckReport:
    return Checker(repo, options, reporter).run()
