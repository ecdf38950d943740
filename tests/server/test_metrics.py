"""/metrics against the clock: what a Prometheus alert on the last backup's age reads."""

from __future__ import annotations

import datetime as dt

import pytest

from casbackup.repo.snapshot import Snapshot, Summary
from casbackup.server.repos import RepoHandle
from casbackup.verify.records import RecordSet, VerificationRecord
from tests.server.conftest import Env

NOW = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
YESTERDAY = NOW - dt.timedelta(days=1)
AHEAD = NOW + dt.timedelta(days=365)  # written while the clock ran a year ahead


def _snap(when: dt.datetime, files: int) -> Snapshot:
    return Snapshot(time=when.isoformat(), start_ns=0, host="h", user="u", paths=("/x",),
                    tree="00" * 32, app="shop", summary=Summary(files_total=files))  # fmt: skip


def _record(when: dt.datetime, ok: bool) -> VerificationRecord:
    return VerificationRecord(snapshot_id="00" * 32, app="shop", time=when.isoformat(), host="h",
                              duration_s=1.0, ok=ok, files_checked=1, bytes_checked=1)  # fmt: skip


def test_a_snapshot_dated_in_the_future_is_not_the_last_backup(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # casbackup_last_backup_timestamp_seconds said 2027 after one backup while the clock ran
    # a year ahead: 'time() - last backup > 26h' stayed silent for a year of missed backups,
    # while the dashboard and the scheduler already called them overdue.
    snaps = [_snap(YESTERDAY, 7), _snap(AHEAD, 9)]
    records = RecordSet([_record(YESTERDAY, False), _record(AHEAD, True)])
    monkeypatch.setattr(RepoHandle, "snapshots", lambda self, warnings: snaps)
    monkeypatch.setattr(RepoHandle, "records", lambda self: records)
    monkeypatch.setattr(env.service, "clock", NOW.timestamp)
    text = env.client.get("/metrics", headers=env.h("viewer")).text
    assert _value(text, "casbackup_last_backup_timestamp_seconds") == YESTERDAY.timestamp()
    assert _value(text, "casbackup_last_backup_files") == 7
    assert _value(text, "casbackup_snapshots") == 2  # it is still a snapshot
    assert _value(text, "casbackup_last_verification_timestamp_seconds") == YESTERDAY.timestamp()
    assert _value(text, "casbackup_last_verification_ok") == 0


def _value(text: str, name: str) -> float:
    """The value of metric ``name`` for application shop in the exposition ``text``."""
    prefix = f'{name}{{app="shop"}} '
    return float(next(line for line in text.splitlines() if line.startswith(prefix))[len(prefix) :])
