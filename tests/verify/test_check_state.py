"""check --read-data-subset forms, and bounded checks that cover the repository over time."""

from __future__ import annotations

import json

import pytest

from casbackup.errors import UsageError
from casbackup.repo.ids import Kind
from casbackup.testing.fixtures import make_repo, run_cli
from casbackup.verify.check import CheckOptions, Subset, check
from casbackup.verify.check_state import STATE_DIR, load_check_state
from tests.maintenance.history import build_history


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10%", Subset(fraction=0.1)),
        ("2.5%", Subset(fraction=0.025)),
        ("1/5", Subset(bucket=(1, 5))),
        ("5/5", Subset(bucket=(5, 5))),
        ("500M", Subset(size=500 << 20)),
        ("2GiB", Subset(size=2 << 30)),
        ("1024", Subset(size=1024)),
    ],
)
def test_subset_forms(text: str, expected: Subset) -> None:
    assert Subset.parse(text) == expected


@pytest.mark.parametrize("text", ["0%", "101%", "0/3", "4/3", "lots", "-5M"])
def test_subset_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        Subset.parse(text)


def test_subset_buckets_partition_and_size_bounds() -> None:
    packs = {f"{i:02x}" + "0" * 62: 100 for i in range(64)}
    buckets = [Subset.parse(f"{n}/4").choose(packs) for n in range(1, 5)]
    assert sorted(p for b in buckets for p in b) == sorted(packs)
    assert len(Subset.parse("250").choose(packs)) == 3  # stops once the size is reached
    assert len(Subset.parse("25%").choose(packs)) == 16


def test_bounded_checks_cover_everything_least_recent_first(repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    build_history(repo, str(tmp_path), list(range(6)), file_size=4000)
    packs = {name.rsplit("/", 1)[1] for name, _ in repo.backend.list("data/")}
    assert len(packs) >= 6
    seen: set[str] = set()
    for _ in range(len(packs)):
        # A zero budget reads exactly one pack per run: the least recently verified.
        report = check(repo, CheckOptions(read_data=True, max_duration=0.0))
        assert report.ok and report.packs_read == 1
        state = load_check_state(repo, [])
        newly = set(state.packs) - seen
        assert len(newly) == 1, "each run must pick a pack never verified before"
        seen |= newly
    assert seen == packs and report.packs_never_verified == 0
    # One state object at a time: each run writes the new one, then deletes the old.
    assert len(list(repo.backend.list(f"{STATE_DIR}/"))) == 1
    # Once everything is verified, the oldest verification is read next.
    oldest = min(state.packs, key=lambda p: (state.packs[p].verified, p))
    check(repo, CheckOptions(read_data=True, max_duration=0.0))
    after = load_check_state(repo, [])
    assert after.packs[oldest].verified >= state.packs[oldest].verified


def test_damaged_pack_is_recorded_and_read_first(repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    build_history(repo, str(tmp_path), [2, 1, 0], file_size=4000)
    check(repo, CheckOptions(read_data=True))  # everything verified once
    name, size = sorted(repo.backend.list("data/"))[0]
    path = tmp_path / "repo" / name
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.write_bytes(bytes(data))
    report = check(repo, CheckOptions(read_data=True))
    assert not report.ok
    pack = name.rsplit("/", 1)[1]
    assert load_check_state(repo, []).packs[pack].ok is False
    # A bounded run goes back to the failing pack before anything else.
    report = check(repo, CheckOptions(read_data=True, max_duration=0.0))
    assert report.packs_read == 1 and pack in report.damaged_packs


def test_two_states_left_by_a_crash_are_merged(repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    build_history(repo, str(tmp_path), [1, 0], file_size=4000)
    check(repo, CheckOptions(read_data=True))
    # A second state as if a crash happened between writing it and deleting the first.
    repo.save_file_object(STATE_DIR, Kind.CHECK_STATE, json.dumps(
        {"version": 1, "updated": "x", "packs": {"ab" * 32: {"verified": 1, "ok": True}}}).encode())  # fmt: skip
    state = load_check_state(repo, [])
    assert len(state.names) == 2 and "ab" * 32 in state.packs
    check(repo, CheckOptions(read_data=True, max_duration=0.0))
    assert len(list(repo.backend.list(f"{STATE_DIR}/"))) == 1
    # A pack that is gone is dropped from the state.
    assert "ab" * 32 not in load_check_state(repo, []).packs


def test_cli_max_duration(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "repo")
    repo = make_repo(path)
    build_history(repo, str(tmp_path), [1, 0], file_size=4000)
    repo.close()
    res = run_cli("check", "--max-duration", "30min", repo=path)
    assert res.code == 0, res.err
    assert "0 packs not verified yet" in res.out
    res = run_cli("--json", "check", "--max-duration", "1", repo=path)
    doc = json.loads(res.out.splitlines()[-1])
    assert doc["ok"] and doc["packs_never_verified"] == 0 and doc["packs_read"] >= 1
    res = run_cli("check", "--max-duration", "soon", repo=path)
    assert res.code == 2 and "invalid value" in res.err
    res = run_cli("check", "--read-data-subset", "1/2", repo=path)
    assert res.code == 0, res.err
