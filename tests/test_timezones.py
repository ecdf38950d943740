"""One time zone for schedules and retention (casbackup/timezones.py), in serve and the CLI."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from casbackup.config import load_config
from casbackup.errors import ConfigError, UsageError
from casbackup.testing.fixtures import PASSWORD, run_cli
from casbackup.timezones import machine_zone, zone
from tests.server.test_retention_zone import TIMES, _snapshots


def test_zone_by_name_or_the_machines(tmp_path: Path) -> None:
    assert str(zone("Europe/Berlin")) == "Europe/Berlin"
    with pytest.raises(UsageError, match="'Mars/Olympus' is not a known time zone"):
        zone("Mars/Olympus")
    # TZ that zoneinfo cannot read (a POSIX rule) falls back as documented, never raises.
    assert machine_zone(env={"TZ": "CET-1CEST,M3.5.0,M10.5.0/3"},
                        localtime=str(tmp_path / "none")) == dt.UTC  # fmt: skip


def test_the_configs_timezone(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('timezone = "Europe/Berlin"\n')
    assert load_config(path).timezone == "Europe/Berlin"
    path.write_text('timezone = "Europe/Berlln"\n')
    with pytest.raises(ConfigError, match="timezone.*'Europe/Berlln' is not a known time zone"):
        load_config(path)
    path.write_text("")
    assert load_config(path).timezone is None


@pytest.mark.parametrize(("line", "removed"), [('timezone = "Europe/Berlin"\n', "after_midnight"),
                                               ("", "noon")])  # fmt: skip
def test_cli_forget_counts_days_in_the_configs_zone(
    tmp_path: Path, line: str, removed: str
) -> None:
    """At a day boundary: 23:30 UTC is the next day in Berlin. With the config's zone the CLI
    keeps what `casbackup serve` with that zone keeps; without, the machine's (here UTC)."""
    (tmp_path / "shop").mkdir()
    ids = _snapshots(tmp_path)
    config = tmp_path / "casbackup.toml"
    config.write_text(
        f'{line}[repository]\nlocation = "{tmp_path / "repo"}"\n\n'
        f'[[applications]]\nname = "shop"\nsources = ["{tmp_path / "shop"}"]\n\n'
        "[applications.retention]\nkeep_daily = 2\n"
    )
    res = run_cli("--json", "--config", str(config), "forget", "--app", "shop", "--dry-run",
                  env={"TZ": "UTC", "CASBACKUP_PASSWORD": PASSWORD})  # fmt: skip
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    names = {v: k for k, v in ids.items()}
    assert [names[e["id"]] for e in doc["groups"][0]["remove"]] == [removed], doc
    assert set(TIMES) - {removed} == {names[e["id"]] for e in doc["groups"][0]["keep"]}
