"""A passphrase variable that is set but empty counts as not set (as restic reads
RESTIC_PASSWORD): it is never tried as a passphrase, so nobody is told "wrong passphrase"
for a blank line in an environment file."""

from __future__ import annotations

import pytest

from casbackup.access import PasswordSource, read_password
from casbackup.errors import EXIT_USAGE, UsageError
from casbackup.testing.fixtures import PASSWORD, make_repo, run_cli


def test_an_empty_casbackup_password_falls_through_to_password_env(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CASBACKUP_PASSWORD", "")
    monkeypatch.setenv("REPO_PASS", "s3cret")
    assert read_password(PasswordSource(env_name="REPO_PASS")) == b"s3cret"


def test_an_empty_casbackup_password_gives_no_passphrase(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CASBACKUP_PASSWORD", "")
    assert read_password(PasswordSource()) is None  # the CLI prompts, or says "no passphrase"


@pytest.mark.parametrize("value", [None, ""])
def test_password_env_naming_an_unset_or_empty_variable_is_one_line(monkeypatch, value) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("CASBACKUP_PASSWORD", raising=False)
    if value is None:
        monkeypatch.delenv("REPO_PASS", raising=False)
    else:
        monkeypatch.setenv("REPO_PASS", value)
    with pytest.raises(UsageError) as err:
        read_password(PasswordSource(env_name="REPO_PASS"))
    state = "not set" if value is None else "empty"
    assert str(err.value) == (
        f"the config's repository.password_env names REPO_PASS, which is {state}"
    )


def test_cli_empty_casbackup_password_is_no_passphrase_not_a_wrong_one(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "repo")
    make_repo(path).close()
    res = run_cli("snapshots", repo=path, env={"CASBACKUP_PASSWORD": ""})  # stdin: no tty
    assert res.code == EXIT_USAGE, res.err
    assert res.err.startswith("error: no passphrase: set CASBACKUP_PASSWORD")
    assert res.err.count("\n") == 1 and "wrong" not in res.err


def test_cli_empty_password_with_a_password_file_uses_the_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "repo")
    make_repo(path).close()
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    res = run_cli(
        "snapshots",
        repo=path,
        env={"CASBACKUP_PASSWORD": "", "CASBACKUP_PASSWORD_FILE": str(pw)},
    )
    assert res.code == 0, res.err


def test_cli_empty_new_password_is_no_new_passphrase(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "repo")
    make_repo(path).close()
    res = run_cli(
        "key", "add", "--insecure-test-kdf", repo=path, env={"CASBACKUP_NEW_PASSWORD": ""}
    )
    assert res.code == EXIT_USAGE and res.err.count("\n") == 1, res.err
    assert "no new passphrase" in res.err


def test_an_empty_from_password_is_no_passphrase(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from casbackup.cli.cmd_copy import source_password

    monkeypatch.setenv("CASBACKUP_FROM_PASSWORD", "")
    with pytest.raises(UsageError, match="^no passphrase for --from-repo"):
        source_password(None, None)


@pytest.mark.parametrize("how", ["file", "command", "from-file", "from-command"])
def test_an_empty_password_file_or_command_output_is_said_not_tried(how, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # No key file has an empty passphrase (init and key add refuse one), so an empty file
    # (a secret not mounted yet) or a command that prints nothing is the source's fault:
    # "wrong passphrase" (exit 12) sent users hunting for a passphrase that was never typed.
    path = str(tmp_path / "repo")
    make_repo(path).close()
    empty = tmp_path / "pw"
    empty.write_text("\n")
    if how in ("file", "command"):
        option = (
            ["--password-file", str(empty)] if how == "file" else ["--password-command", "true"]
        )
        res = run_cli(*option, "snapshots", repo=path)
        expected = f"password file {empty} is empty" if how == "file" else "password command"
    else:
        other = str(tmp_path / "other")
        make_repo(other).close()
        option = (
            ["--from-password-file", str(empty)] if how == "from-file"
            else ["--from-password-command", "true"]
        )  # fmt: skip
        res = run_cli("copy", "--from-repo", other, *option, repo=path)
        expected = f"password file {empty} is empty" if how == "from-file" else "password command"
    assert res.code == EXIT_USAGE, res.err
    assert res.err.startswith(f"error: {expected}") and res.err.count("\n") == 1, res.err
    assert "wrong" not in res.err
