"""Node times are shown exactly (integers, never a float): nanoseconds kept, never rounded up
to the next second, years after 2262 and before 1970 right (ls, find, the server's listing)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from casbackup.nstime import display_ns, iso_ns
from casbackup.testing.fixtures import run_cli
from tests.cli.conftest import init_repo

NS = 1_000_000_000
# name -> (mtime in ns, ls -l's time, --json's mtime), in UTC
TIMES = {
    "late": (10_413_792_000 * NS + 1, "2300-01-01 00:00:00", "2300-01-01T00:00:00.000000001+00:00"),
    "moon": (-14_182_940 * NS + 500, "1969-07-20 20:17:40", "1969-07-20T20:17:40.000000500+00:00"),
    "edge": (1_700_000_000 * NS + 999_999_999, "2023-11-14 22:13:20",
             "2023-11-14T22:13:20.999999999+00:00"),  # a float rounds this up to :21
    "frac": (1_700_000_000 * NS + 123_456_789, "2023-11-14 22:13:20",
             "2023-11-14T22:13:20.123456789+00:00"),
}  # fmt: skip


def test_formatting_is_exact() -> None:
    for ns, text, iso in TIMES.values():
        assert display_ns(ns, local=False) == text
        assert iso_ns(ns, local=False) == iso
    # Outside years 1..9999: the raw seconds, never a wrong date (trees hold any i64 seconds).
    assert display_ns((2**63 - 1) * NS, local=False) == f"@{2**63 - 1}.000000000"
    assert iso_ns(-(2**62) * NS - 1, local=False) == f"@{-(2**62) - 1}.999999999"
    assert iso_ns(-62135596800 * NS, local=False) == "0001-01-01T00:00:00.000000000+00:00"


@pytest.fixture
def snapshot_of_times(tmp_path: Path) -> str:
    src = tmp_path / "src"
    src.mkdir()
    for name, (ns, _text, _iso) in TIMES.items():
        (src / name).write_text(name)
        try:
            os.utime(src / name, ns=(ns, ns))
        except (OverflowError, OSError) as exc:
            pytest.skip(f"this file system does not take {name}'s time: {exc}")
        if os.stat(src / name).st_mtime_ns != ns:
            pytest.skip(f"this file system does not keep {name}'s time to the nanosecond")
    repo = init_repo(str(tmp_path / "repo"))
    res = run_cli("backup", str(src), repo=repo)
    assert res.code == 0, res.err
    return repo


def test_ls_and_find_show_node_times_exactly(snapshot_of_times: str) -> None:
    repo = snapshot_of_times
    env = {"TZ": "UTC"}
    long = run_cli("ls", "-l", "latest", repo=repo, env=env)
    assert long.code == 0, long.err
    for name, (_ns, text, _iso) in TIMES.items():
        line = next(x for x in long.out.splitlines() if x.endswith(f"/{name}"))
        assert f" {text} " in line, (name, line)
    docs = [
        json.loads(x)
        for x in run_cli("--json", "ls", "latest", repo=repo, env=env).out.splitlines()
    ]
    by_name = {d["name"]: d for d in docs if "name" in d}
    for name, (ns, _text, iso) in TIMES.items():
        assert by_name[name]["mtime"] == iso
        assert by_name[name]["mtime_ns"] == ns
    found = run_cli("find", "edge", repo=repo, env=env)
    assert found.code == 0, found.err
    assert f" {TIMES['edge'][1]} " in found.out, found.out
    found_json = run_cli("--json", "find", "edge", repo=repo, env=env)
    assert found_json.code == 0, found_json.err
    assert TIMES["edge"][2] in found_json.out, found_json.out


def test_server_snapshot_listing_times_are_exact() -> None:
    pytest.importorskip("fastapi")
    from casbackup.server.routes_snapshots import _ns

    for ns, _text, iso in TIMES.values():
        assert _ns(ns) == iso
    assert _ns((2**63 - 1) * NS) == f"@{2**63 - 1}.000000000"  # was shown as 1970-01-01
