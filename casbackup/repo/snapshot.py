"""Snapshot records: ``snapshots/<file id>``, an envelope (kind SNAPSHOT) of JSON.

The snapshot id is the file id (BLAKE3 of the stored bytes). Every snapshot names a
complete root tree: deleting any snapshot never breaks another.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from casbackup.errors import FormatError, UnsupportedFormat
from casbackup.repo.ids import BlobId

# Version 2 records carry `original` and `revision` (a record rewritten by `casbackup tag`);
# every other record is written as version 1, byte for byte as before, so a reader that knows
# only version 1 refuses just the rewritten records ("not supported"), never the rest.
SNAPSHOT_VERSION = 1
REWRITTEN_VERSION = 2
BACKUP_TYPES = ("full", "incremental", "differential")
# Tags appear comma-joined in listings and in `--tag a,b` filters: no commas, no controls;
# and no lone surrogates (a byte that is not UTF-8, from a shell argument): not text, which
# every listing of the web service failed to encode.
TAG_RE = re.compile(r"^[^\x00-\x1f\x7f,\ud800-\udfff]{1,100}$")


def check_tags(tags: tuple[str, ...] | list[str], what: str = "tag") -> tuple[str, ...]:
    """The tags as given, each checked: 1-100 characters, no comma, no control character.

    Raises UsageError naming the first bad one (``what`` says where it came from)."""
    from casbackup.errors import UsageError

    for tag in tags:
        if not isinstance(tag, str) or not TAG_RE.match(tag) or tag != tag.strip():
            raise UsageError(
                f"{what} {tag!r} is not usable: give 1-100 characters without commas, "
                "control characters or surrounding spaces"
            )
    return tuple(tags)


def split_tag_args(values: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Command-line tag values as restic spells them: `--tag a,b` is two tags, as `--tag a
    --tag b`; empty pieces are dropped (so `--set ''` is no tag at all)."""
    return tuple(t for v in values for t in v.split(",") if t != "")


def _is_id(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


@dataclass(frozen=True)
class Summary:
    files_new: int = 0
    files_changed: int = 0
    files_unchanged: int = 0
    dirs: int = 0
    files_total: int = 0
    bytes_total: int = 0  # logical size of every file in the snapshot
    bytes_read: int = 0  # read from disk by this backup
    bytes_added: int = 0  # plaintext bytes of chunks new to the repository
    bytes_stored: int = 0  # bytes those new chunks take in packs
    blobs_added: int = 0
    errors: int = 0
    duration_s: float = 0.0


@dataclass(frozen=True)
class DatabaseRecord:
    name: str
    engine: str
    format: str
    server_version: str
    path: str  # where the dump sits in the snapshot tree, e.g. "/.databases/app.pgdump"
    size: int
    row_counts: dict[str, int] = field(default_factory=dict)
    # What restore needs beyond the dump (engines/base.py DumpInfo.properties): untrusted.
    properties: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FsSnapshotRecord:
    """A source read from a file-system snapshot (fssnap/) rather than live."""

    source: str  # the source's own path, as it appears in the tree
    provider: str  # btrfs | zfs | lvm
    origin: str  # the subvolume, dataset or logical volume snapshotted
    time: str  # ISO 8601 UTC, when the file-system snapshot was taken


@dataclass(frozen=True)
class Snapshot:
    time: str  # ISO 8601, UTC, when the backup started
    start_ns: int  # the same instant in ns: the race guard compares file times with it
    host: str
    user: str
    paths: tuple[str, ...]
    tree: str  # hex root tree id
    type: str = "full"
    app: str | None = None
    tags: tuple[str, ...] = ()
    parent: str | None = None
    base_full: str | None = None
    excludes: tuple[str, ...] = ()
    summary: Summary = Summary()
    databases: tuple[DatabaseRecord, ...] = ()
    app_definition: dict[str, Any] | None = None
    program_version: str = ""
    errors: tuple[str, ...] = ()
    # The source snapshot's id when this record was made by ``casbackup copy``: a second
    # copy recognises it and skips that snapshot. None for a backup.
    copied_from: str | None = None
    # Extended attributes (with ACLs and capabilities) were read for every entry; False in
    # records written before they were, or with --no-xattrs.
    xattrs: bool = False
    # Database files in the sources left out of the walk for their dumps (with companions).
    excluded_databases: tuple[str, ...] = ()
    fs_snapshots: tuple[FsSnapshotRecord, ...] = ()
    # A record rewritten by `casbackup tag` names the id the snapshot was first saved under
    # and counts its rewrites (1, 2, ...): verification records name that first id, and of
    # two records of one snapshot (a rewrite interrupted before the old one was deleted) the
    # higher revision is the snapshot. None and 0 in every record a backup or copy writes.
    original: str | None = None
    revision: int = 0
    id: str = ""  # not stored: filled in from the file name when loaded

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @property
    def protected_bytes(self) -> int:
        """Bytes this snapshot protects: its files' sizes plus its database dumps' sizes.

        ``summary.bytes_total`` counts only the file walk; an application whose data lives in
        a database would otherwise show 0 B in listings and statistics.
        """
        return self.summary.bytes_total + sum(max(db.size, 0) for db in self.databases)

    @property
    def identity(self) -> str:
        """The id this snapshot was first saved under (64 hex): its own id until `casbackup
        tag` rewrites its record. Verification records and check results name snapshots by
        it, so they follow a snapshot through tag changes."""
        return self.original or self.id

    @property
    def root(self) -> BlobId:
        return BlobId(bytes.fromhex(self.tree))

    @property
    def datetime(self) -> datetime:
        return datetime.fromisoformat(self.time)

    def group_key(self) -> tuple[str, ...]:
        if self.app:
            return ("app", self.app)
        return ("paths", self.host, *sorted(set(self.paths)))  # older records held repeats

    def encode(self) -> bytes:
        doc = asdict(self)
        doc.pop("id")
        if doc["copied_from"] is None:
            doc.pop("copied_from")  # backups' records stay as before, readable by older readers
        if not doc["fs_snapshots"]:  # written only when used: older records stay byte-identical
            doc.pop("fs_snapshots")
        if doc["original"] is None:
            doc.pop("original")
            doc.pop("revision")
            doc["version"] = SNAPSHOT_VERSION
        else:
            doc["version"] = REWRITTEN_VERSION
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes, snapshot_id: str = "") -> Snapshot:
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise FormatError("snapshot record is not an object")
            version = doc.pop("version", None)
            if version not in (SNAPSHOT_VERSION, REWRITTEN_VERSION) or isinstance(version, bool):
                raise UnsupportedFormat(f"snapshot format version {version!r} is not supported")
            if (version == REWRITTEN_VERSION) != ("original" in doc or "revision" in doc):
                raise FormatError(f"snapshot record of version {version} has the wrong fields")
            doc["paths"] = tuple(doc["paths"])
            if not isinstance(doc.get("tags", []), list):
                raise FormatError("snapshot record has bad tags")
            doc["tags"] = tuple(doc.get("tags", ()))
            doc["excludes"] = tuple(doc.get("excludes", ()))
            doc["errors"] = tuple(doc.get("errors", ()))
            doc["xattrs"] = doc.get("xattrs", False) is True
            doc["excluded_databases"] = tuple(str(p) for p in doc.get("excluded_databases", ()))
            doc["summary"] = Summary(**doc.get("summary", {}))
            doc["databases"] = tuple(DatabaseRecord(**d) for d in doc.get("databases", ()))
            doc["fs_snapshots"] = tuple(FsSnapshotRecord(**d) for d in doc.get("fs_snapshots", ()))
            snap = cls(**doc, id=snapshot_id)
            bytes.fromhex(snap.tree)
            when = datetime.fromisoformat(snap.time)
            if when.utcoffset() is None:
                # casbackup writes UTC with its offset; a record without one (another
                # writer) is read as UTC, so every consumer compares aware times: a naive
                # one among aware ones made forget and sorting raise.
                snap = replace(snap, time=when.replace(tzinfo=UTC).isoformat())
        except (ValueError, TypeError, KeyError, UnicodeDecodeError, RecursionError) as exc:
            if isinstance(exc, FormatError):
                raise
            raise FormatError(f"snapshot record is malformed: {exc}") from None
        if snap.copied_from is not None and not _is_id(snap.copied_from):
            raise FormatError("snapshot record has a bad copied_from id")
        if (
            (version == REWRITTEN_VERSION) != (snap.original is not None)
            or snap.original is not None
            and (
                not _is_id(snap.original)
                or not isinstance(snap.revision, int)
                or isinstance(snap.revision, bool)
                or not 1 <= snap.revision < 2**31
            )
        ):
            raise FormatError("snapshot record has a bad original id or revision")
        if not isinstance(snap.tags, tuple) or not all(isinstance(t, str) for t in snap.tags):
            raise FormatError("snapshot record has bad tags")
        if len(snap.tree) != 64 or snap.type not in BACKUP_TYPES:
            raise FormatError("snapshot record has a bad tree id or type")
        return snap

    def with_id(self, snapshot_id: str) -> Snapshot:
        return replace(self, id=snapshot_id)


def split_rewrites(snaps: list[Snapshot]) -> tuple[list[Snapshot], list[tuple[Snapshot, Snapshot]]]:
    """(the snapshots, [(left-over record, the record that replaced it)]) for a listing.

    Records that share an ``identity`` are one snapshot whose record `casbackup tag` rewrote
    and was interrupted before it deleted the older one: the highest ``revision`` (then the
    greater id, so every client decides alike) is the snapshot, the others are left over.
    Order is kept."""
    best: dict[str, Snapshot] = {}
    for snap in snaps:
        other = best.get(snap.identity)
        if other is None or (snap.revision, snap.id) > (other.revision, other.id):
            best[snap.identity] = snap
    kept = [s for s in snaps if best[s.identity] is s]
    return kept, [(s, best[s.identity]) for s in snaps if best[s.identity] is not s]


def now_utc() -> tuple[str, int]:
    import time

    ns = time.time_ns()
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(), ns


def saved_lines(snap: Snapshot) -> list[str]:
    """What a finished backup says, one string a line (no newlines): counts of new, changed
    and unchanged files, each database dump, what the repository gained, and the snapshot's
    id, type and parent. The CLI prints them; the service writes them to the job's log."""
    from casbackup.units import human_bytes, plural

    s = snap.summary
    lines = [
        f"Files:  {s.files_new:>8} new, {s.files_changed:>8} changed, {s.files_unchanged:>8} unchanged",
        f"Dirs:   {s.dirs:>8}",
    ]
    for db in snap.databases:
        rows = sum(db.row_counts.values())
        lines.append(
            f"Database {db.name}: {db.engine} {db.server_version}, {db.format}, "
            f"{human_bytes(db.size)}, {plural(len(db.row_counts), 'table')}, {plural(rows, 'row')}"
        )
    lines.append(
        f"Added to the repository: {human_bytes(s.bytes_added)} ({human_bytes(s.bytes_stored)} stored)"
    )
    lines.append(
        f"processed {plural(s.files_total, 'file')}, {human_bytes(s.bytes_total)} in "
        f"{s.duration_s:.1f}s (read {human_bytes(s.bytes_read)})"
    )
    parent = f", parent {snap.parent[:8]}" if snap.parent else ""
    app = f" of {snap.app}" if snap.app else ""
    lines.append(f"snapshot {snap.short_id}{app} saved ({snap.type}{parent})")
    return lines
