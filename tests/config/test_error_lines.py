"""A config error says on which line of the file the key it names is: 'applications[2].
databases[1].port' in a file of several applications made the user count tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from casbackup.config import load_config
from casbackup.config.locate import key_lines, line_of
from casbackup.errors import ConfigError

CONFIG = """\
version = 1
[repository]
location = "/srv/repo"

[[applications]]
name = "shop"
sources = ["/srv/shop"]

[[applications]]
name = "wiki"
sources = [
    "/srv/wiki",
    "/etc/wiki",
]
schedule = "0 2 * * *"

[applications.retention]
keep_daily = 7

[[applications.databases]]
name = "pg"
engine = "postgresql"
database = "wiki"

[[applications.databases]]
name = "lite"
engine = "sqlite"
path = "/srv/wiki/wiki.db"

[applications.databases.options]
busy_timeout = 5
"""


def test_key_lines_follow_tables_and_arrays_of_tables() -> None:
    lines = key_lines(CONFIG)
    assert lines["version"] == 1
    assert lines["repository"] == 2 and lines["repository.location"] == 3
    assert lines["applications[0]"] == 5 and lines["applications[0].name"] == 6
    assert lines["applications[1].sources"] == 11
    assert lines["applications[1].schedule"] == 15
    assert lines["applications[1].retention.keep_daily"] == 18
    assert lines["applications[1].databases[0].engine"] == 22
    assert lines["applications[1].databases[1].path"] == 28
    assert lines["applications[1].databases[1].options.busy_timeout"] == 31
    # An element of an array is on its array's line; a missing key on its table's.
    assert line_of(lines, "applications[1].sources[1]") == 11
    assert line_of(lines, "applications[1].retention.keep_weekly") == 17
    assert line_of(lines, "nowhere.at.all") is None


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("keep_daily = 7", "keep_dayly = 7",
         "applications[1].retention.keep_dayly: unknown key (did you mean 'keep_daily'?) "
         "(line 18)"),
        ("busy_timeout = 5", "busy_timeot = 5",
         "applications[1].databases[1].options.busy_timeot: unknown sqlite option (known: "
         "allow_empty, busy_timeout, temp_dir) (line 31)"),
        ('engine = "postgresql"', 'engine = "postgre"',
         "applications[1].databases[0].engine: unknown engine 'postgre': expected one of "
         "mysql, postgresql, sqlite (aliases: mariadb = mysql, postgres = postgresql, "
         "sqlite3 = sqlite) (line 22)"),
        ('    "/etc/wiki",\n', '    "",\n',
         "applications[1].sources[1]: must be a non-empty string, not '' (line 11)"),
    ],
)  # fmt: skip
def test_errors_name_the_line(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = tmp_path / "casbackup.toml"
    assert old in CONFIG
    path.write_text(CONFIG.replace(old, new))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: {message}"


def test_several_problems_each_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "casbackup.toml"
    path.write_text(CONFIG.replace("keep_daily = 7", "keep_daily = -1").replace(
        'schedule = "0 2 * * *"', 'schedule = "0 25 * * *"'))  # fmt: skip
    with pytest.raises(ConfigError) as e:
        load_config(path)
    text = str(e.value)
    assert text.startswith(f"{path}: 2 problems: "), text
    assert (
        "applications[1].schedule: '0 25 * * *' is not a cron expression: Bad hour (line 15)"
        in text
    )
    assert "applications[1].retention.keep_daily: must be >= 0, not -1 (line 18)" in text
