"""A passphrase from the environment is the variable's bytes, as one from a file is: bytes
that are not UTF-8 (a Latin-1 terminal, a generated secret) work, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

from casbackup.crypto.keyfile import WEAK_KDF
from casbackup.repo.config import RepoConfig
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalBackend
from casbackup.testing.fixtures import TEST_CONFIG_KW, make_repo, run_cli

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
