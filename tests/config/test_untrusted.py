"""A config file is untrusted input: hostile shapes get one line naming file and key, exit 2.

Each case here was a traceback (or a silently dropped value) before: nesting deep enough to
exhaust Python's recursion, `~user` for a user this machine lacks, sizes and run times too
large for an integer or a timer, retention durations that `forget` refuses but `config check`
passed, and JSON keys given twice (the later silently won).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from casbackup.config import load_config
from casbackup.config.load import MAX_CONFIG_BYTES, find_config_path
from casbackup.errors import ConfigError

APP = '[[applications]]\nname = "a"\nsources = ["/x"]\n'
NO_USER = "~casbackup-no-such-user-h58"

# (file text, expected key path or None, expected message fragment)
HOSTILE = [
    ("a = " + "[" * 5000 + "]" * 5000 + "\n", None, "nested too deeply"),
    ('[[applications]]\nname = "a"\nsources = ["/x", "' + NO_USER + '/srv"]\n',
     "applications[0].sources[1]", f"cannot expand {NO_USER + '/srv'!r}: no user named"),
    ('[repository]\npassword_file = "' + NO_USER + '/pw"\n', "repository.password_file",
     "no user named"),
    ('[repository]\nlocation = "' + NO_USER + '/repo"\n', "repository.location", "no user named"),
    (APP + 'delta_files = "' + "9" * 400 + 'M"\n', "applications[0].delta_files", "too large"),
    (APP + "max_run_time = 99999999999999999999\n", "applications[0].max_run_time",
     "too long"),
    (APP + 'max_run_time = "9999999999999d"\n', "applications[0].max_run_time", "too long"),
    (APP + '[applications.retention]\nkeep_within = "1d1d"\n',
     "applications[0].retention.keep_within", "unit 'd' given twice"),
    (APP + '[applications.retention]\nkeep_within = "99999999999999y"\n',
     "applications[0].retention.keep_within", "too long"),
    ('[repository]\npassword_env = "$CB_PASS"\n', "repository.password_env",
     "'$CB_PASS' is not an environment variable name"),
    (APP + '[[applications.notify]]\ntype = "email"\nhost = "h"\nsender = "s"\nto = ["t"]\n'
     'password_env = "MY PASS"\n', "applications[0].notify[0].password_env",
     "is not an environment variable name"),
    # Split at each event: every notification failed with a warning, config check passed it.
    (APP + '[[applications.notify]]\ntype = "command"\ncommand = "notify \'unclosed"\n',
     "applications[0].notify[0].command", "cannot be split into words: No closing quotation"),
    (APP + '[[applications.notify]]\ntype = "command"\ncommand = "   "\n',
     "applications[0].notify[0].command", "must not be empty"),
    (APP + '[[applications.notify]]\ntype = "webhook"\nurl = "ftp://h/x"\n',
     "applications[0].notify[0].url", "'ftp://h/x' is not an http(s) URL with a host"),
    (APP + '[[applications.notify]]\ntype = "healthchecks"\nurl = "hc-ping.com/uuid"\n',
     "applications[0].notify[0].url", "is not an http(s) URL with a host"),
    (APP + '[[applications.notify]]\ntype = "webhok"\nurl = "http://h/x"\n',
     "applications[0].notify[0].type", "unknown notifier 'webhok' (did you mean 'webhook'?)"),
    # The service's scheduler overflowed its dates (OverflowError) on such intervals.
    (APP + 'schedule = "every 5000000000 minutes"\n', "applications[0].schedule",
     "the interval must be at most 366 days"),
    (APP + 'schedule = "@every 99999999999999999999h"\n', "applications[0].schedule",
     "the interval must be at most 366 days"),
    # A NUL reached subprocess (password_command: ValueError traceback) or os calls.
    ('[repository]\npassword_command = "echo \\u0000x"\n', "repository.password_command",
     "must not contain a NUL character"),
    ('[[applications]]\nname = "a"\nsources = ["/x\\u0000y"]\n', "applications[0].sources[0]",
     "must not contain a NUL character"),
    (APP + '[[applications.databases]]\nname = "d"\nengine = "mysql"\ndatabase = "x"\n'
     'options = { socket = "/run/a\\u0000b" }\n',
     "applications[0].databases[0].options.socket",
     "must not contain a NUL character"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "key", "fragment"), HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_toml(tmp_path: Path, text: str, key: str | None, fragment: str) -> None:
    path = tmp_path / "casbackup.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.key == key and e.value.path == str(path)
    assert fragment in str(e.value), str(e.value)
    assert str(e.value).startswith(f"{path}: {key}: " if key else f"{path}: ")
    assert "\n" not in str(e.value)


def test_deeply_nested_json(tmp_path: Path) -> None:
    path = tmp_path / "config_phase3.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path)


def test_json_key_given_twice_is_refused(tmp_path: Path) -> None:
    # json.loads keeps the last of two equal keys: the first application list would be
    # dropped without a word (TOML refuses the same file).
    path = tmp_path / "config_phase3.json"
    path.write_text(
        '{"applications": [{"name": "shop", "source": "/srv/shop"}],\n'
        ' "applications": [{"name": "wiki", "source": "/srv/wiki"}]}'
    )
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (
        f"{path}: invalid JSON: key 'applications' given twice in one object (line 2)"
    )
    path.write_text('{"applications": [{"name": "wiki",\n "source": "/a", "source": "/b"}]}')
    with pytest.raises(ConfigError, match=r"key 'source' given twice in one object \(line 2\)"):
        load_config(path)
    path.write_text(json.dumps({"applications": [{"name": "a", "source": "/s"}]}))
    assert load_config(path).applications[0].name == "a"


def test_huge_file_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "casbackup.toml"
    with path.open("w") as f:
        f.write(APP)
        f.write("# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match=r"larger than 16 MiB"):
        load_config(path)


def test_config_flag_with_unknown_user(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="no user named 'casbackup-no-such-user-h58'"):
        find_config_path(NO_USER + "/c.toml")
    monkeypatch.setenv("CASBACKUP_CONFIG", NO_USER + "/c.toml")
    with pytest.raises(ConfigError, match="named by CASBACKUP_CONFIG"):
        find_config_path(None)


def test_cli_one_line_for_hostile_files(tmp_path: Path) -> None:
    from casbackup.testing.fixtures import run_cli

    deep = tmp_path / "deep.toml"
    deep.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    for args in (("--config", str(deep)), ("--config", NO_USER + "/c.toml")):
        res = run_cli(*args, "config", "check")
        assert res.code == 2, res
        assert len(res.err.strip().splitlines()) == 1 and "Traceback" not in res.err
    res = run_cli("-r", str(tmp_path / "r"), "backup", "--delta-files", "9" * 400 + "M", "/x")
    assert res.code == 2 and "too large" in res.err and "Traceback" not in res.err, res


def test_legacy_keys_left_unused_say_so(tmp_path: Path) -> None:
    """Warnings for an old application's or [backup]'s unused keys were the bare key path
    ("warning: applications[0].schedule"), unlike the other sections' "ignored" lines."""
    path = tmp_path / "config_phase3.json"
    path.write_text(json.dumps({
        "backup": {"default_backup_type": "full", "compression": "gzip"},
        "applications": [{"name": "a", "source": "/x", "schedule": "daily"}],
    }))  # fmt: skip
    assert load_config(path).warnings == (
        "backup.compression: ignored (not used by casbackup)",
        "applications[0].schedule: ignored (not used by casbackup)",
    )


def test_legacy_source_and_sources_together_are_refused(tmp_path: Path) -> None:
    # "sources" won and "source" was dropped with a bare warning: /x was never backed up.
    path = tmp_path / "config_phase3.json"
    path.write_text(
        json.dumps({"applications": [{"name": "a", "source": "/x", "sources": ["/y"]}]})
    )
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value) == (
        f"{path}: applications[0].source: give source or sources, not both (sources = ['/y'])"
    )


def test_scheduler_refuses_an_interval_it_cannot_count() -> None:
    """serve --verify-schedule '@every 5000000000m' is not checked by the config's parser."""
    import datetime as dt

    from casbackup.server.scheduler import Rule

    with pytest.raises(ConfigError, match="at most 366 days"):
        Rule("@every 5000000000m", dt.UTC)
    assert Rule("@every 8784h", dt.UTC).interval == dt.timedelta(days=366)


def test_a_byte_order_mark_is_not_text(tmp_path: Path) -> None:
    """A file saved with a BOM was 'invalid TOML: Invalid statement (at line 1, column 1)'."""
    for name, text in (("c.toml", '[[applications]]\nname = "a"\nsources = ["/x"]\n'),
                       ("c.json", '{"applications": [{"name": "a", "source": "/x"}]}')):  # fmt: skip
        path = tmp_path / name
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
        assert load_config(path).applications[0].name == "a"


def test_config_check_warns_of_paths_missing_here(tmp_path: Path) -> None:
    """A source or SQLite file that does not exist passed 'config OK' without a word, and each
    backup then failed (source ... does not exist)."""
    from casbackup.testing.fixtures import run_cli

    (tmp_path / "here").mkdir()
    cfg = tmp_path / "casbackup.toml"
    cfg.write_text(
        '[[applications]]\nname = "a"\nsources = ["here", "gone"]\n'
        '[[applications.databases]]\nname = "d"\nengine = "sqlite"\npath = "gone.db"\n'
    )
    res = run_cli("--config", str(cfg), "config", "check")
    assert res.code == 0, res
    assert res.err.splitlines() == [
        f"warning: applications[0].sources[1]: {tmp_path / 'gone'} does not exist here",
        f"warning: applications[0].databases[0].path: {tmp_path / 'gone.db'} does not exist here",
    ], res.err
