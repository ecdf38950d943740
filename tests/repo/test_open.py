"""Opening a repository: damaged key files are reported as such, not as a wrong passphrase."""

from __future__ import annotations

import pytest

from casbackup.crypto.keyfile import WEAK_KDF
from casbackup.errors import FormatError, WrongPassword
from casbackup.store.memory import MemoryBackend
from casbackup.testing.fixtures import PASSWORD, make_repo, open_repo


def test_only_key_file_damaged_is_a_format_error() -> None:
    backend = MemoryBackend()
    make_repo(backend).close()
    (name,) = [n for n, _ in backend.list("keys/")]
    backend.put(name, b'{"version": 1, "kdf": "argon2id", "memory_kib": 1e999}')
    with pytest.raises(FormatError, match="no key file of this repository is readable"):
        open_repo(backend)


def test_damaged_key_file_does_not_hide_a_good_one() -> None:
    backend = MemoryBackend()
    with make_repo(backend) as repo:
        repo.add_key(b"second", WEAK_KDF)
    names = sorted(n for n, _ in backend.list("keys/"))
    backend.put(names[0], b"garbage")
    opened = 0
    for password in (PASSWORD, "second"):
        try:
            open_repo(backend, password).close()
            opened += 1
        except WrongPassword:  # the damaged file was the one this passphrase opened
            pass
    assert opened == 1
    with pytest.raises(WrongPassword, match="1 damaged key files skipped"):
        open_repo(backend, "neither")
