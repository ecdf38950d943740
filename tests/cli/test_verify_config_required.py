"""`verify` checks the config's required files too, not only those a snapshot recorded at backup
time (found by a newcomer: adding a file to required_files and verifying again said OK)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.test_apps import CONFIG, cli, site  # noqa: F401 (site is a fixture)


@pytest.fixture(autouse=True)
def _no_env_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CASBACKUP_PASSWORD", raising=False)


def test_a_file_added_to_required_files_is_required_of_an_older_snapshot(site: Path) -> None:  # noqa: F811
    backup = cli(site, "-q", "backup", "--app", "notes")
    assert backup.code == 0, backup.err
    first = cli(site, "verify", "--app", "notes")
    assert first.code == 0, first.err
    (site / "casbackup.toml").write_text(
        CONFIG.replace('required_files = ["main.py"]', 'required_files = ["main.py", "app.conf"]')
    )
    again = cli(site, "verify", "--app", "notes")
    assert again.code == 28, (again.out, again.err)
    assert "app.conf: required file is missing from the snapshot" in again.err
    (site / "app" / "app.conf").write_text("x = 1\n")
    assert cli(site, "-q", "backup", "--app", "notes").code == 0
    assert cli(site, "verify", "--app", "notes").code == 0


def test_backup_of_paths_with_auto_verify_checks_the_configs_required_files(site: Path) -> None:  # noqa: F811
    """`backup PATHS --app NAME` records no definition: the config's list is all there is."""
    ok = cli(site, "-q", "backup", str(site / "app"), "--app", "notes", "--auto-verify")
    assert ok.code == 0, ok.err  # main.py, required by the config, is there
    (site / "casbackup.toml").write_text(
        CONFIG.replace('required_files = ["main.py"]', 'required_files = ["main.py", "app.conf"]')
    )
    bad = cli(site, "-q", "backup", str(site / "app"), "--app", "notes", "--auto-verify")
    assert bad.code == 28, (bad.out, bad.err)
    assert "app.conf: required file is missing from the snapshot" in bad.err
