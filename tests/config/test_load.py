"""Reading the TOML config: a valid file, where it is found, and malformed files."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from casbackup.config import describe, find_config_path, load_config
from casbackup.errors import ConfigError

EXAMPLE = Path(__file__).parents[2] / "examples" / "casbackup.toml"

VALID = """
[repository]
location = "repo"
password_command = "pass show casbackup --secret"

[[applications]]
name = "shop"
description = "the shop"
sources = ["src", "/etc/shop"]
excludes = ["*.log"]
default_backup_type = "differential"
schedule = "0  3 * * 1-5"

[applications.retention]
keep_daily = 7
keep_within = "1y6m"
keep_tags = ["release"]

[applications.verification]
required_files = ["src/manage.py"]

[[applications.databases]]
name = "main"
engine = "MariaDB"
host = "127.0.0.1"
port = 3306
user = "shop"
database = "shop db"
password_file = "secrets/db.pass"
options = { allow_empty = true }

[[applications.databases]]
name = "cache"
engine = "sqlite"
path = "src/cache.sqlite3"
"""


def write(tmp_path: Path, text: str, name: str = "casbackup.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_valid_toml(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, VALID))
    assert cfg.layout == "toml" and cfg.source == tmp_path / "casbackup.toml"
    assert cfg.repository.location == str(tmp_path / "repo")
    app = cfg.applications[0]
    assert app.sources == (str(tmp_path / "src"), "/etc/shop")
    assert app.default_backup_type == "differential"
    assert app.schedule == "0 3 * * 1-5"
    assert app.retention.keep_daily == 7 and app.retention.keep_within == "1y6m"
    assert app.verification.required_files == ("src/manage.py",)
    main, cache = app.databases
    assert main.engine == "mysql" and main.database == "shop db" and main.port == 3306
    assert main.password_file == str(tmp_path / "secrets" / "db.pass")
    assert main.options == {"allow_empty": "true"}
    assert cache.engine == "sqlite" and cache.path == str(tmp_path / "src" / "cache.sqlite3")
    assert cfg.app("shop") is app and cfg.app("nope") is None


def test_example_file_is_valid() -> None:
    cfg = load_config(EXAMPLE)
    assert [a.name for a in cfg.applications] == ["webshop", "tickets", "wiki"]
    assert {db.engine for a in cfg.applications for db in a.databases} == {
        "postgresql",
        "mysql",
        "sqlite",
    }


def test_describe_masks_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = VALID.replace('location = "repo"', 'location = "s3:https://key:s3cr3t@host/bucket"')
    out = describe(load_config(write(tmp_path, text)))
    assert out["repository"]["location"] == "s3:https://***@host/bucket"
    assert out["repository"]["password"] == {"command": "pass ***"}
    db = out["applications"][0]["databases"][0]
    assert db["password"] == {"file": str(tmp_path / "secrets" / "db.pass"), "present": False}
    assert "s3cr3t" not in repr(out) and "--secret" not in repr(out)


def test_find_config_path_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home, work, xdg = tmp_path / "home", tmp_path / "work", tmp_path / "xdg"
    for d in (home, work, xdg):
        d.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("CASBACKUP_CONFIG", raising=False)
    monkeypatch.chdir(work)
    assert find_config_path(None) is None
    user = home / ".config" / "casbackup" / "config.toml"
    user.parent.mkdir(parents=True)
    user.write_text("")
    assert find_config_path(None) == user
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    assert find_config_path(None) is None
    (xdg / "casbackup").mkdir()
    (xdg / "casbackup" / "config.toml").write_text("")
    assert find_config_path(None) == xdg / "casbackup" / "config.toml"
    (work / "casbackup.toml").write_text("")
    assert find_config_path(None) == work / "casbackup.toml"
    env_file = write(tmp_path, "", "env.toml")
    monkeypatch.setenv("CASBACKUP_CONFIG", str(env_file))
    assert find_config_path(None) == env_file
    flag_file = write(tmp_path, "", "flag.toml")
    assert find_config_path(str(flag_file)) == flag_file
    with pytest.raises(ConfigError, match="config file named by --config does not exist"):
        find_config_path(str(tmp_path / "missing.toml"))
    monkeypatch.setenv("CASBACKUP_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match="named by CASBACKUP_CONFIG does not exist"):
        find_config_path(None)
    # A folder given by mistake exists: saying "does not exist" sends the user looking for it.
    with pytest.raises(ConfigError, match="config file named by --config is not a file"):
        find_config_path(str(tmp_path))


APP = '[[applications]]\nname = "a"\nsources = ["/x"]\n'
DB = APP + '[[applications.databases]]\nname = "d"\n'

# (file text, expected key path or None, expected message fragment)
MALFORMED = [
    ('[repository\nlocation = "x"', None, "invalid TOML: Expected ']' at the end of a table "
     "declaration (at line 1, column 12)"),
    ("[[applications]]\nname = \"a\"\nsources = [\"/x\"]\nsorces = []\n",
     "applications[0].sorces", "unknown key (did you mean 'sources'?)"),
    ('[repositry]\nlocation = "x"\n', "repositry", "unknown key (did you mean 'repository'?)"),
    ('[[applications]]\nsources = ["/x"]\n', "applications[0]", "missing required key 'name'"),
    ('[[applications]]\nname = "a"\n', "applications[0]", "missing required key 'sources'"),
    ('[[applications]]\nname = "a"\nsources = "/x"\n', "applications[0].sources",
     "must be an array of strings, not a string"),
    ('[[applications]]\nname = "a"\nsources = ["/x", 3]\n', "applications[0].sources[1]",
     "must be a non-empty string, not 3"),
    (APP + APP, "applications[1].name", "duplicate application name 'a' (also applications[0])"),
    (APP + 'default_backup_type = "weekly"\n', "applications[0].default_backup_type",
     "unknown backup type 'weekly': expected one of full, incremental, differential"),
    (APP + "[applications.retention]\nkeep_daily = -1\n",
     "applications[0].retention.keep_daily", "must be >= 0, not -1"),
    (APP + '[applications.retention]\nkeep_daily = "7"\n',
     "applications[0].retention.keep_daily", "must be an integer, not a string"),
    (APP + '[applications.retention]\nkeep_within = "7 days"\n',
     "applications[0].retention.keep_within", "'7 days' is not a duration"),
    (APP + '[applications.retention]\nkeep_within_daily = "30"\n',
     "applications[0].retention.keep_within_daily", "'30' is not a duration"),
    (APP + 'schedule = "every night"\n', "applications[0].schedule",
     "'every night' is not a cron expression"),
    (APP + 'schedule = "99 * * * *"\n', "applications[0].schedule",  # what serve would refuse
     "'99 * * * *' is not a cron expression: Bad minute"),
    (DB + 'engine = "oracle"\n', "applications[0].databases[0].engine",
     "unknown engine 'oracle': expected one of mysql, postgresql, sqlite"),
    (DB + 'engine = "postgresql"\ndatabase = "x"\npassword = "hunter2"\n',
     "applications[0].databases[0].password",
     "inline passwords are not accepted: put the password in an environment variable "
     "(password_env) or a file (password_file)"),
    ('[repository]\npassword = "hunter2"\n', "repository.password", "inline passwords are not"),
    (DB + 'engine = "postgresql"\n', "applications[0].databases[0]",
     "missing required key 'database' (the postgresql database name)"),
    (DB + 'engine = "sqlite"\n', "applications[0].databases[0]",
     "missing required key 'path' (the SQLite file)"),
    # a typo of a required key: the unknown-key check never runs, so the typo is named here
    (DB + 'engine = "sqlite"\npathh = "a.db"\n', "applications[0].databases[0]",
     "missing required key 'path' (the SQLite file); is 'pathh' a typo of it?"),
    (DB + 'engine = "mysql"\ndatabse = "x"\n', "applications[0].databases[0]",
     "missing required key 'database' (the mysql database name); is 'databse' a typo of it?"),
    (DB + 'engine = "sqlite"\npath = "a.db"\nhost = "h"\n',
     "applications[0].databases[0].host", "is not used by the sqlite engine"),
    (DB + 'engine = "mysql"\ndatabase = "x"\nport = 70000\n',
     "applications[0].databases[0].port", "must be between 1 and 65535, not 70000"),
    (DB + 'engine = "sqlite"\npath = "a.db"\n' + '[[applications.databases]]\nname = "d"\n'
     'engine = "sqlite"\npath = "b.db"\n', "applications[0].databases[1].name",
     "duplicate database name 'd' (also databases[0])"),
    (APP + '[[applications.databases]]\nname = "../etc"\nengine = "sqlite"\npath = "a"\n',
     "applications[0].databases[0].name", "'../etc' is not a valid database name"),
    (DB + 'engine = "mysql"\ndatabase = "x"\noptions = { compress = true }\n',
     "applications[0].databases[0].options.compress", "unknown mysql option"),
    (DB + 'engine = "postgresql"\ndatabase = "x"\noptions = { lock_wait_timeout = 0 }\n',
     "applications[0].databases[0].options.lock_wait_timeout",
     "must be a number of seconds from 1 to 86400, not '0'"),
    (DB + 'engine = "sqlite"\npath = "a.db"\noptions = { busy_timeout = "1 min" }\n',
     "applications[0].databases[0].options.busy_timeout",
     "must be a number of seconds from 0 to 86400, not '1 min'"),
    (DB + 'engine = "mysql"\ndatabase = "x"\npassword_env = "A"\npassword_file = "f"\n',
     "applications[0].databases[0].password_file", "give password_env or password_file"),
    ('[repository]\npassword_env = "A"\npassword_file = "f"\n', "repository.password_file",
     "give only one of password_env, password_file, password_command"),
    ("version = 2\n", "version", "unsupported config version 2"),
    ("[snapshots]\nenabled = true\n", "snapshots", "snapshots are enabled but no 'provider'"),
    ('[verification]\nauto_verify = "yes"\n', "verification.auto_verify",
     "must be true or false, not a string"),
    ('[[applications]]\nname = "a/b"\nsources = ["/x"]\n', "applications[0].name",
     "'a/b' is not a valid application name"),
    ('[applications.shop]\nsources = ["/x"]\n', "applications",
     "must be an array of tables, not a table: start each entry with its own "
     "[[applications]] line"),
    (APP + '[applications.databases.d]\nengine = "sqlite"\n', "applications[0].databases",
     "start each entry with its own [[applications.databases]] line"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "key", "fragment"), MALFORMED, ids=range(len(MALFORMED)))
def test_malformed(tmp_path: Path, text: str, key: str | None, fragment: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.key == key
    assert e.value.path == str(path)
    assert fragment in str(e.value)
    expected_prefix = f"{path}: {key}: " if key else f"{path}: "
    assert str(e.value).startswith(expected_prefix)
    assert e.value.exit_code == 2 and "\n" not in str(e.value)


def test_missing_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 11\)"):
        load_config(bad)


ALL_WRONG = """
version = 1
[repository]
location = "/tmp/x"
pasword_file = "y"

[[applications]]
name = "a/b"
sources = ["/srv"]
schedule = "nope"
typo_key = 1

[[applications]]
name = "ok"
sources = []
default_backup_type = "weekly"

[[applications.databases]]
name = "d"
engine = "oracle"

[[applications.databases]]
name = "e"
engine = "sqlite"

[snapshots]
enabled = true
"""


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, ALL_WRONG)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: 9 problems: "), message
    assert "\n" not in message  # one line, as every CLI error
    for fragment in (
        "applications[0].name: 'a/b' is not a valid application name",
        "applications[0].schedule: 'nope' is not a cron expression",
        "applications[0].typo_key: unknown key",
        "applications[1].sources: must list at least one entry",
        "applications[1].default_backup_type: unknown backup type 'weekly'",
        "applications[1].databases[0].engine: unknown engine 'oracle'",
        "applications[1].databases[1]: missing required key 'path'",
        "repository.pasword_file: unknown key (did you mean 'password_file'?)",
        "snapshots: snapshots are enabled but no 'provider' is given",
    ):
        assert fragment in message, fragment
    # In the order of the file's sections as checked, each once.
    assert message.count("unknown engine") == 1


def test_problems_in_one_table_and_beside_a_broken_application_are_all_reported(
    tmp_path: Path,
) -> None:
    """Validation goes on past a key's problem inside its table too, and a duplicate name
    is found even when the other entry of that name has problems of its own."""
    path = write(
        tmp_path,
        """
[verification]
auto_verify = "yes"
cleanup_hours = -2

[[applications]]
name = "shop"
sources = []
[applications.retention]
keep_within = "forever"
keep_last = -1
keep_daily = "7"

[[applications]]
name = "shop"
sources = ["/srv/shop"]
""",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: 7 problems: "), message
    for fragment in (
        "verification.auto_verify: must be true or false, not a string",
        "verification.cleanup_hours: must be >= 0, not -2",
        "applications[0].sources: must list at least one entry",
        "applications[0].retention.keep_within: 'forever' is not a duration",
        "applications[0].retention.keep_last: must be >= 0, not -1",
        "applications[0].retention.keep_daily: must be an integer, not a string",
        "applications[1].name: duplicate application name 'shop' (also applications[0])",
    ):
        assert fragment in message, fragment


def test_several_unknown_keys_in_one_table_are_all_named(tmp_path: Path) -> None:
    path = write(tmp_path, '[repository]\nlocaton = "r"\npasword_env = "X"\n')
    with pytest.raises(ConfigError, match="2 problems") as info:
        load_config(path)
    assert "repository.locaton: unknown key (did you mean 'location'?)" in str(info.value)
    assert "repository.pasword_env: unknown key" in str(info.value)


def test_one_problem_keeps_its_own_message(tmp_path: Path) -> None:
    path = write(tmp_path, '[[applications]]\nname = "x"\nsources = ["s"]\nschedule = "bad"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: applications[0].schedule: 'bad' is not a cron")


def test_config_check_lists_every_problem_on_one_line(tmp_path: Path) -> None:
    from casbackup.testing.fixtures import run_cli

    path = write(tmp_path, ALL_WRONG)
    res = run_cli("--config", str(path), "config", "check")
    assert res.code == 2
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: 9 problems: ")


def test_every_n_minutes_schedule_and_app_repository(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from casbackup.config import load_config
    from casbackup.errors import ConfigError

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[[applications]]\nname = "a"\nsources = ["/x"]\nschedule = "every 15 minutes"\n'
        '[applications.repository]\nlocation = "other"\n'
        '[[applications]]\nname = "b"\nsources = ["/y"]\nschedule = "@every 2h"\n'
    )
    config = load_config(cfg)
    a, b = config.applications
    assert a.schedule == "@every 15m" and b.schedule == "@every 2h"
    assert a.repository is not None and a.repository.location == str(tmp_path / "other")
    assert b.repository is None
    cfg.write_text('[[applications]]\nname = "a"\nsources = ["/x"]\nschedule = "every 0 minutes"\n')
    try:
        load_config(cfg)
    except ConfigError as exc:
        assert "at least 1" in str(exc)
    else:
        raise AssertionError("an interval of 0 was accepted")


def test_keys_without_effect_are_said(tmp_path: Path) -> None:
    """helper-58's weak list: [verification] cleanup_hours and [plugins] directory (and
    disaster_recovery's switches turned off) were accepted and used nowhere, and nothing
    said so: a user setting generate_reports = false still got reports, cleanup_hours = 1
    changed nothing. `config check` names each, with what casbackup does instead."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        'version = 1\n[repository]\nlocation = "r"\n'
        "[verification]\ncleanup_hours = 1\n"
        "[disaster_recovery]\nenabled = true\ngenerate_reports = false\n"
        '[plugins]\ndirectory = "plugins"\n'
        '[[applications]]\nname = "a"\nsources = ["/srv"]\n'
    )
    warnings = load_config(cfg).warnings
    assert [w.split(" has no effect: ")[0] for w in warnings] == [
        "verification.cleanup_hours",
        "disaster_recovery.generate_reports",
        "plugins.directory",
    ], warnings
    assert "recover always writes its report" in warnings[1]
