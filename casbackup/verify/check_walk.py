"""``check``'s walk of the snapshots: every tree loads, every chunk is indexed, and when
something is wrong, every affected file is named (a mixin of ``check.Checker``).

The walk spills (chunk, file) references by the chunk's first byte and resolves each bucket
against a sorted range of the index cache, so its time is linear in the repository and its
memory does not grow with it; only when damage was found are the snapshots walked again.
"""

from __future__ import annotations

import os
import struct
import threading
from array import array
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from casbackup.errors import CasError, IntegrityError, StorageError
from casbackup.maintenance.spill import ID_BUCKETS, RecordSpill
from casbackup.repo.ids import BlobId, FileId, Kind, check_name
from casbackup.repo.index import Location
from casbackup.repo.nodecheck import file_node_problem
from casbackup.repo.pack import open_blob, pack_name, parse_pack_tail
from casbackup.repo.repository import Repository
from casbackup.repo.tree import NodeKind, decode_tree
from casbackup.repo.treecache import PREFETCH_MAX
from casbackup.store.base import is_remote
from casbackup.threadsig import quiet_thread

_FILE_NO = struct.Struct(">Q")  # a file's number in the walk, after its chunk id
_REF = struct.Struct(">32sQ")  # a spilled reference: chunk id, file number
# Where an index cache value (``Location.encode``: pack, offset, stored, raw, kind) holds
# the raw length (big-endian u32) and the kind.
_RAW_LEN_OF = itemgetter(slice(40, 44))
_KIND_AT = 44
_KIND_OF = itemgetter(_KIND_AT)
# A file's recorded size as ``_collect`` holds it (a signed 64-bit slot): no sum of chunk
# sizes comes near it, so a forged size of 2**64-1 still disagrees with its chunks.
_SIZE_CAP = 1 << 62
# A folder whose tree cannot be read, as ``_name_damage`` keeps it relative to the tree.
_UNREADABLE = b" (folder unreadable)"


def _display(path: bytes) -> str:
    """A path relative to a snapshot's root as check prints it ('/' for the root)."""
    return os.fsdecode(b"/" + path if path.startswith(_UNREADABLE) else path)


@dataclass
class WalkResult:
    """What walking the snapshots found."""

    errors: list[str] = field(default_factory=list)
    snapshots: int = 0
    trees: int = 0
    affected: dict[str, list[str]] = field(default_factory=dict)
    storage_errors: int = 0  # of errors, those a storage error caused (CheckReport's)


class BackgroundWalk:
    """Runs ``fn`` in a thread from ``start`` on; ``result`` returns or raises its outcome."""

    def __init__(self, fn: Callable[[], WalkResult]) -> None:
        self._fn = fn
        self._thread: threading.Thread | None = None
        self._result: WalkResult | None = None
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

    def result(self) -> WalkResult:
        self.start()
        assert self._thread is not None
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


# Whole tree packs kept while walking an object store's trees (each at most
# treecache.PREFETCH_MAX): a backup writes a folder's trees together, so a walk comes back to
# the same few packs.
TREE_PACKS = 8


class _TreePacks:
    """The walk's trees read from an object store a whole tree pack at a time.

    Each tree was one ranged get: a round trip per folder (``check`` of a repository of
    100,000 folders on a store 20 ms away: over half an hour before any data is read). A
    small pack holding trees only is now fetched whole once (its name checked against its
    bytes) and each tree sliced from it, decrypted and checked against its id as
    ``load_tree`` does; anything else (a local folder, a big or mixed pack, a TREE_DELTA,
    a pack that cannot be read or fails its name) goes the usual way, which then reports
    exactly what is wrong. Holds at most TREE_PACKS packs."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.remote = is_remote(repo.backend)
        self.packs: OrderedDict[FileId, bytes] = OrderedDict()
        self.other: set[FileId] = set()  # packs not read whole (big, mixed, unreadable)

    def tree(self, tree_id: BlobId, loc: Location) -> list[Any] | None:
        """The tree's nodes, or None when it is to be read the usual way. Raises
        IntegrityError when its slice of a sound pack does not open or match its id."""
        if not self.remote or loc.kind != Kind.TREE or loc.pack in self.other:
            return None
        data = self.packs.get(loc.pack)
        if data is None:
            data = self._fetch(loc.pack)
            if data is None:
                self.other.add(loc.pack)
                return None
            self.packs[loc.pack] = data
            if len(self.packs) > TREE_PACKS:
                self.packs.popitem(last=False)
        else:
            self.packs.move_to_end(loc.pack)
        envelope = data[loc.offset : loc.offset + loc.stored_len]
        plain = open_blob(self.repo.opener, Kind.TREE, tree_id, loc.pack, envelope, loc.raw_len)
        if self.repo.blob_id(plain) != tree_id:
            raise IntegrityError(f"tree {tree_id.hex()[:16]} does not match its id")
        return decode_tree(plain)

    def _fetch(self, pack: FileId) -> bytes | None:
        name = pack_name(pack)
        try:
            if self.repo.backend.stat(name) > PREFETCH_MAX:
                return None
            data = self.repo.backend.get(name)
            check_name(name, data)
            entries = parse_pack_tail(self.repo.opener, data, len(data))[1]
        except CasError:
            return None
        if any(e.kind not in (Kind.TREE, Kind.TREE_DELTA) for e in entries):
            return None
        return data


class SnapshotWalk:
    """The snapshot half of ``Checker``: what it needs from the checker is declared here."""

    repo: Repository
    _tree_packs: _TreePacks
    damaged: dict[bytes, str]
    bad_packs: dict[FileId, tuple[str, int]]
    unreadable_packs: set[FileId]

    if TYPE_CHECKING:

        def _damage(self, blob_id: bytes, loc: Location | None) -> str | None: ...

        def _chain_damage(self, blob_id: bytes, loc: Location) -> str | None: ...

    def _walk_snapshots(self) -> WalkResult:
        """Walk every snapshot's trees: each must load, and each chunk be indexed.

        In time linear in the repository: the walk spills every (chunk, file) reference
        by the chunk's first byte; each bucket is then resolved against a sorted range of
        the index cache (``_resolve``), not one B-tree descent per chunk (at 5 million
        chunks those descents were page faults, 9x the time of 1 million). Only when
        something is wrong are the snapshots walked again to name it (``_name_damage``)."""
        warnings: list[str] = []
        self._tree_packs = _TreePacks(self.repo)
        snaps, storage = self._snapshots(warnings)
        refs = RecordSpill(_REF.size, ID_BUCKETS)
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
            return WalkResult(
                errors=warnings, snapshots=len(snaps), trees=trees, storage_errors=storage
            )
        return self._name_damage(
            snaps,
            WalkResult(errors=warnings, snapshots=len(snaps), storage_errors=storage),
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
                records: list[bytes] = []  # the tree's, spilled at once (no call per chunk)
                for node in nodes:
                    if node.kind == NodeKind.FILE:
                        tag = _FILE_NO.pack(len(remaining))
                        remaining.append(min(node.size, _SIZE_CAP))
                        records += [chunk + tag for chunk in node.content]
                        if not suspect and file_node_problem(node) is not None:
                            suspect = True
                    if node.subtree is not None:
                        stack.append(node.subtree)
                refs.add_by_first_byte(records)
        return len(seen), bool(unreadable), remaining, suspect

    def _resolve(self, refs: RecordSpill, remaining: array[int]) -> dict[bytes, str | None]:
        """Bucket by bucket: every referenced chunk's location from the index cache; each
        file's recorded size less its chunks' raw sizes goes to ``remaining`` (0 when they
        agree). Returns {chunk: why it is damaged, or None when it is not in the index}."""
        bad: dict[bytes, str | None] = {}
        bad_packs = {bytes.fromhex(p) for p in self.bad_packs}
        for bucket in range(ID_BUCKETS):
            data = refs.read(bucket)
            if not data:
                continue
            # Columns by zip and map, not a loop step per record: at millions of chunks
            # each Python step here costs seconds.
            ids, files = zip(*_REF.iter_unpack(data), strict=True)
            del data
            unique = set(ids)
            found = self.repo.cache.raw_values(sorted(unique))
            for blob_id in unique.difference(found):
                bad[blob_id] = None
            del unique
            if self.damaged or bad_packs or Kind.DELTA in bytes(map(_KIND_OF, found.values())):
                # Something is damaged, or a chunk is a delta (its chain): chunk by chunk.
                for blob_id, value in found.items():
                    why = self.damaged.get(blob_id)
                    if why is None and bad_packs and value[:32] in bad_packs:
                        why = self._damage(blob_id, Location.decode(value))
                    if why is None and value[_KIND_AT] == Kind.DELTA:
                        why = self._chain_damage(blob_id, Location.decode(value))
                    if why is not None:
                        bad[blob_id] = why
            raw = dict(
                zip(found, map(int.from_bytes, map(_RAW_LEN_OF, found.values())), strict=True)
            )
            del found
            for f, n in zip(files, map(raw.get, ids, repeat(0)), strict=True):
                remaining[f] -= n
        return bad

    def _name_damage(
        self, snaps: list[Any], out: WalkResult, bad: dict[bytes, str | None], remaining: array[int]
    ) -> WalkResult:
        """Walk again, naming each unreadable folder, each wrong file node and each file
        that needs a chunk missing from the index or damaged (``bad``, from ``_resolve``;
        ``remaining``: per file number, its recorded size less its chunks' sizes), under
        every snapshot that holds it.

        Each tree is loaded once; what is wrong below it is kept as paths relative to it
        (``findings``), so a later snapshot sharing the subtree names the same files under
        its own paths without loading it again. Fresh trees are visited in ``_collect``'s
        order, which file numbers follow."""
        findings: dict[bytes, tuple[bytes, ...]] = {}  # tree id -> affected paths below it
        file_no = 0
        for snap in snaps:
            # ("enter", tree, path) loads a tree the first time; ("exit", tree, children)
            # combines its own findings with its children's, once they are all known.
            own: dict[bytes, list[bytes]] = {}
            work: list[tuple[str, BlobId, Any]] = [("enter", snap.root, b"")]
            while work:
                op, tree_id, arg = work.pop()
                if op == "exit":
                    found = own.pop(tree_id)
                    for name, sub in arg:
                        found.extend(b"/" + name + p for p in findings.get(sub, ()))
                    findings[tree_id] = tuple(found)
                    continue
                if tree_id in findings or tree_id in own:
                    continue  # known already (or, in a forged cycle, being walked)
                prefix = arg
                try:
                    nodes = self._load_tree(tree_id)
                except CasError as exc:
                    out.errors.append(
                        f"snapshot {snap.short_id}: tree of {os.fsdecode(prefix) or '/'} is unreadable: {exc}"
                    )
                    if isinstance(exc, StorageError):  # its pack could not be read
                        out.storage_errors += 1
                    findings[tree_id] = (_UNREADABLE,)
                    continue
                out.trees += 1
                found: list[bytes] = []
                own[tree_id] = found
                for node in nodes:
                    if node.kind != NodeKind.FILE:
                        continue
                    known = not any(bad.get(c, "") is None for c in node.content)
                    chunks_hold = min(node.size, _SIZE_CAP) - remaining[file_no] if known else None
                    file_no += 1
                    path = prefix + b"/" + node.name
                    problem = file_node_problem(
                        node, None if chunks_hold is None else [chunks_hold]
                    )
                    if problem is not None:
                        out.errors.append(
                            f"snapshot {snap.short_id}: {path.decode(errors='replace')}: {problem}"
                        )
                    flagged = problem is not None
                    for chunk in node.content:
                        if chunk not in bad:
                            continue
                        if bad[chunk] is None:
                            out.errors.append(
                                f"snapshot {snap.short_id}: {os.fsdecode(path)} needs a chunk that is not in the index"
                            )
                        flagged = True
                        break
                    if flagged:
                        found.append(b"/" + node.name)
                children = [(n.name, n.subtree) for n in nodes if n.subtree is not None]
                work.append(("exit", tree_id, children))
                for name, sub in children:
                    work.append(("enter", sub, prefix + b"/" + name))
            paths = findings.get(snap.root, ())
            if paths:
                out.affected[snap.id] = sorted({_display(p) for p in paths})
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
            nodes = self._tree_packs.tree(tree_id, loc)  # an object store's, read whole once
            if nodes is not None:
                return nodes
            return self.repo.load_tree(
                tree_id, cached=False
            )  # the repository's copy, not a cache's
        finally:
            # Each tree costs two random look-ups (here and in load_blob). With the cache's
            # file warm in the page cache, a fault maps whole large folios around the leaf:
            # 486 trees between releases every 256 visits took a 5M-entry check to 382 MiB
            # of PSS (50-72 MiB with a colder file). A release is ~2 us a tree.
            self.repo.cache.release_pages()
