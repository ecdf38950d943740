"""Helpers shared by the test suite: tiny packs, weak KDF, isolated cache, CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from casbackup.crypto.keyfile import WEAK_KDF
from casbackup.crypto.keys import MasterKey
from casbackup.repo.config import ChunkerParams, RepoConfig
from casbackup.repo.repository import Repository
from casbackup.store.base import Backend
from casbackup.store.local import LocalBackend
from casbackup.testing.zygote import run_forked

PASSWORD = "correct horse battery staple"

# Small chunks and 1 MiB packs so that small test data still makes many chunks and packs.
TEST_CONFIG_KW = {
    "chunker": ChunkerParams(min_size=4 * 1024, avg_size=12 * 1024, max_size=64 * 1024),
    "pack_size": 1 << 20,
}


def make_repo(
    path_or_backend: str | Backend,
    password: str = PASSWORD,
    *,
    key: MasterKey | None = None,
    version: int | None = None,
) -> Repository:
    """A test repository (tiny packs, weak KDF). ``key``: a fixed master key for tests whose
    sizes depend on chunk boundaries, which the key seeds; by default a random one.
    ``version``: the format version (default: the newest)."""
    backend = LocalBackend(path_or_backend) if isinstance(path_or_backend, str) else path_or_backend
    kw = dict(TEST_CONFIG_KW) if version is None else {**TEST_CONFIG_KW, "version": version}
    return Repository.init(
        backend, password.encode(), kdf=WEAK_KDF, config=RepoConfig(**kw), key=key
    )


def open_repo(path_or_backend: str | Backend, password: str = PASSWORD) -> Repository:
    backend = LocalBackend(path_or_backend) if isinstance(path_or_backend, str) else path_or_backend
    return Repository.open(backend, password.encode())


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(*args: str, repo: str | None = None, env: dict[str, str] | None = None, input: bytes | None = None,
            timeout: float = 120) -> CliResult:  # fmt: skip
    """Run ``casbackup`` in a real subprocess (exit codes and signals behave as for users)."""
    full_env = dict(os.environ)
    full_env.setdefault("CASBACKUP_PASSWORD", PASSWORD)
    if env:
        full_env.update(env)
    argv = [*(["-r", repo] if repo is not None else []), *args]
    forked = run_forked(argv, full_env, input, timeout)  # a pre-imported process: see zygote.py
    if forked is not None:
        code, out, err = forked
    else:
        proc = subprocess.run(
            [sys.executable, "-m", "casbackup.cli.main", *argv],
            capture_output=True, env=full_env, input=input, timeout=timeout,
        )  # fmt: skip
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    return CliResult(code, out.decode(errors="replace"), err.decode(errors="replace"))


def flip_stored_byte(
    repo_path: str, pack: str, offset: int, stored_len: int, mask: int = 0x01
) -> None:
    """Damage one stored blob as bit rot would: XOR ``mask`` into the byte in the middle of
    its ``stored_len`` bytes at ``offset`` of pack ``pack`` (a pack id's hex) in the local
    repository at ``repo_path``. Packs are stored read-only; this makes the pack writable."""
    from casbackup.repo.pack import pack_name

    path = os.path.join(repo_path, pack_name(pack))
    os.chmod(path, 0o600)
    with open(path, "r+b") as f:
        f.seek(offset + stored_len // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ mask]))
