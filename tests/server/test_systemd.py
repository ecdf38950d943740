"""The example systemd unit: verified by systemd-analyze where it exists."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[2] / "examples" / "casbackup-serve.service"


def test_unit_has_what_the_issue_asks() -> None:
    text = UNIT.read_text()
    for line in ("User=casbackup", "StateDirectory=casbackup", "Restart=on-failure", "ProtectSystem=strict",
                 "NoNewPrivileges=yes", "--state-dir /var/lib/casbackup", "127.0.0.1:8001"):  # fmt: skip
        assert line in text, line


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this environment's casbackup.
    exe = Path(sys.executable).parent / "casbackup"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/casbackup", str(exe)))
    out = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert UNIT.name not in out.stderr, out.stderr  # no warnings about our unit
