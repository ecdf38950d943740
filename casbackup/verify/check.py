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
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Any

from casbackup import procs
from casbackup.errors import CasError, LockError, StorageError, UsageError
from casbackup.repo import delta
from casbackup.repo.ids import FULL_KIND, BlobId, FileId, Kind
from casbackup.repo.index import (
    RECORD_SIZE,
    Location,
    decode_index_records,
    decode_supersedes,
    iter_records,
)
from casbackup.repo.pack import HeaderColumns, pack_name, read_header_columns
from casbackup.repo.repository import Repository
from casbackup.reporter import NULL_REPORTER, Progress, Reporter
from casbackup.store.base import odd_entries, skipped_warnings
from casbackup.threadsig import stop_signals_blocked
from casbackup.units import plural
from casbackup.verify.check_state import load_check_state, save_check_state
from casbackup.verify.check_walk import BackgroundWalk, SnapshotWalk, WalkResult
from casbackup.verify.metacheck import check_metadata
from casbackup.verify.pack_scan import PackVerdict, verify_pack


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
    # Of damaged_packs, those the store refused to read (not damage: repair would not help).
    unreadable_packs: set[str] = field(default_factory=set)
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
    def repairable_packs(self) -> list[str]:
        """Damaged (or missing) packs that ``repair packs`` salvages, sorted."""
        return sorted(self.damaged_packs - self.unreadable_packs)

    @property
    def damaged(self) -> bool:
        """Whether anything found is damage (``check`` exits 29), not only storage errors
        (exit 25: fixing the storage may well be all it takes)."""
        return len(self.errors) > self.storage_errors


class Checker(SnapshotWalk):
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
            return self._held_throughout()
        # The snapshot walk (load every tree, look every chunk up) runs in a thread while
        # the helpers read packs, where this process mostly waits: it cost ~1.2 s after
        # the reading. Damage found by the reading is named by walking again.
        walk = BackgroundWalk(self._walk_snapshots)
        self._read_packs(packs, walk.start)
        found = walk.result()
        if self.damaged:
            found = self._walk_snapshots()
        self._apply_walk(found)
        skipped_warnings(self.repo.backend)  # reported above as errors, once
        return self._held_throughout()

    def _held_throughout(self) -> CheckReport:
        """The report, unless it found problems after this check's lock was taken for
        stale (paused past the limit, a clock behind): another client's prune may have
        run under it, and what looks missing may have been moved or rightly deleted. Then
        LockError (exit 11) says to check again, instead of reporting damage."""
        if self.report.errors:
            try:
                self.repo.confirm_locks(renew=False)
            except LockError:
                raise LockError(
                    "this check's repository lock was removed by another client while it ran "
                    "(it looked stale: paused past the stale limit, a clock behind, or "
                    f"'casbackup unlock --remove-all'): the {plural(len(self.report.errors), 'problem')} "
                    "it found may be that client's prune, not damage; run check again"
                ) from None
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
                header = read_header_columns(
                    self.repo.backend.get, pack_name(pack), present[pack], self.repo.opener
                )
            except CasError as exc:
                if isinstance(exc, StorageError):
                    self.unreadable_packs.add(pack)
                self._pack_damaged(pack, f"has an unreadable header ({exc})", records)
                continue
            self._compare(pack, records, header)
            del header
        for pack, (why, blobs) in sorted(self.bad_packs.items()):
            self.report.errors.append(f"pack {pack[:12]} {why}: {plural(blobs, 'blob')} affected")
            self.report.damaged_packs.add(pack)
            if pack in self.unreadable_packs:
                self.report.storage_errors += 1
                self.report.unreadable_packs.add(pack)
        self.report.blobs = self.repo.cache.count()
        for pack in sorted(set(present) - self.indexed):
            self.report.warnings.append(
                f"pack {pack[:12]} is not in the index (left by an interrupted run; "
                "'repair index' adopts it; 'prune' removes it once it is an hour old)"
            )
        return {p: s for p, s in present.items() if p in self.indexed}

    def _compare(self, pack: FileId, records: bytes, header: HeaderColumns) -> None:
        """Every index record of ``pack`` must match its header's entry for that blob (the
        last one, should the header name a blob twice) in offset, stored length and kind.

        Compared as bytes when the index lists the pack's blobs in the header's order (as
        backup and prune write them), else as sets of tuples built by ``zip``: no Python
        step per blob (a PackEntry and a loop step each were 40% of ``check``'s CPU time).
        Only a pack that disagrees is gone through record by record, so that each blob is
        named in index order, as before."""
        if records and _same_as_header(records, header):
            return
        cols = zip(header.offsets, header.stored, header.kinds, strict=True)
        by_id = dict(zip(header.ids, cols, strict=True))
        if records:
            kinds, ids, offsets, stored, _raw = zip(*iter_records(records), strict=True)
            index = zip(ids, zip(offsets, stored, kinds, strict=True), strict=True)
            if by_id.items() >= set(index):
                return
        wrong = 0
        for kind, blob_id, offset, stored_len, _raw in iter_records(records):
            if by_id.get(blob_id) != (offset, stored_len, kind):
                self._blob_damaged(blob_id, pack, "index and pack header disagree")
                wrong += 1
        # An error of its own: the files it leaves damaged are named by the walk, but a
        # check that named them and still said "no errors were found" (exit 0) hid it.
        if wrong:
            self.report.errors.append(
                f"pack {pack[:12]}: the index and the pack's header disagree on "
                f"{plural(wrong, 'blob')} (run 'casbackup repair index --read-all-packs')"
            )

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
            phase="read data",
            files_total=len(chosen),
            bytes_total=sum(packs[p] for p in chosen),
            unit="pack",
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
            self.report.unreadable_packs.add(pack)
        if verdict.bytes_read is not None:
            self.report.packs_read += 1
            self.report.bytes_read += verdict.bytes_read
        for blob_id, why in verdict.damaged:
            self._blob_damaged(blob_id, pack, why)
        self._verify_deltas(pack, verdict.deltas)

    def _apply_walk(self, walk: WalkResult) -> None:
        self.report.errors.extend(walk.errors)
        self.report.storage_errors += walk.storage_errors
        self.report.snapshots = walk.snapshots
        self.report.trees = walk.trees
        self.report.affected.update(walk.affected)


# An index record split around its offset: (kind | id, stored_len | raw_len), (offset,).
_AROUND_OFFSET = struct.Struct("33s4x8s")
_OFFSET = struct.Struct(">33xI8x")


def _same_as_header(records: bytes, header: HeaderColumns) -> bool:
    """Whether index ``records`` are exactly the header's entries, in its order (the
    records less their offsets are the header's entry bytes, and the offsets its own),
    each blob named once."""
    if len(records) // RECORD_SIZE != len(header.ids):
        return False
    if b"".join(chain.from_iterable(_AROUND_OFFSET.iter_unpack(records))) != header.body:
        return False
    if list(map(_FIRST, _OFFSET.iter_unpack(records))) != header.offsets:
        return False
    # A header naming a blob twice is held to its last entry for that blob, as always.
    return len(set(header.ids)) == len(header.ids)


_FIRST = itemgetter(0)


def _index_error(fid: FileId, exc: CasError) -> str:
    """An index file that could not be used. One the store cannot read (permissions, I/O)
    is not called damaged: rebuilding the index would not help, fixing the storage would."""
    if isinstance(exc, StorageError):
        return f"index file {fid[:12]} cannot be read: {exc} (fix the storage; the file may well be intact)"
    return f"index file {fid[:12]} is damaged: {exc} (run 'casbackup repair index')"


_helper_repo: Repository | None = None  # set in each helper process (inherited by fork)


def _helper_start(repo: Repository, parent: int) -> None:
    global _helper_repo
    procs.become_helper(parent)
    _helper_repo = repo


def _helper_verify(job: tuple[FileId, int, bytes]) -> PackVerdict:
    assert _helper_repo is not None
    return verify_pack(_helper_repo, *job)


#: Packs of an object store verified at once, by threads of this process: each pack is
#: a round trip or two (its tail, then its body), and one after the other they left the
#: store's latency between every two (measured: 60 packs of 1 MiB on SeaweedFS with 20
#: ms added per get, 5.7 s one at a time; see the commit). Memory: a window each.
REMOTE_PACKS = 4


def _verify_in_threads(
    repo: Repository, jobs: Iterator[tuple[FileId, int, bytes]], threads: int
) -> Iterator[tuple[FileId, PackVerdict]]:
    """Verify packs, in order, on ``threads`` daemon threads (archiver/readpool.py: a stop
    or an error does not wait for a get that hangs); at most ``2 * threads`` in flight."""
    from casbackup.archiver.readpool import ReaderPool

    pool = ReaderPool(threads, "check-pack")
    done = False
    try:
        pending: deque[tuple[FileId, Any]] = deque()
        for job in jobs:
            pending.append((job[0], pool.submit(verify_pack, repo, *job)))
            if len(pending) > 2 * threads:
                pack, future = pending.popleft()
                yield pack, future.result()
        while pending:
            pack, future = pending.popleft()
            yield pack, future.result()
        done = True
    finally:
        pool.shutdown(wait=done, cancel_futures=True)


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
    if workers <= 1:
        started()
        for job in jobs:
            yield job[0], verify_pack(repo, *job)
        return
    # Helpers are forked: a backend whose client runs its own threads (S3's obstore
    # runtime) hangs in a forked child, so such a backend is read here, by threads.
    if not getattr(repo.backend, "fork_safe", True):
        started()
        yield from _verify_in_threads(repo, jobs, max(workers, REMOTE_PACKS))
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
    done = False
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
        done = True
    finally:
        if done:  # the helpers read their end-of-work marks and exit on their own
            pool.close()
        else:  # stopped early (an error, a stop): end them now
            pool.terminate()
        pool.join()


def check(
    repo: Repository, options: CheckOptions, reporter: Reporter = NULL_REPORTER
) -> CheckReport:
    return Checker(repo, options, reporter).run()
