"""A local user who controls a source tree must not be able to stop the system's backups.

issue 18, item 2 (and issue 12's threat model): a file dated 2300-01-01 (``touch -d``)
is outside signed 64-bit nanoseconds; the tree encoder raised struct.error and the whole
backup died with a traceback and no snapshot. The file and everything else are saved,
and the time comes back on restore.
"""

from __future__ import annotations

import os
from pathlib import Path

from casbackup.testing.fixtures import run_cli

YEAR_2300_NS = 10_413_792_000 * 10**9  # 2300-01-01T00:00:00Z, past 2^63 - 1 ns


def test_a_file_dated_2300_is_backed_up_with_the_rest(repo_path: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "future.txt").write_bytes(b"from the future\n")
    (src / "normal.txt").write_bytes(b"ordinary\n")
    os.utime(src / "future.txt", ns=(YEAR_2300_NS, YEAR_2300_NS))
    res = run_cli("backup", str(src), repo=repo_path)
    assert "Traceback" not in res.err
    assert res.code == 0, res.err
    for name, data in (("future.txt", "from the future\n"), ("normal.txt", "ordinary\n")):
        found = run_cli("dump", f"latest:{src}/{name}", repo=repo_path)
        assert found.code == 0 and found.out == data, found.err
    again = run_cli("backup", str(src), repo=repo_path)
    assert again.code == 0, again.err
    target = tmp_path / "t"
    back = run_cli("restore", "latest", "-t", str(target), repo=repo_path)
    assert back.code == 0, back.err
    assert (target / str(src).lstrip("/") / "future.txt").stat().st_mtime_ns == YEAR_2300_NS
