"""A real unprivileged user for the tests, and the real CLI run as that user or as root.

The suite runs as root (CI too): an ordinary user's backups and restores meet
permissions that root never does. ``OrdinaryUser`` is made with ``useradd`` under a
unique name, runs ``python -m casbackup.cli.main`` through ``setpriv`` with its own
HOME (no CASBACKUP_CACHE_DIR: the default ~/.cache and ~/.local/state are part of what
is tested), and is removed at the end. Without root the tests skip, except under
CI=true, where they must run.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from casbackup.testing.fixtures import PASSWORD

ROOT = Path(__file__).parents[1]
_CLEAN_ENV = (
    "CASBACKUP_CACHE_DIR",
    "CASBACKUP_STATE_DIR",
    "XDG_CACHE_HOME",
    "XDG_CONFIG_HOME",
    "XDG_STATE_HOME",
    "CASBACKUP_REPO",
    "CASBACKUP_CONFIG",
)


def need_root() -> None:
    """Skip without root (a reason given), except under CI=true, where it fails."""
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI runs as root: these tests must run there")
        pytest.skip("needs root to create an ordinary user and run the CLI as that user")


def _retrying(args: list[str]) -> None:
    """useradd/userdel, retried while another process holds /etc/passwd's lock."""
    deadline = time.monotonic() + 120
    while True:
        done = subprocess.run(args, capture_output=True, text=True, check=False)
        if done.returncode == 0:
            return
        if time.monotonic() > deadline or "lock" not in done.stderr.lower():
            raise AssertionError(f"{' '.join(args)}: {done.stderr.strip()}")
        time.sleep(0.2)


@dataclass
class Run:
    code: int
    out: str
    err: str


class OrdinaryUser:
    """An ordinary user with a home under a folder everyone may enter."""

    def __init__(self, base: Path) -> None:
        self.name = f"cbt{os.getpid()}{secrets.token_hex(3)}"
        self.base = base
        self.home = base / "home"
        _retrying(["useradd", "-M", "-d", str(self.home), "-s", "/usr/sbin/nologin",
                   self.name])  # fmt: skip
        entry = pwd.getpwnam(self.name)
        self.uid, self.gid = entry.pw_uid, entry.pw_gid
        self.home.mkdir()
        self.give(self.home)

    def give(self, *paths: Path | str) -> None:
        """Make ``paths`` (recursively) this user's."""
        for path in paths:
            subprocess.run(["chown", "-R", f"{self.uid}:{self.gid}", str(path)], check=True)

    def env(self, home: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _CLEAN_ENV}
        env.update(CASBACKUP_PASSWORD=PASSWORD, HOME=home or str(self.home),
                   PYTHONPATH=str(ROOT))  # fmt: skip
        return env

    def cli(self, *args: str, home: str | None = None, **extra: str) -> Run:
        """The CLI as this user (``home``: another HOME, for a broken one; ``extra``: more
        environment)."""
        command = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
                   sys.executable, "-m", "casbackup.cli.main", *args]  # fmt: skip
        return self._run(command, {**self.env(home), **extra})

    def root_cli(self, *args: str, env: dict[str, str]) -> Run:
        """The CLI as root, with ``env``."""
        return self._run([sys.executable, "-m", "casbackup.cli.main", *args], env)

    def _run(self, command: list[str], env: dict[str, str]) -> Run:
        done = subprocess.run(command, capture_output=True, text=True, env=env,
                              cwd=self.base, timeout=300, check=False)  # fmt: skip
        return Run(done.returncode, done.stdout, done.stderr)

    def remove(self) -> None:
        _retrying(["userdel", self.name])


def ordinary_user() -> Iterator[OrdinaryUser]:
    """The body of a test module's ``user`` fixture: a new user, removed afterwards."""
    need_root()
    base = Path(tempfile.mkdtemp(prefix="casbackup-user-"))
    os.chmod(base, 0o755)
    person = OrdinaryUser(base)
    try:
        yield person
    finally:
        person.remove()
        subprocess.run(["chmod", "-R", "u+rwx", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def root_owned(path: Path) -> list[str]:
    """Entries under ``path`` (itself included) that root owns."""
    found = [str(path)] if path.lstat().st_uid == 0 else []
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            entry = os.path.join(folder, name)
            if os.lstat(entry).st_uid == 0:
                found.append(entry)
    return found
