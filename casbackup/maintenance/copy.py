"""Copy snapshots from one repository into another (``casbackup copy``).

Nothing is re-chunked: a copied file keeps the chunks the source cut. Blob ids are keyed
(repo_format.md, Keys), so two repositories name the same plaintext alike only when they
share the chunk-id key, i.e. the master secret (``init --copy-chunker-params-from``):

- shared key: a blob the destination already has (by id) is neither read from the source
  nor sent; trees are copied byte for byte and keep their ids;
- different keys: every blob is read from the source, authenticated, re-hashed with the
  destination's id key, and stored only if the destination lacks that id; trees are
  re-encoded with the new ids. A snapshot whose parent was copied before (a nightly
  copy) first maps the parent's ids to those of its copy by walking both trees
  (``_Copier.learn``): its unchanged chunks are not read again, and its large trees stay
  deltas of the parent's copies.

Delta chunks (repo/delta.py) stay deltas: the base is copied first (it is a chunk like
any other, copied once), and the chunk is stored as a delta of the base's copy, so a
repository of nightly database dumps does not grow back to a full copy a night when it is
copied off-site. The destination bounds its own chains: a chunk whose base's copy is
already ``MAX_DEPTH`` deep there (a destination that had the base in another chain), or a
destination without delta blobs (format 2), gets the chunk whole. A tree stored as a
TREE_DELTA goes as a delta of its base's copy when that base was copied (an earlier
snapshot's tree of the same folder; the destination re-encodes it, since trees are
re-encoded anyway when the secrets differ), else whole.

Write order as backup's: packs, index files (flushed as a backup flushes them, so an
interrupted copy keeps what it stored and a rerun sends only the rest), then the snapshot
record, which carries ``copied_from`` = the source snapshot id so a second copy skips it
(and a copy back into the source skips it too: it is a copy of a snapshot there).
A delta is always stored after its base, in the same group of packs, which a repository
writes in order (repo/uploader.py): an index never names a delta whose base's pack is
missing.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from casbackup.archiver.readcheck import REMOTE_READERS, ReadJob
from casbackup.archiver.readplan import REMOTE_GAP, BlobReader, ChunkFeed
from casbackup.archiver.readpool import ReaderPool
from casbackup.errors import CasError, IntegrityError
from casbackup.repo import delta
from casbackup.repo.ids import ID_SIZE, BlobId, Kind
from casbackup.repo.index import Location, chunk_location
from casbackup.repo.nodecheck import file_node_problem
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.tree import Node, decode_tree, encode_tree
from casbackup.store.base import is_remote


@dataclass(frozen=True)
class CopyOptions:
    """Which source snapshots to copy: all, or those matching every given filter.

    ``snapshots``: ids or unique prefixes (or ``latest``); ``app``/``tags`` as for forget."""

    snapshots: tuple[str, ...] = ()
    app: str | None = None
    tags: tuple[str, ...] = ()


@dataclass
class CopyResult:
    copied: list[tuple[str, str]] = field(default_factory=list)  # (source id, new id)
    skipped: list[str] = field(default_factory=list)  # source ids already copied
    blobs_read: int = 0  # blobs fetched from the source
    blobs_sent: int = 0  # blobs stored in the destination (trees included)
    trees_sent: int = 0  # of which trees
    deltas_sent: int = 0  # of which source delta chunks stored against their base's copy
    bytes_sent: int = 0  # plaintext bytes of those blobs
    bytes_stored: int = 0  # bytes they take in the destination's packs
    shared_ids: bool = False
    warnings: list[str] = field(default_factory=list)


def shares_ids(src: Repository, dst: Repository) -> bool:
    """Whether both repositories name blobs alike (same chunk-id key)."""
    return hmac.compare_digest(src.key.chunk_id_key, dst.key.chunk_id_key)


def select_snapshots(src: Repository, options: CopyOptions, warnings: list[str]) -> list[Snapshot]:
    """The source snapshots the options name, oldest first. Raises NotFound/AmbiguousId."""
    if options.snapshots:
        chosen = {
            s.id: s for s in (src.resolve_snapshot(r, app=options.app) for r in options.snapshots)
        }
        snaps = sorted(chosen.values(), key=lambda s: (s.start_ns, s.id))
    else:
        snaps = src.list_snapshots(warnings=warnings)
    if options.app is not None:
        snaps = [s for s in snaps if s.app == options.app]
    if options.tags:
        snaps = [s for s in snaps if set(options.tags) <= set(s.tags)]
    return snaps


def copy_snapshots(src: Repository, dst: Repository, options: CopyOptions) -> CopyResult:
    """Copy the selected snapshots of ``src`` into ``dst``; both open, the caller locks them.

    Raises IntegrityError naming the snapshot when a source blob or tree fails
    authentication (that snapshot gets no record; ones copied before it stay), and the
    storage errors of either side. Memory: one id map per copy run (64 bytes per blob
    when the keys differ) and the trees along one path of the snapshot being copied."""
    dst.require_writable()
    result = CopyResult(shared_ids=shares_ids(src, dst))
    present = dst.list_snapshots(warnings=result.warnings)
    done = {s.copied_from: s.id for s in present if s.copied_from}
    # A source snapshot that is a copy of one of these (an off-site copy copied back) is
    # that snapshot: copying it would add a second record of the same backup, and the
    # next copy the other way a third.
    here = {s.identity: s.id for s in present} | {s.id: s.id for s in present}
    copier = _Copier(src, dst, result)
    try:
        _copy_each(src, dst, options, result, copier, done, here)
    except BaseException:
        copier.close(wait=False)  # a get that hangs must not hold Ctrl-C (readpool.py)
        raise
    copier.close()
    # The source's loud warnings (a rollback, packs its index names that are missing) are
    # the user's to see as the destination's are.
    result.warnings.extend(f"source: {message}" for message in src.alerts)
    return result


def _copy_each(
    src: Repository,
    dst: Repository,
    options: CopyOptions,
    result: CopyResult,
    copier: _Copier,
    done: dict[str | None, str],
    here: dict[str, str],
) -> None:
    """Copy each selected snapshot not copied before (``copy_snapshots``' loop)."""
    for snap in select_snapshots(src, options, result.warnings):
        if snap.copied_from in here:
            done[snap.id] = here[snap.copied_from]  # a later copy's parent is that one
        if snap.identity in done:  # copied before, perhaps before a tag change
            done[snap.id] = done[snap.identity]
        if snap.id in done:
            result.skipped.append(snap.id)
            continue
        try:
            parent_copy = done.get(snap.parent) if snap.parent else None
            if parent_copy is not None and not copier.shared:
                copier.learn(snap.parent, parent_copy)
            root = copier.tree(snap.root)
        except CasError as exc:
            try:
                dst.flush()  # keep what was stored: a rerun then sends only the rest
            except CasError:
                pass  # the original error is the one to report; unindexed packs are prune's
            raise exc.saying(f"copying snapshot {snap.short_id}: {exc}") from None
        record = replace(
            snap,
            tree=root.hex(),
            # Chains point at the copies of the parents when those were copied; a parent
            # left behind is not in this repository, so the copy names none.
            parent=done.get(snap.parent) if snap.parent else None,
            base_full=done.get(snap.base_full) if snap.base_full else None,
            # The source's first id: a tag change there later does not copy it again.
            copied_from=snap.identity,
            # The copy is a record of its own here: its id is its identity.
            original=None,
            revision=0,
            id="",
        )
        saved = dst.save_snapshot(record)  # flushes packs and index first
        done[snap.id] = saved.id
        result.copied.append((snap.id, saved.id))


@dataclass
class _Ahead:
    """A tree's read-ahead: ``feed`` yields the planned chunks file by file; ``files`` maps
    the entry's position in the tree to its planned chunk ids (in order), ``next_file`` is
    the feed's next file."""

    feed: ChunkFeed
    files: dict[int, list[bytes]]
    next_file: int = 0


class _Copier:
    """Translates source trees into destination trees, storing what the destination lacks."""

    def __init__(self, src: Repository, dst: Repository, result: CopyResult) -> None:
        self.src, self.dst, self.result = src, dst, result
        self.shared = result.shared_ids
        self.ids: dict[bytes, BlobId] = {}  # source blob id -> destination blob id
        # Depth of the delta chain of each chunk this copy stored (0: whole): blobs in packs
        # not yet stored cannot be located, and the next night's deltas chain on them.
        self.depths: dict[bytes, int] = {}
        # The source chunk read last and its plaintext: a delta's base, when ``chunk`` has
        # just copied it, is not resolved a second time.
        self._last: tuple[bytes, bytes] | None = None
        # From an object store each get is a round trip: the chunks a tree's files need
        # are read ahead per pack in merged ranges (``_plan``), several gets in flight.
        self._pool: ReaderPool | None = None
        self._reader: BlobReader | None = None
        if is_remote(src.backend):
            self._pool = ReaderPool(REMOTE_READERS, "copy-read")
            self._reader = BlobReader(src.backend, src.key.encryption_root, gap=REMOTE_GAP,
                                      pool=self._pool)  # fmt: skip

    def close(self, wait: bool = True) -> None:
        """Stop the read-ahead threads (an object-store source); ``wait``: for the gets
        running (not on an error or a stop: a get that hangs must not hold the way out)."""
        if self._pool is not None:
            self._pool.shutdown(wait=wait, cancel_futures=True)

    def learn(self, src_snapshot: str, dst_snapshot: str) -> None:
        """Map the ids of a source snapshot's trees and chunks to those of its copy here
        (``dst_snapshot``, made by an earlier copy run), walking both trees side by side.

        With different secrets nothing else tells a destination id from a source one
        without reading the blob: a nightly copy re-read every unchanged chunk of the new
        night and stored its large trees whole (a TREE_DELTA's base, the parent's tree,
        was unknown). A copy has its source's shape, so a tree whose entries match by
        name, kind and chunk count maps entry by entry; one that does not is left alone
        (its blobs are read as before). Only trees are read (both authenticated); a mapped
        id names a blob this repository holds."""
        try:
            pairs = [(self.src.load_snapshot(src_snapshot).root,
                      self.dst.load_snapshot(dst_snapshot).root)]  # fmt: skip
        except CasError:
            return  # a parent that cannot be read is only a lost shortcut
        while pairs:
            src_tree, dst_tree = pairs.pop()
            if src_tree in self.ids or not self.dst.has_blob(dst_tree):
                continue
            try:
                theirs = decode_tree(self._read(src_tree, Kind.TREE))
                ours = self.dst.load_tree(dst_tree)
            except CasError:
                continue
            if [(n.name, n.kind, len(n.content)) for n in theirs] != [
                (n.name, n.kind, len(n.content)) for n in ours
            ]:
                continue
            chunks = [
                (a, b)
                for s, d in zip(theirs, ours, strict=True)
                for a, b in zip(s.content, d.content, strict=True)
            ]
            if not self.dst.has_blobs(b for _, b in chunks):
                continue
            self.ids[src_tree] = dst_tree
            for a, b in chunks:
                self.ids.setdefault(a, b)
            pairs.extend(
                (s.subtree, d.subtree)
                for s, d in zip(theirs, ours, strict=True)
                if s.subtree is not None and d.subtree is not None
            )

    def _read(self, blob_id: BlobId, kind: Kind) -> bytes:
        if kind == Kind.TREE:
            # From an object store: the tree's whole pack at once when it holds trees only
            # (the source's tree cache), not a get per folder; checked against its id.
            data = self.src.tree_plaintext(blob_id)
        else:
            data = self.src.load_blob(blob_id, kind)  # authenticated against its id and kind
        self.result.blobs_read += 1
        if self.src.blob_id(data) != blob_id:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} does not match its id in the source")
        return data

    def _store(self, kind: Kind, data: bytes, blob_id: BlobId | None) -> BlobId:
        before = self.dst.stats_bytes_stored
        new_id, added = self.dst.save_blob(kind, data, blob_id)
        if added:
            self._sent(len(data), before, tree=kind == Kind.TREE)
            if kind == Kind.DATA:
                self.depths[new_id] = 0  # the next night's delta may chain on it
        return new_id

    def _sent(self, length: int, stored_before: int, *, tree: bool = False) -> None:
        """Count one blob of ``length`` plaintext bytes added to the destination, whose
        ``stats_bytes_stored`` was ``stored_before`` before it."""
        self.result.blobs_sent += 1
        self.result.trees_sent += tree
        self.result.bytes_sent += length
        self.result.bytes_stored += self.dst.stats_bytes_stored - stored_before

    def chunk(self, blob_id: BlobId) -> BlobId:
        known = self.ids.get(blob_id)
        if known is not None:
            return known
        if self.shared and self.dst.has_blob(blob_id):
            new_id = blob_id  # not read, not sent
        else:
            loc = self.src.locate(blob_id)
            if loc.kind == Kind.DELTA:
                new_id = self._delta_chunk(blob_id, loc)
            else:
                data = self._read(blob_id, Kind.DATA)
                self._last = (blob_id, data)
                new_id = self._store(Kind.DATA, data, blob_id if self.shared else None)
        self.ids[blob_id] = new_id
        return new_id

    def _delta_chunk(self, blob_id: BlobId, loc: Location) -> BlobId:
        """Copy a source DELTA chunk: its base first (``chunk``: recursion at most
        ``MAX_DEPTH`` deep, the chain's length being checked before), then the chunk as a
        delta of the base's copy when the destination's chain leaves room.

        The chunk is resolved here from its base's plaintext and checked against its id, as
        every copied blob is; the destination stores the source's delta frame under its own
        base id and decodes it before writing (``save_encoded_delta``). Raises
        IntegrityError (a damaged or lying chain) and the storage errors of either side."""
        links = delta.located_chain(self.src.locate, blob_id, loc)  # too deep or a loop: refused
        base_src = BlobId(links[1][0])
        self._last = None
        base_dst = self.chunk(base_src)
        if self._last is not None and self._last[0] == base_src:
            base = self._last[1]  # copied just now: read and checked there
        else:
            base = delta.resolve_chain(
                self.src.fetch_envelope, self.src.opener, links[1:], hash_id=self.src.blob_id
            )
        envelope = self.src.fetch_envelope(loc.pack, loc.offset, loc.stored_len)
        try:
            payload = delta.open_delta(self.src.opener, blob_id, envelope)
            if delta.delta_base(payload) != base_src:
                raise IntegrityError("its base is not the one the index names")
            data = delta.apply_delta(payload, base, loc.raw_len)
        except CasError as exc:  # damaged or malformed: IntegrityError, FormatError
            raise IntegrityError(f"blob {blob_id.hex()[:16]} in the source: {exc}") from None
        self.result.blobs_read += 1
        if self.src.blob_id(data) != blob_id:
            raise IntegrityError(f"blob {blob_id.hex()[:16]} does not match its id in the source")
        self._last = (blob_id, data)
        new_id = blob_id if self.shared else self.dst.blob_id(data)
        depth = self.depths.get(base_dst)
        if depth is None:
            depth = self.dst.delta_depth(base_dst)
        before, deltas = self.dst.stats_bytes_stored, self.dst.stats_deltas_added
        # The source's zstd frame turns the same base plaintext into the same bytes: it is
        # kept, with the base's id here in its header, instead of compressing again.
        frame = memoryview(payload)[1 + ID_SIZE :]
        _, added = self.dst.save_encoded_delta(
            data, base_dst, base, frame, new_id, depth=depth, version=payload[0]
        )
        if added:
            self._sent(len(data), before)
            if self.dst.stats_deltas_added > deltas and depth is not None:
                self.result.deltas_sent += 1
                self.depths[new_id] = depth + 1
            else:
                self.depths[new_id] = 0  # stored whole: it did not pay, or no room
        return new_id

    def _tree(self, tree_id: BlobId, data: bytes) -> BlobId:
        """Store one tree (``data``: its destination bytes), as a TREE_DELTA of its base's
        copy when it is one in the source and that base was copied (an earlier snapshot's
        tree of the same folder) or, with the same ids, is in the destination already."""
        loc = self.src.locate(tree_id)
        base = None
        if loc.kind == Kind.TREE_DELTA and loc.base is not None:
            base = self.ids.get(loc.base)
            if base is None and self.shared and self.dst.has_blob(loc.base):
                base = BlobId(loc.base)
        if base is None or not self.dst.tree_deltas_allowed:
            return self._store(Kind.TREE, data, tree_id if self.shared else None)
        before = self.dst.stats_bytes_stored
        new_id, added = self.dst.save_tree_delta(data, base)  # whole when a delta does not pay
        if added:
            self._sent(len(data), before, tree=True)
        return new_id

    def _plan(self, nodes: list[Node]) -> _Ahead | None:
        """Start reading ahead the chunks ``nodes`` (a tree's entries) will need from an
        object store: each one's first use in the tree, when it is not mapped yet, stored
        whole (a delta is resolved on demand) and, with shared ids, not in the destination.
        None for a local source, or when nothing is to be read or a chunk cannot be
        located (then each is read on demand, and that read says what is wrong)."""
        if self._reader is None:
            return None
        seen: set[bytes] = set()
        wanted: list[tuple[int, list[bytes]]] = []
        for index, node in enumerate(nodes):
            ids = []
            for c in node.content:
                if c in self.ids or c in seen:
                    continue
                seen.add(c)
                if self.shared and self.dst.has_blob(c):
                    continue
                ids.append(c)
            if ids:
                wanted.append((index, ids))
        if not wanted:
            return None
        try:
            values = self.src.locate_values([c for _, ids in wanted for c in ids])
        except CasError:
            return None
        jobs: list[ReadJob] = []
        files: dict[int, list[bytes]] = {}
        pos = 0
        for index, ids in wanted:
            chunks, planned = [], []
            for c in ids:
                chunk, kind = chunk_location(c, values[pos])
                pos += 1
                if kind == Kind.DATA:
                    chunks.append(chunk)
                    planned.append(c)
            if chunks:
                files[index] = planned
                jobs.append(ReadJob(tuple(chunks), ()))
        if not jobs:
            return None
        return _Ahead(ChunkFeed(self._reader, jobs), files)

    def _content(
        self, content: tuple[BlobId, ...], ahead: _Ahead | None, planned: list[bytes] | None
    ) -> tuple[BlobId, ...]:
        """The destination ids of a file's chunks; those ``planned`` come from the tree's
        read-ahead, in order (each still checked against its id), the rest from ``chunk``."""
        if ahead is None or planned is None:
            return tuple(self.chunk(c) for c in content)
        pieces = ahead.feed.file(ahead.next_file)
        ahead.next_file += 1
        out: list[BlobId] = []
        waiting = iter(planned)
        due = next(waiting, None)
        for c in content:
            if c == due:
                data = next(pieces)  # raises the source's damage (IntegrityError)
                due = next(waiting, None)
                if c not in self.ids:  # (a subtree copied since may have mapped it)
                    self.result.blobs_read += 1
                    if self.src.blob_id(data) != c:
                        raise IntegrityError(
                            f"blob {c.hex()[:16]} does not match its id in the source"
                        )
                    self._last = (c, data)
                    self.ids[c] = self._store(Kind.DATA, data, c if self.shared else None)
            out.append(self.chunk(c))
        return tuple(out)

    def _files(self, nodes: list[Node]) -> list[Node]:
        """A tree's entries with every file's content translated (stored here as needed),
        read ahead through the tree's plan, which is closed before any subtree is entered:
        one tree's read-ahead windows are held at a time, whatever the depth (each tree
        entered kept its two windows of up to 16 MiB while its subtrees were copied)."""
        ahead = self._plan(nodes)
        out: list[Node] = []
        try:
            for index, node in enumerate(nodes):
                problem = file_node_problem(node)  # copied as is, it would be damage there too
                if problem is not None:
                    name = node.name.decode(errors="replace")
                    raise IntegrityError(f"file {name!r}: {problem}")
                if node.content:
                    planned = ahead.files.pop(index, None) if ahead is not None else None
                    node = replace(node, content=self._content(node.content, ahead, planned))
                out.append(node)
        finally:
            if ahead is not None:
                ahead.feed.close()
        return out

    def tree(self, root: BlobId) -> BlobId:
        """The destination id of a source tree, storing it and everything below it.

        Post-order with an explicit stack (a snapshot may be deeper than Python's
        recursion limit): a tree is stored after every blob it names."""
        stack: list[tuple[BlobId, bytes, Iterator[Node], list[Node]]] = []

        def enter(tree_id: BlobId) -> None:
            data = self._read(tree_id, Kind.TREE)
            stack.append((tree_id, data, iter(self._files(decode_tree(data))), []))

        enter(root)
        finished: BlobId | None = None
        while stack:
            tree_id, data, nodes, out = stack[-1]
            if finished is not None:  # a child tree just completed: patch its node
                last = out[-1]
                out[-1] = replace(last, subtree=finished)
                finished = None
            node = next(nodes, None)
            if node is None:
                stack.pop()
                if tree_id in self.ids:
                    finished = self.ids[tree_id]
                else:  # byte for byte with the same ids, else re-encoded with the new ones
                    finished = self._tree(tree_id, data if self.shared else encode_tree(out))
                self.ids[tree_id] = finished
                continue
            out.append(node)
            if node.subtree is not None:
                known = self.ids.get(node.subtree)
                if known is not None:
                    out[-1] = replace(node, subtree=known)
                else:
                    enter(node.subtree)
        assert finished is not None
        return finished
