"""Under ``--json`` a failure is one JSON object on stderr (README "Exit codes"), for every
command, usage errors included; the exit code and the message are those of the text mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from casbackup.testing.fixtures import CliResult, run_cli
from tests.cli.test_conventions import JSON_RUNS, NOT_JSON, every_command_path


def the_error(res: CliResult) -> dict[str, object]:
    """stderr under --json: JSON lines only, the last one the error object; stdout has no text."""
    assert "Traceback" not in res.err, res.err
    docs = [json.loads(line) for line in res.err.splitlines() if line.strip()]
    assert docs, "nothing on stderr"
    error = docs[-1]
    assert error["message_type"] == "error", res.err
    assert set(error) == {"message_type", "error", "exit_code", "kind"}, error
    assert error["exit_code"] == res.code
    assert "error:" not in res.out
    for line in res.out.splitlines():  # what a command printed before failing is JSON too
        json.loads(line)
    return error


@pytest.mark.parametrize("command", sorted(every_command_path()))
def test_usage_error_is_json_for_every_command(command: str, tmp_path: Path) -> None:
    env = {"CASBACKUP_CONFIG": str(tmp_path / "none.toml")}
    res = run_cli("--json", *command.split(), "--no-such-option", env=env)
    assert res.code == 2, (res.code, res.err)
    error = the_error(res)
    assert error["kind"] == "usage_error"
    assert "--no-such-option" in str(error["error"])
    text = run_cli(*command.split(), "--no-such-option", env=env)
    assert text.code == 2 and text.err.strip() == f"error: {error['error']}"


def test_global_usage_errors_are_json() -> None:
    for args in (
        ["--json", "no-such-command"],
        ["no-such-command", "--json"],
        ["--json"],
        ["--json", "key"],
        ["fs-snapshots", "--json"],
    ):
        res = run_cli(*args)
        assert res.code == 2, (args, res.err)
        assert the_error(res)["kind"] == "usage_error"


def test_every_command_fails_in_json_on_a_missing_repository(tmp_path: Path) -> None:
    """Each command of the --json walk, pointed at a repository that does not exist (and a
    config file that does not exist): the same exit code and message as in text mode."""
    missing = str(tmp_path / "no-repo")
    env = {"CASBACKUP_CONFIG": str(tmp_path / "none.toml"), "CASBACKUP_FROM_PASSWORD": "x"}
    kinds = {}
    for name, args in JSON_RUNS.items():
        args = [a.replace("T/", f"{tmp_path}/t/").replace("PWFILE", str(tmp_path / "pw"))
                .replace("SNAP", "0" * 64).replace("KEY", "0" * 64)
                .replace("ST", f"{tmp_path}/a-file/st") for a in args]  # fmt: skip
        (tmp_path / "a-file").write_text("")  # the accounts' state folder cannot be made in it
        if name == "init":
            args = ["init", "--insecure-test-kdf", "-r", str(tmp_path / "a-file" / "repo")]
        if name.startswith("fs-snapshots"):  # reads neither repository nor config
            args = [*args, "--provider", "nfs"]
        if name == "benchmark":
            args = ["benchmark", "--size", "-4"]
        res = run_cli("--json", *args, repo=missing, env=env)
        text = run_cli(*args, repo=missing, env=env)
        assert res.code != 0, (name, res.out)
        error = the_error(res)
        assert text.code == res.code, (name, text.err, res.err)
        assert text.err.strip().splitlines()[-1] == f"error: {error['error']}", name
        kinds[name] = error["kind"]
    assert kinds["snapshots"] == "repository_not_found"
    assert kinds["ls"] == "repository_not_found"


def test_errors_and_warnings_listed_before_the_last_are_json_too() -> None:
    """``warn`` and ``error_item`` (restore's per-path errors, alerts, skipped entries) follow
    the command's --json; without it they are ``warning:``/``error:`` lines."""
    import click
    from click.testing import CliRunner

    from casbackup.cli.context import GlobalOptions
    from casbackup.cli.render import error_item, warn

    @click.command()
    def probe() -> None:
        warn("odd \x1b name")
        error_item("f: Permission denied")

    for json_mode in (True, False):
        opts = GlobalOptions(None, None, None, json_mode, False, False)
        res = CliRunner().invoke(probe, [], obj=opts)
        assert res.exit_code == 0, res.exception
        out = res.stderr
        lines = out.splitlines()
        if json_mode:
            assert [json.loads(x) for x in lines] == [
                {"message_type": "warning", "message": "odd \x1b name"},
                {"message_type": "error_item", "message": "f: Permission denied"},
            ]
        else:
            assert lines == ["warning: odd \\x1b name", "error: f: Permission denied"]


def test_not_json_commands_are_still_json_on_failure(tmp_path: Path) -> None:
    for name in sorted(NOT_JSON):
        res = run_cli("--json", name, "latest:/f", repo=str(tmp_path / "none"))
        assert res.code != 0
        the_error(res)
