"""A passphrase from the environment is the variable's bytes, as one from a file is: bytes
that are not UTF-8 (a Latin-1 terminal, a generated secret) work, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

from casbackup.crypto.keyfile import WEAK_KDF
from casbackup.repo.config import RepoConfig
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalBackend
from casbackup.testing.fixtures import PASSWORD, TEST_CONFIG_KW, make_repo, run_cli

RAW = b"caf\xe9-\xff"  # Latin-1 bytes, not UTF-8
AS_ENV = os.fsdecode(RAW)  # what os.environ holds for them


def _repo(path: Path) -> str:
    Repository.init(LocalBackend(str(path)), RAW, kdf=WEAK_KDF,
                    config=RepoConfig(**TEST_CONFIG_KW)).close()  # fmt: skip
    return str(path)


def test_casbackup_password_with_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    res = run_cli("snapshots", repo=repo, env={"CASBACKUP_PASSWORD": AS_ENV})
    assert res.code == 0 and "Traceback" not in res.err, res.err
    pw = tmp_path / "pw"
    pw.write_bytes(RAW + b"\n")
    res = run_cli("--password-file", str(pw), "snapshots", repo=repo)
    assert res.code == 0, res.err  # the same passphrase, from a file


def test_new_and_from_passwords_with_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    repo = str(tmp_path / "repo")
    make_repo(repo).close()
    res = run_cli("key", "add", "--insecure-test-kdf", repo=repo,
                  env={"CASBACKUP_NEW_PASSWORD": AS_ENV})  # fmt: skip
    assert res.code == 0 and "Traceback" not in res.err, res.err
    assert run_cli("snapshots", repo=repo, env={"CASBACKUP_PASSWORD": AS_ENV}).code == 0
    source = _repo(tmp_path / "source")
    res = run_cli("copy", "--from-repo", source, repo=repo,
                  env={"CASBACKUP_FROM_PASSWORD": AS_ENV})  # fmt: skip
    assert res.code == 0 and "Traceback" not in res.err, res.err


def _typed(repo: str, answer: bytes, *args: str) -> tuple[int, str]:
    """Run the CLI on a terminal (a pty), type ``answer`` at the passphrase prompt."""
    import pty
    import select
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("CASBACKUP_PASSWORD")}
    pid, fd = pty.fork()
    if pid == 0:  # the child: never returns
        os.execve(sys.executable, [sys.executable, "-m", "casbackup.cli.main", "-r", repo,
                                   *args], env)  # fmt: skip
    out = b""
    asked = False
    while True:
        ready, _, _ = select.select([fd], [], [], 60)
        assert ready, out
        try:
            data = os.read(fd, 4096)
        except OSError:  # the child ended: EIO on Linux
            break
        if not data:
            break
        out += data
        if not asked and b"passphrase" in out:
            os.write(fd, answer)
            asked = True
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


def test_a_typed_passphrase_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    # getpass decodes what is typed as UTF-8: Latin-1 bytes from a terminal ended in a
    # UnicodeDecodeError traceback.
    repo = str(tmp_path / "repo")
    make_repo(repo).close()
    code, out = _typed(repo, RAW + b"\n", "snapshots")
    assert code == 2 and "Traceback" not in out, out
    assert "not UTF-8" in out and "--password-file" in out
    code, out = _typed(repo, PASSWORD.encode() + b"\n", "snapshots")
    assert code == 0, out  # and a UTF-8 one still opens it
