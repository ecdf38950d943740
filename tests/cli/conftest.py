from __future__ import annotations

import os
import subprocess
import sys

import pytest

from casbackup.testing.fixtures import CliResult, run_cli

CLI = [sys.executable, "-m", "casbackup.cli.main"]


def init_repo(path: str, *, pack_size: int = 1) -> str:
    res = run_cli("init", "--insecure-test-kdf", "--pack-size", str(pack_size), repo=path)
    assert res.code == 0, res.err
    return path


@pytest.fixture
def cli_repo(tmp_path) -> str:  # type: ignore[no-untyped-def]
    """A repository made by ``casbackup init`` (weak KDF, 1 MiB packs)."""
    return init_repo(str(tmp_path / "repo"))


def popen_cli(*args: str, repo: str, prelude: str = "") -> subprocess.Popen[bytes]:
    """``casbackup`` started the way run_cli starts it, for tests that signal it.

    ``prelude`` is Python run in the child before the CLI (to shorten a timer, say).
    """
    cmd = CLI if not prelude else [sys.executable, "-c", f"{prelude}\n{_MAIN}"]
    return subprocess.Popen(
        [*cmd, "-r", repo, *args],
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


_MAIN = "from casbackup.cli.main import main; main()"


def assert_one_error(res: CliResult, code: int, *fragments: str) -> None:
    """A user error: the exit code, and stderr is exactly one line 'error: ...'."""
    assert res.code == code, (res.code, res.out, res.err)
    assert "Traceback" not in res.err and "Traceback" not in res.out
    lines = res.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def no_traceback(res: CliResult) -> None:
    assert "Traceback" not in res.err and "Traceback" not in res.out, res.err
