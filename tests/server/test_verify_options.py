"""The service verifies with what the local config says, as `casbackup verify` does."""

from __future__ import annotations

from pathlib import Path

from casbackup.config.load import load_config
from casbackup.server.worker import Job, PipeReporter, _verify_options
from casbackup.verify.sandbox import VerifyOptions
from tests.server.conftest import make_config

EXTRA = """
[applications.verification]
required_files = ["missing.conf", "/etc/blog.ini"]

[[applications.databases]]
name = "posts"
engine = "sqlite"
path = "/srv/blog/posts.db"
"""


def test_service_verify_jobs_take_the_configs_required_files_and_databases(
    tmp_path: Path,
) -> None:
    """A verify job (and a backup's auto-verify) of the service checks the application's
    required files from the config (it checked only those the snapshot recorded at backup
    time, so a file added to the config passed unnoticed), scratch databases go to the
    config's definitions, and the sandbox is the config's."""
    config = load_config(make_config(tmp_path, str(tmp_path / "repo"), extra=EXTRA))
    job = Job("verify", None, config, "blog", {}, PipeReporter())  # type: ignore[arg-type]
    options = _verify_options(job)
    assert options.required_files == ("missing.conf", "/etc/blog.ini")
    assert list(options.databases) == ["posts"]
    assert options.sandbox_dir == str(tmp_path / "sandbox")
    # One rule for every face: the CLI's verify and backup --auto-verify build the same.
    assert options == VerifyOptions.from_config(config, "blog")
    other = VerifyOptions.from_config(config, "shop", sandbox_dir="/elsewhere", keep_sandbox=True)
    assert other.required_files == () and other.databases == {}
    assert other.sandbox_dir == "/elsewhere" and other.keep_sandbox
    assert VerifyOptions.from_config(None, "blog") == VerifyOptions()
    # An override of None (an option not given on the command line) keeps the config's value.
    assert VerifyOptions.from_config(config, "blog", sandbox_dir=None).sandbox_dir == str(
        tmp_path / "sandbox"
    )
