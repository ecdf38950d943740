from __future__ import annotations

import json

import pytest

from casbackup.errors import FormatError, UnsupportedFormat
from casbackup.repo.ids import Kind
from casbackup.verify.records import (
    DatabaseCheck,
    Failure,
    VerificationRecord,
    latest_verification,
    list_records,
    save_record,
    state_label,
    verified_snapshot_ids,
)


def record(snapshot_id: str, ok: bool, time: str) -> VerificationRecord:
    return VerificationRecord(
        snapshot_id=snapshot_id, app="shop", time=time, host="h", duration_s=1.5, ok=ok,
        files_checked=3, bytes_checked=300,
        databases=(DatabaseCheck("main", "postgresql", ok, 2, 40),),
        failures=() if ok else (Failure("/srv/x", "content does not match"),),
        warnings=("w",), program_version="0.1.0",
    )  # fmt: skip


def test_encode_decode_round_trip_and_layout() -> None:
    r = record("ab" * 32, False, "2024-01-01T00:00:00+00:00")
    doc = json.loads(r.encode())
    assert doc["version"] == 1 and "id" not in doc
    assert doc["failures"] == [{"path": "/srv/x", "problem": "content does not match"}]
    assert doc["databases"][0] == {
        "name": "main", "engine": "postgresql", "ok": False, "tables_compared": 2,
        "rows_compared": 40, "problem": "",
    }  # fmt: skip
    assert VerificationRecord.decode(r.encode(), "id1") == VerificationRecord(
        **{**r.__dict__, "id": "id1"}
    )


@pytest.mark.parametrize(
    "data", [b"", b"[]", b"{}", b'{"version": 1}', b"\xff", b'{"version":1,"ok":1}']
)
def test_malformed_records_raise_format_errors(data: bytes) -> None:
    with pytest.raises(FormatError):
        VerificationRecord.decode(data)


def test_unknown_version_is_refused() -> None:
    with pytest.raises(UnsupportedFormat):
        VerificationRecord.decode(b'{"version": 99}')


def test_saved_records_are_encrypted_and_the_newest_wins(repo, repo_path) -> None:  # type: ignore[no-untyped-def]
    a, b = "aa" * 32, "bb" * 32
    save_record(repo, record(a, True, "2024-01-01T00:00:00+00:00"))
    save_record(repo, record(a, False, "2024-01-02T00:00:00+00:00"))
    saved = save_record(repo, record(b, True, "2024-01-01T12:00:00+00:00"))
    assert len(saved.id) == 64
    raw = repo.backend.get(f"verifications/{saved.id}")
    assert b"shop" not in raw and b"snapshot_id" not in raw
    assert repo.get_encrypted(f"verifications/{saved.id}", Kind.VERIFICATION)
    assert [r.snapshot_id for r in list_records(repo).records] == [a, b, a]
    latest = latest_verification(repo, a)
    assert latest is not None and not latest.ok
    assert latest_verification(repo, "cc" * 32) is None
    assert verified_snapshot_ids(repo) == {b}
    assert (state_label(latest), state_label(saved), state_label(None)) == ("FAILED", "ok", "-")


def test_a_damaged_record_is_a_warning_not_an_error(repo) -> None:  # type: ignore[no-untyped-def]
    good = save_record(repo, record("aa" * 32, True, "2024-01-01T00:00:00+00:00"))
    repo.backend.put("verifications/" + "0" * 64, b"garbage")
    found = list_records(repo)
    assert [r.id for r in found.records] == [good.id]
    assert len(found.warnings) == 1 and "00000000" in found.warnings[0]


def test_a_record_dated_in_the_future_does_not_stay_the_newest(repo) -> None:  # type: ignore[no-untyped-def]
    """helper-55's weak list: the newest record was whichever said the latest time. A pass
    written while a machine's clock ran a year ahead stayed the snapshot's state after the
    clock was set right: a later failure of the same snapshot was hidden, recover and forget
    trusted it as verified. A record dated ahead of now counts as older than the others."""
    import datetime as dt

    sid = "cd" * 32
    now = dt.datetime.now(dt.UTC)

    def at(delta: dt.timedelta) -> str:
        return (now + delta).isoformat()

    ahead = save_record(repo, record(sid, True, at(dt.timedelta(days=365))))
    failed = save_record(repo, record(sid, False, at(-dt.timedelta(hours=1))))
    listed = list_records(repo)
    assert listed.latest_by_snapshot()[sid].id == failed.id
    assert [r.id for r in listed.records] == [ahead.id, failed.id]
    assert any(ahead.id[:8] in w and "in the future" in w for w in listed.warnings)
    assert sid not in verified_snapshot_ids(repo)
    # Once the clock has caught up, the record is dated as it should be: the newest.
    later = list_records(repo, now=now + dt.timedelta(days=366))
    assert later.latest_by_snapshot()[sid].id == ahead.id
    # A few minutes of skew between machines is no reason to doubt a record.
    near = save_record(repo, record(sid, True, at(dt.timedelta(minutes=5))))
    assert list_records(repo).latest_by_snapshot()[sid].id == near.id
