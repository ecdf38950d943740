"""Verification records: ``verifications/<file id>``, an envelope (kind VERIFICATION) of JSON.

A record says that one snapshot was restored into a sandbox on some machine at some time, and
what was found. Records live in the repository, encrypted like snapshots, so every machine that
opens the repository knows which snapshots are proven restorable; a record is never changed,
a later verification adds a new one and the newest record of a snapshot is its state.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from casbackup.errors import CasError, FormatError, UnsupportedFormat
from casbackup.repo.ids import Kind
from casbackup.repo.localstate import SeenRecord, StateDoc
from casbackup.repo.repository import Repository

RECORD_VERSION = 1
DIRECTORY = "verifications"
# A record dated further ahead than this was written by a machine whose clock ran ahead.
FUTURE_SKEW = dt.timedelta(minutes=10)


@dataclass(frozen=True)
class Failure:
    path: str  # path in the snapshot ("/srv/app/x"), or "database <name>" for a dump
    problem: str


@dataclass(frozen=True)
class DatabaseCheck:
    name: str
    engine: str
    ok: bool
    tables_compared: int = 0
    rows_compared: int = 0  # sum of the row counts recorded at backup time
    problem: str = ""  # empty when ok


@dataclass(frozen=True)
class VerificationRecord:
    snapshot_id: str
    app: str | None
    time: str  # ISO 8601 UTC, when the verification started
    host: str
    duration_s: float
    ok: bool
    files_checked: int
    bytes_checked: int
    databases: tuple[DatabaseCheck, ...] = ()
    failures: tuple[Failure, ...] = ()
    warnings: tuple[str, ...] = ()
    program_version: str = ""
    id: str = ""  # not stored: the file id, filled in when saved or loaded

    def encode(self) -> bytes:
        doc = self.to_dict()
        doc.pop("id")
        doc["version"] = RECORD_VERSION
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def decode(cls, data: bytes, record_id: str = "") -> VerificationRecord:
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict):
                raise FormatError("verification record is not an object")
            version = doc.pop("version", None)
            if not isinstance(version, int):
                raise FormatError("verification record has no version")
            if version != RECORD_VERSION:
                raise UnsupportedFormat(f"verification record version {version!r} is not supported")
            doc["databases"] = tuple(DatabaseCheck(**d) for d in doc.get("databases", ()))
            doc["failures"] = tuple(Failure(**f) for f in doc.get("failures", ()))
            doc["warnings"] = tuple(doc.get("warnings", ()))
            record = cls(**doc, id=record_id)
        except (ValueError, TypeError, KeyError) as exc:
            raise FormatError(f"verification record is malformed: {exc}") from None
        if not isinstance(record.snapshot_id, str) or not isinstance(record.ok, bool):
            raise FormatError("verification record has a bad snapshot id or result")
        return record


@dataclass
class RecordSet:
    """Every readable record, oldest first, and what could not be read."""

    records: list[VerificationRecord] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # the warnings about unreadable records

    def latest_by_snapshot(self) -> dict[str, VerificationRecord]:
        latest: dict[str, VerificationRecord] = {}
        for record in self.records:  # oldest first: later ones win
            latest[record.snapshot_id] = record
        return latest


def save_record(repo: Repository, record: VerificationRecord) -> VerificationRecord:
    fid = repo.save_file_object(DIRECTORY, Kind.VERIFICATION, record.encode())
    saved = replace(record, id=fid)
    _remember(repo, {saved.snapshot_id: saved})
    return saved


def _seen(record: VerificationRecord) -> SeenRecord:
    return SeenRecord(record.id, record.time, record.ok)


def _remember(repo: Repository, newest: dict[str, VerificationRecord]) -> None:
    """Record, per snapshot, the newest verification record this client has seen."""

    def change(doc: StateDoc) -> bool:
        changed = False
        for sid, record in newest.items():
            old = doc.verifications.get(sid)
            if old is None or _seen(record).newer_than(old):
                doc.verifications[sid] = _seen(record)
                changed = True
        return changed

    if any(
        (old := repo.state.doc.verifications.get(sid)) is None or _seen(r).newer_than(old)
        for sid, r in newest.items()
    ):
        repo.state.update(change)


def _screen(repo: Repository, result: RecordSet, now: dt.datetime) -> None:
    """Notice a rollback: the newest record this client saw of a snapshot is gone.

    The snapshot's state then becomes a failed verification (a stand-in record with the
    missing one's id and time), so ``recover`` does not trust an older passing record
    without ``--allow-unverified``, and ``forget`` does not count it as verified. A new
    ``verify`` of the snapshot writes a newer record and clears this."""
    sort_records(result.records, now)
    present = {r.id for r in result.records}
    newest = result.latest_by_snapshot()
    for sid, seen in sorted(repo.state.doc.verifications.items()):
        if seen.id in present:
            continue
        current = newest.get(sid)
        if current is not None and _seen(current).newer_than(seen):
            continue
        message = (
            f"the newest verification record this client saw for snapshot {sid[:8]} "
            f"({seen.id[:8]}, {seen.time[:19]}, {'ok' if seen.ok else 'FAILED'}) is gone from "
            "the repository (rolled back or deleted); older records of it are not trusted: "
            "verify the snapshot again"
        )
        repo.alert(message)
        result.warnings.append(message)
        problem = "its newest verification record is missing from the repository"
        result.records.append(
            VerificationRecord(sid, None, seen.time, "", 0.0, False, 0, 0,
                               failures=(Failure("", problem),), id=seen.id)
        )  # fmt: skip
    sort_records(result.records, now)
    _remember(repo, {sid: r for sid, r in newest.items() if r.id in present})


def load_record(repo: Repository, record_id: str) -> VerificationRecord:
    data = repo.get_encrypted(f"{DIRECTORY}/{record_id}", Kind.VERIFICATION)
    return VerificationRecord.decode(data, record_id)


def list_records(repo: Repository, now: dt.datetime | None = None) -> RecordSet:
    """All records, oldest first (see ``_order``; ``now``: an aware time, default the
    clock's). A damaged record is reported, never fatal: it only means that one
    verification is forgotten, and the snapshot can be verified again."""
    result = RecordSet()
    for name, _size in repo.backend.list(DIRECTORY + "/"):
        rid = name.rsplit("/", 1)[1]
        try:
            result.records.append(load_record(repo, rid))
        except CasError as exc:
            message = f"verification record {rid[:8]} is unreadable: {exc}"
            result.warnings.append(message)
            result.damaged.append(message)
    now = dt.datetime.now(dt.UTC) if now is None else now
    for r in result.records:
        if _ahead(r, now):
            result.warnings.append(
                f"verification record {r.id[:8]} of snapshot {r.snapshot_id[:8]} is dated "
                f"{r.time[:19]}, in the future: it counts as older than the snapshot's other "
                "records (the clock of the machine that wrote it ran ahead)"
            )
    _screen(repo, result, now)
    return result


def _ahead(record: VerificationRecord, now: dt.datetime) -> bool:
    """Whether the record is dated after ``now`` beyond FUTURE_SKEW (or has no readable
    time: then it has no claim to be the newest either)."""
    try:
        when = dt.datetime.fromisoformat(record.time)
    except ValueError:
        return True
    return (when if when.tzinfo else when.replace(tzinfo=dt.UTC)) > now + FUTURE_SKEW


def sort_records(records: list[VerificationRecord], now: dt.datetime | None = None) -> None:
    """Sort ``records`` in place, oldest first, as every reader must (``now``: an aware
    time, default the clock's): by each record's own time, except that a record dated in
    the future (``_ahead``) counts as older than every other. Its machine's clock ran ahead,
    and dated as it is it would stay its snapshot's newest record, a pass hiding every later
    failure, until the real clock caught up (as a snapshot dated ahead hides an overdue run)."""
    at = dt.datetime.now(dt.UTC) if now is None else now
    records.sort(key=lambda r: (not _ahead(r, at), r.time, r.id))


def latest_verification(repo: Repository, snapshot_id: str) -> VerificationRecord | None:
    return list_records(repo).latest_by_snapshot().get(snapshot_id)


def verified_snapshot_ids(repo: Repository) -> set[str]:
    """Snapshots whose newest verification passed."""
    return {sid for sid, r in list_records(repo).latest_by_snapshot().items() if r.ok}


def state_label(record: VerificationRecord | None) -> str:
    """How `snapshots` and reports show a snapshot's verification: ok, FAILED or -."""
    if record is None:
        return "-"
    return "ok" if record.ok else "FAILED"
