"""run_password_command's failures say what happened, in one line, with nothing dangling."""

from __future__ import annotations

import pytest

from casbackup.access import run_password_command
from casbackup.errors import UsageError


def test_a_silent_failing_command_says_it_wrote_nothing() -> None:
    with pytest.raises(UsageError) as err:
        run_password_command("false")
    assert str(err.value) == "password command exited with 1 (and wrote nothing on stderr)"


def test_a_failing_command_shows_its_last_stderr_line() -> None:
    with pytest.raises(UsageError) as err:
        run_password_command("sh -c 'echo one >&2; echo vault sealed >&2; exit 3'")
    assert str(err.value) == "password command exited with 3: vault sealed"


def test_a_working_command_gives_its_output_without_the_newline() -> None:
    assert run_password_command("echo s3cret") == b"s3cret"


def test_a_command_that_leaves_a_helper_running_gives_its_output_when_it_exits(
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """A password command that starts an agent in the background (which inherits its
    standard output): the passphrase is had when the command exits, not when the agent
    does (before: the read waited for the agent, here 600 s)."""
    import concurrent.futures
    import os
    import signal

    helper = tmp_path / "agent.pid"
    command = f"sh -c 'echo s3cret; sleep 600 & echo $! > {helper}'"
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            got = pool.submit(run_password_command, command).result(timeout=120)  # a hang guard
        finally:
            try:
                os.kill(int(helper.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
    assert got == b"s3cret"
