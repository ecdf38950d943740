"""Trees and snapshots on top of blob storage: save, load, list, resolve and walk them.

The last step of the write order (repository.py): ``save_snapshot`` flushes every pack and
index file first, so a snapshot only ever names indexed blobs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from casbackup.errors import AmbiguousId, CasError, IntegrityError, LockError, NotFound
from casbackup.repo import codec, delta
from casbackup.repo.blobstore import BlobStore
from casbackup.repo.ids import BlobId, FileId, Kind
from casbackup.repo.localstate import remember_snapshot, screen_snapshots
from casbackup.repo.snapshot import Snapshot, split_rewrites
from casbackup.repo.tree import Node, decode_tree, encode_tree
from casbackup.units import plural

# Beyond this, a snapshot's start time is a clock error, not another machine's skew.
FUTURE_SKEW_NS = 10 * 60 * 10**9

# A tree at most this long (encoded) is always stored whole: a delta saves little on it
# and costs every reader a chain. 4 KiB is a folder of about 30 files, or one file of
# about 120 chunks (repo_format.md "Tree deltas").
TREE_DELTA_MIN = 4096


# At most this many application names in a message: the names come from snapshots, which
# whoever can write the storage may plant by the thousand.
_APPS_SHOWN = 10


def no_snapshot_of(app: str, snapshots: Iterable[Snapshot]) -> str:
    """The message for an application of which ``snapshots`` (all a repository lists) hold
    none, naming the applications they do hold: a mistyped ``--app`` is the usual cause,
    and the names say what to type instead."""
    known = sorted({s.app for s in snapshots if s.app})
    if not known:
        return f"no snapshot of application {app!r} in the repository"
    shown = ", ".join(known[:_APPS_SHOWN]) + (", ..." if len(known) > _APPS_SHOWN else "")
    return (
        f"no snapshot of application {app!r} in the repository "
        f"(applications with snapshots here: {shown})"
    )


class SnapshotStore(BlobStore):
    """Trees and snapshots (and this client's screening of them, repo/localstate.py).

    Not used on its own: ``Repository`` (repository.py) is the class callers open."""

    # ----------------------------------------------------------------- trees
    def save_tree(self, nodes: list[Node], base: BlobId | None = None) -> BlobId:
        """Store a tree unless the repository has it; return its id. ``base``: the parent
        snapshot's tree of the same folder, if any: a tree over ``TREE_DELTA_MIN`` bytes
        is then stored as a TREE_DELTA against it when that pays (``save_tree_delta``)."""
        data = encode_tree(nodes)
        if base is not None and len(data) > TREE_DELTA_MIN and self.tree_deltas_allowed:
            tree_id = self.save_tree_delta(data, base)[0]
        else:
            tree_id = self.save_blob(Kind.TREE, data)[0]
        if self._tree_cache is not None:
            self._tree_cache.put(tree_id, data)  # the next backup compares with it
        return tree_id

    @property
    def tree_deltas_allowed(self) -> bool:
        """Whether this repository's format holds TREE_DELTA blobs (version 4 and later)."""
        return self.config.version >= 4 and self.writable

    @property
    def rewritten_records_allowed(self) -> bool:
        """Whether snapshot records of version 2 (``original``/``revision``: `tag`) may be
        written: only to a version 5 repository, which readers that do not know them refuse
        as a whole (exit 21), before they could call such a record damaged."""
        return self.config.version >= 5 and self.writable

    def tree_chain(self, tree_id: bytes) -> list[bytes] | None:
        """The ids from ``tree_id`` down to the full TREE it resolves from (one id: stored
        whole), or None when it is not a stored tree (or is in a pack not yet stored)."""
        if tree_id in self._claimed:
            return None
        try:
            loc = self.locate(tree_id)
            if loc.kind not in (Kind.TREE, Kind.TREE_DELTA):
                return None
            return [link for link, _ in delta.chain_of(self.locate, tree_id, loc)]
        except (NotFound, IntegrityError):
            return None

    def tree_depth(self, tree_id: bytes) -> int | None:
        """How many TREE_DELTA blobs lie above the full TREE ``tree_id`` resolves from (0:
        stored whole), or None when it is not a stored tree."""
        chain = self.tree_chain(tree_id)
        return None if chain is None else len(chain) - 1

    def save_tree_delta(self, data: bytes, base_id: BlobId) -> tuple[BlobId, bool]:
        """``save_blob(Kind.TREE, data)``, stored as a TREE_DELTA against the tree
        ``base_id`` when that pays: the base is a stored tree that can be read, and the
        delta is at most ``delta.MAX_SHARE`` of the tree compressed on its own. When the
        base's chain is full (``delta.MAX_DEPTH`` deltas), the delta is made against the
        full tree at its bottom instead (a chain of one: every change since that tree,
        still small for a folder that changes a little each night, where a full copy of a
        10,000-file folder's tree is ~780 kB). Verified before it is written: the delta
        applied to its base must give ``data`` back. Returns (id, added)."""
        blob_id = self.blob_id(data)
        self.require_writable()
        if self.has_blob(blob_id):
            return blob_id, False
        chain = self.tree_chain(base_id) if base_id != blob_id else None
        if chain is None or len(data) > delta.MAX_SPAN // 2:
            return self.save_blob(Kind.TREE, data, blob_id)
        if len(chain) > delta.MAX_DEPTH:
            base_id = BlobId(chain[-1])
        try:
            base = self._tree_bytes(base_id)
        except CasError:
            return self.save_blob(Kind.TREE, data, blob_id)  # check reports a damaged base
        if len(base) + len(data) > delta.MAX_SPAN:
            return self.save_blob(Kind.TREE, data, blob_id)
        level = self.compression_level if self.compression_level is not None else 3
        payload = delta.encode_delta(base_id, base, data, level, wide=True)
        if len(payload) > len(data) // 16 and len(payload) > delta.MAX_SHARE * len(
            codec.compress(data, self.compression_level)
        ):
            return self.save_blob(Kind.TREE, data, blob_id)
        envelope = self.sealer.seal(Kind.TREE_DELTA, blob_id, payload)
        if self.verify_before_write:
            opened = delta.open_delta(self.opener, blob_id, envelope, Kind.TREE_DELTA)
            if self.blob_id(delta.apply_delta(opened, base, len(data), Kind.TREE_DELTA)) != blob_id:
                raise IntegrityError(
                    "a tree delta failed verification before it was written (memory or "
                    "software fault)"
                )
        added = self.store_sealed(Kind.TREE_DELTA, blob_id, envelope, len(data), base_id)
        return blob_id, added

    def _tree_bytes(self, tree_id: BlobId) -> bytes:
        """A tree's plaintext checked against its id: from the tree cache, else the
        repository (resolving a TREE_DELTA's chain)."""
        cache = self._tree_cache
        data = cache.get(tree_id) if cache is not None else None
        if data is None:
            data = self.load_blob(tree_id, Kind.TREE)
            if self.blob_id(data) != tree_id:
                raise IntegrityError(f"tree {tree_id.hex()[:16]} does not match its id")
        return data

    def load_tree(self, tree_id: BlobId, *, cached: bool = True) -> list[Node]:
        """A tree's nodes, from the local tree cache (repo/treecache.py: remote stores
        only; entries authenticated and checked against the id) or the repository.
        ``cached=False`` reads the repository's copy (``check`` verifies that one).
        Raises IntegrityError, NotFound, StorageError."""
        return decode_tree(self.tree_plaintext(tree_id, cached=cached))

    def tree_plaintext(self, tree_id: BlobId, *, cached: bool = True) -> bytes:
        """``load_tree``'s bytes, not decoded (``copy`` keeps them byte for byte): on a
        remote store with a cold cache, the tree's whole pack is read at once when it is
        small and holds trees only (one get for a backup's folders, not one each)."""
        cache = self._tree_cache if cached else None
        data = cache.get(tree_id) if cache is not None else None
        if data is None and cache is not None:
            loc = self.locate(tree_id)
            try:  # a cold cache: the tree's whole pack at once, when it is small
                if cache.fill_from_pack(self.backend, loc.pack):
                    data = cache.get(tree_id)
            except CasError:
                data = None  # read just this tree below; its own errors are the ones to report
        if data is None:
            data = self.load_blob(tree_id, Kind.TREE)
            if self.blob_id(data) != tree_id:
                raise IntegrityError(f"tree {tree_id.hex()[:16]} does not match its id")
            if cache is not None:
                cache.put(tree_id, data)
        return data

    # ----------------------------------------------------------------- snapshots
    def save_snapshot(self, snap: Snapshot) -> Snapshot:
        self.flush()  # invariant: everything the snapshot names is indexed first
        # Still locked without a break: no prune ran that could have removed what it names.
        self.confirm_locks()
        fid = self.save_file_object("snapshots", Kind.SNAPSHOT, snap.encode())
        remember_snapshot(self.state, fid)
        try:
            self.confirm_locks(renew=False)
        except LockError as exc:
            # Taken for stale right between the check and the write (a pause of the whole
            # stale limit there): a prune may have removed what it names. Withdrawn.
            try:
                self.delete_snapshot(fid)
            except CasError:
                raise LockError(
                    f"{exc}; snapshot {fid[:8]} was written meanwhile and may name data that "
                    "is gone: run 'casbackup check'"
                ) from None
            raise
        except CasError:
            pass  # cannot tell: the lock was renewed an instant before the write
        return snap.with_id(fid)

    def load_snapshot(self, fid: str) -> Snapshot:
        return Snapshot.decode(self.get_encrypted(f"snapshots/{fid}", Kind.SNAPSHOT), fid)

    def snapshot_ids(self) -> list[FileId]:
        return sorted(FileId(name.rsplit("/", 1)[1]) for name, _ in self.backend.list("snapshots/"))

    def alert(self, message: str) -> None:
        """A loud warning the user must see (once), collected for the CLI to print."""
        if message not in self.alerts:
            self.alerts.append(message)

    def usable_snapshot_ids(self, present: list[str] | None = None) -> list[str]:
        """The snapshot ids present (``snapshot_ids()`` unless given) less those this client
        forgot itself and that came back; each such finding becomes an ``alert``."""
        if present is None:
            present = self.snapshot_ids()
        usable, alerts = screen_snapshots(self.state, present)
        for message in alerts:
            self.alert(message)
        return usable

    def list_snapshots(
        self, *, warnings: list[str] | None = None, include_forgotten: bool = False
    ) -> list[Snapshot]:
        """All readable snapshots, oldest first by start time, except that one dated more
        than FUTURE_SKEW_NS ahead of this clock counts as the oldest (an ``alert`` names it).
        Unreadable ones are reported in ``warnings``.

        Snapshots this client forgot are left out even if present again (``alerts``),
        unless ``include_forgotten`` (prune: data that anything present names is kept)."""
        present = self.snapshot_ids()
        usable = self.usable_snapshot_ids(present)
        snaps = []
        for fid in present if include_forgotten else usable:
            try:
                snaps.append(self.load_snapshot(fid))
            except CasError as exc:
                if warnings is None:
                    raise
                warnings.append(f"snapshot {fid[:8]} is unreadable: {exc}")
        if not include_forgotten:
            snaps, leftovers = split_rewrites(snaps)
            self._superseded = {}
            for old, new in leftovers:
                self._superseded.setdefault(new.identity, []).append(old.id)
                self.alert(
                    f"snapshot record {old.short_id} is an older record of snapshot "
                    f"{new.short_id} (a tag change was interrupted): it is ignored; "
                    f"'casbackup forget {old.id[:12]}' removes it"
                )
        # A snapshot dated ahead of now was taken while its machine's clock ran ahead:
        # sorted by its time it would stay 'latest' (restore, recover, the next backup's
        # parent) until the real clock caught up, and newer backups would hide behind it.
        limit = time.time_ns() + FUTURE_SKEW_NS
        for snap in snaps:
            if snap.start_ns > limit:
                self.alert(
                    f"snapshot {snap.short_id} is dated {snap.time[:19]}, in the future (the "
                    f"clock of {snap.host or 'its host'} ran ahead): it counts as older than "
                    "every other snapshot, never as the latest"
                )
        snaps.sort(key=lambda s: (s.start_ns <= limit, s.start_ns, s.id))
        return snaps

    def delete_snapshot(self, fid: str) -> None:
        """Forget a snapshot: recorded locally before and after the delete, so it is never
        trusted again if its file comes back later. A crash between the two leaves it
        present and usable (not a rollback alert), for the next forget to remove.
        Raises NotFound when the file is already gone (it is recorded as forgotten)."""
        remember_snapshot(self.state, fid, forgetting=True)
        try:
            self.backend.delete(f"snapshots/{fid}")
        except NotFound:
            remember_snapshot(self.state, fid, forgotten=True)
            raise
        remember_snapshot(self.state, fid, forgotten=True)

    def superseded_records(self, identity: str) -> list[str]:
        """Ids of the older records of snapshot ``identity`` (``Snapshot.identity``) that an
        interrupted tag change left (``split_rewrites``), as the last ``list_snapshots`` of
        this handle saw them (listing once if none ran). Callers hold the exclusive lock, so
        only they changed the records since."""
        if self._superseded is None:
            self.list_snapshots(warnings=[])
        return list((self._superseded or {}).get(identity, ()))

    def forget_snapshot(self, snap: Snapshot) -> list[str]:
        """``delete_snapshot(snap.id)``, then delete the older records of the same snapshot
        an interrupted tag change left: kept, the newest of them would take its place in
        every listing, and the snapshot just forgotten (or rewritten without a secret) would
        be back. Returns those older records' ids; raises NotFound, as ``delete_snapshot``,
        when ``snap``'s own record was already gone (its older ones are deleted first)."""
        try:
            self.delete_snapshot(snap.id)
            missing = None
        except NotFound as exc:
            missing = exc  # the older records are still to go
        gone = []
        for fid in self.superseded_records(snap.identity):
            if fid == snap.id:
                continue
            try:
                self.delete_snapshot(fid)
            except NotFound:
                pass  # another client removed it meanwhile
            gone.append(fid)
        if missing is not None:
            raise missing
        return gone

    def replace_snapshot(
        self,
        old: Snapshot | str,
        new: Snapshot,
        *,
        stored: dict[tuple[int, str | None, str], str] | None = None,
        delete_old: bool = True,
    ) -> str:
        """Store ``new`` in place of the record ``old`` (tag, rewrite, repair snapshots)
        and return its id: stored first, so a crash leaves both, never neither; then the old
        record is deleted (unless not ``delete_old``; already gone is fine), and, when
        ``old`` is given as a Snapshot, the older records an interrupted tag change left of
        it (``forget_snapshot``). ``stored`` maps (start_ns, app, root tree) to records an
        earlier, interrupted run wrote: such a record is used instead of writing the same
        one again, and new ones are added."""
        old_id = old if isinstance(old, str) else old.id
        key = (new.start_ns, new.app, new.tree)
        new_id = stored.get(key) if stored is not None else None
        if new_id is None:
            new_id = self.save_snapshot(new).id
            if stored is not None:
                stored[key] = new_id
        if delete_old:
            try:
                if isinstance(old, str):
                    self.delete_snapshot(old_id)
                else:
                    self.forget_snapshot(old)
            except NotFound:
                pass  # another client removed it meanwhile: gone either way
        return new_id

    def resolve_snapshot(
        self,
        ref: str,
        *,
        app: str | None = None,
        paths: Iterable[str] | None = None,
        name_apps: bool = True,
    ) -> Snapshot:
        """The snapshot ``ref`` names: a full id, a unique prefix (AmbiguousId otherwise),
        or "latest" (of ``app``, and of exactly ``paths``, when given). NotFound when none;
        for an ``app`` without snapshots the message names the applications that have
        some, unless ``name_apps`` is False (a caller that may see only some of them)."""
        if ref == "latest":
            unreadable: list[str] = []
            every = self.list_snapshots(warnings=unreadable)
            snaps = [s for s in every if app is None or s.app == app]
            if app is not None and not snaps:
                raise NotFound(no_snapshot_of(app, every if name_apps else ()))
            if paths is not None:
                wanted = tuple(sorted(paths))
                snaps = [s for s in snaps if tuple(sorted(s.paths)) == wanted]
            if not snaps:
                what = f" of application {app!r}" if app else ""
                raise NotFound(f"no snapshot{what} in the repository")
            # One that cannot be read (damaged, another user's file) may be the newest:
            # taking the newest of the others without a word would pass an older
            # snapshot off as the latest.
            for message in unreadable:
                self.alert(f"{message}; 'latest' is the newest readable one, {snaps[-1].short_id}")
            return snaps[-1]
        return self.load_snapshot(self.snapshot_id_of(ref))

    def snapshot_id_of(self, ref: str) -> FileId:
        """The id of the one snapshot whose id starts with ``ref`` (hex, any case), without
        reading it. NotFound when none or ``ref`` is not hex, AmbiguousId when several."""
        ref = ref.lower()
        if not ref or any(c not in "0123456789abcdef" for c in ref):
            raise NotFound(
                f"{ref!r} is not a snapshot id (give an id, a unique prefix, or 'latest')"
            )
        matches = [fid for fid in self.snapshot_ids() if fid.startswith(ref)]
        if not matches:
            # An id from before a tag change (a job's log, a verification record, a note
            # the user kept) names the snapshot whose record `tag` rewrote.
            matches = sorted({
                s.id for s in self.list_snapshots(warnings=[])
                if s.original is not None and s.original.startswith(ref)
            })  # fmt: skip
        if not matches:
            raise NotFound(f"no snapshot matches {ref!r}")
        if len(matches) > 1:
            raise AmbiguousId(
                f"{ref!r} matches {plural(len(matches), 'snapshot')}; give more digits"
            )
        if matches[0] in self.state.doc.forgotten:
            self.alert(
                f"snapshot {matches[0][:8]} was forgotten by this client and is back in the "
                "repository (rolled back or tampered with); using it only because it was named"
            )
        return matches[0]

    # ----------------------------------------------------------------- walking
    def walk(self, tree_id: BlobId, prefix: bytes = b"") -> Iterator[tuple[bytes, Node]]:
        """Depth-first (path, node) for every node below a tree, each folder's node before its
        contents, in name order; loads one tree at a time, when its folder is reached.

        An explicit stack, not recursion: a snapshot may be any number of levels deep (anyone
        who can write the backed-up folders chooses the depth), and Python's recursion limit
        (about 1,000 frames) must not decide whether a snapshot can be read. Memory holds the
        trees along one path from the root, as recursion would.
        """
        stack: list[tuple[Iterator[Node], bytes]] = [(iter(self.load_tree(tree_id)), prefix)]
        while stack:
            nodes, where = stack[-1]
            node = next(nodes, None)
            if node is None:
                stack.pop()
                continue
            path = where + b"/" + node.name
            yield path, node
            if node.subtree is not None:
                stack.append((iter(self.load_tree(node.subtree)), path))

    def find_node(self, root: BlobId, path: str | bytes) -> Node | None:
        """The node at an absolute path in a snapshot, or None for the root itself."""
        raw = path.encode("utf-8", "surrogateescape") if isinstance(path, str) else path
        parts = [p for p in raw.split(b"/") if p and p != b"."]
        tree: BlobId | None = root
        node: Node | None = None
        for i, part in enumerate(parts):
            if tree is None:
                raise NotFound(f"{path!r} does not exist in the snapshot")
            for candidate in self.load_tree(tree):
                if candidate.name == part:
                    node = candidate
                    break
            else:
                shown = b"/" + b"/".join(parts[: i + 1])
                raise NotFound(f"{shown.decode('utf-8', 'replace')} does not exist in the snapshot")
            tree = node.subtree
        return node
