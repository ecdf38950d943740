"""Exclude and include patterns are user input (-e, -i, --exclude-file, the config's
excludes, find's pattern): a pattern that is not a valid glob is one line with exit 2.

'[z-a]' and '[]' reached re.compile and ended backup, restore and find with a re.error
traceback; `config check` passed them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from casbackup.archiver.excludes import Excluder
from casbackup.errors import UsageError
from casbackup.testing.fixtures import run_cli


@pytest.mark.parametrize(
    ("pattern", "why"),
    [("[", "has an unclosed '['"), ("[z-a]", "bad character range z-a"), ("[]", "unterminated")],
)
def test_invalid_pattern_is_a_usage_error(pattern: str, why: str) -> None:
    with pytest.raises(UsageError) as e:
        Excluder(["*.log", pattern])
    assert str(e.value).startswith(f"exclude pattern {pattern!r}") and why in str(e.value)


def test_cli_and_config_check_say_it_in_one_line(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_text("x")
    repo = str(tmp_path / "repo")
    assert run_cli("init", "--insecure-test-kdf", repo=repo).code == 0
    # Each names the pattern as the user gave it: find's and restore -i's select, not exclude.
    for args, kind in (
        (("backup", str(src), "-e", "[z-a]"), "exclude"),
        (("find", "[]"), "search"),
    ):
        res = run_cli(*args, repo=repo)
        assert res.code == 2 and "Traceback" not in res.err, res
        assert res.err.strip().count("\n") == 0 and f"error: {kind} pattern" in res.err, res.err
    assert run_cli("backup", str(src), repo=repo).code == 0
    res = run_cli("restore", "latest", "--target", str(tmp_path / "t"), "-i", "[z-a]", repo=repo)
    assert res.code == 2 and "Traceback" not in res.err, res
    assert "error: include pattern '[z-a]' is not valid" in res.err, res.err
    cfg = tmp_path / "casbackup.toml"
    cfg.write_text(
        f'[[applications]]\nname = "a"\nsources = ["{src}"]\nexcludes = ["*.log", "[z-a]"]\n'
    )
    res = run_cli("--config", str(cfg), "config", "check")
    assert res.code == 2, res
    assert res.err.strip() == (
        f"error: {cfg}: applications[0].excludes[1]: exclude pattern '[z-a]' is not valid: "
        "bad character range z-a"
    ), res.err
