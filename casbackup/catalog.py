"""Listings both faces show: applications with their latest snapshot, snapshots with their
verification state. The CLI renders these as tables or JSON; the service returns them as JSON.

Each function reads the repository once per call (snapshots, verification records) and
returns plain JSON-ready dicts, so the CLI's ``--json`` and the API agree field for field.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from casbackup.config import Config
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.verify.records import RecordSet, VerificationRecord, list_records


def verification_doc(record: VerificationRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {"ok": record.ok, "time": record.time, "record": record.id}


def snapshot_doc(s: Snapshot, verification: VerificationRecord | None = None) -> dict[str, Any]:
    """A snapshot as JSON: every stored field except the application definition."""
    doc = asdict(s)
    doc["short_id"] = s.short_id
    doc["protected_bytes"] = s.protected_bytes  # files + database dumps
    doc.pop("app_definition", None)
    doc["verification"] = verification_doc(verification)
    return doc


def verification_state(record: VerificationRecord | None) -> str:
    """ "verified", "failed" or "not verified"."""
    if record is None:
        return "not verified"
    return "verified" if record.ok else "failed"


def application_rows(
    repo: Repository | None,
    config: Config | None,
    warnings: list[str],
    snapshots: list[Snapshot] | None = None,
    records: RecordSet | None = None,
) -> list[dict[str, Any]]:
    """Each application of the config, then each one only the repository knows (sorted), with
    its latest snapshot, snapshot count and the latest snapshot's verification state.

    ``repo`` may be None (no repository reachable): applications then come from the config
    alone. Unreadable snapshots and records are reported in ``warnings``. ``snapshots`` and
    ``records`` may be given when the caller already holds them (the service caches both).
    """
    latest: dict[str, Snapshot] = {}
    counts: dict[str, int] = {}
    verified: dict[str, VerificationRecord] = {}
    if repo is not None:
        snaps = snapshots if snapshots is not None else repo.list_snapshots(warnings=warnings)
        for snap in snaps:  # oldest first: the last one wins
            if snap.app:
                latest[snap.app] = snap
                counts[snap.app] = counts.get(snap.app, 0) + 1
        records = records if records is not None else list_records(repo)
        warnings.extend(records.warnings)
        verified = records.latest_by_snapshot()
    configured = {a.name: a for a in config.applications} if config else {}
    names = list(configured) + sorted(n for n in latest if n not in configured)
    rows: list[dict[str, Any]] = []
    for name in names:
        app, snap = configured.get(name), latest.get(name)
        rows.append({
            "name": name,
            "description": app.description if app else "",
            "in_config": app is not None,
            "databases": [d.name for d in app.databases] if app else
                         [d.name for d in snap.databases] if snap else [],
            "snapshots": counts.get(name, 0),
            "last_snapshot": None if snap is None else {
                "id": snap.id, "short_id": snap.short_id, "time": snap.time, "type": snap.type,
            },
            "verification": verification_state(verified.get(snap.identity)) if snap else None,
        })  # fmt: skip
    return rows
