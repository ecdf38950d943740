"""Two `casbackup init` at once on one empty location (a script run on two hosts against
one share or bucket). Both passed the emptiness check before either wrote, and both said
'created repository ...': the second config replaced the first, whose passphrase then
opened nothing ('wrong passphrase'). Now the config is written create-only: one init wins,
the other exits 20 and leaves no key file behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from casbackup.errors import RepositoryExists
from casbackup.repo.repository import Repository
from casbackup.store.base import Backend
from casbackup.store.local import TMP_MARK, LocalBackend
from casbackup.testing.fixtures import make_repo, open_repo

KEY = "keys/" + "c" * 64


@pytest.fixture(params=["local", "s3", "seaweedfs"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b: Backend
    if request.param == "local":
        b = LocalBackend(str(tmp_path / "repo"))
    else:
        from casbackup.store.retry import RetryingBackend
        from casbackup.store.s3 import S3Backend
        from tests.store.conftest import make_bucket

        if request.param == "s3":
            location = request.getfixturevalue("moto_location")
        else:  # a real S3 server: does it honour If-None-Match on the config too?
            request.getfixturevalue("s3_env")
            endpoint = request.getfixturevalue("seaweed_endpoint")
            location = f"s3:{endpoint}/{make_bucket(endpoint)}/repo"
        b = RetryingBackend(S3Backend(location))
    yield b
    b.close()


def test_local_put_new_never_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    b = LocalBackend(str(tmp_path / "store"))
    assert b.put_new(KEY, b"first") is True
    assert b.put_new(KEY, b"second") is False
    assert b.get(KEY) == b"first"
    assert [f for f in os.listdir(tmp_path / "store" / "keys") if TMP_MARK in f] == []


def test_the_second_of_two_racing_inits_is_refused(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = make_repo(backend, "alpha")
    config_id = first.config.id
    # The second init checked the location while it was still empty.
    monkeypatch.setattr(Repository, "check_can_init", staticmethod(lambda backend: None))
    with pytest.raises(RepositoryExists, match="by someone else meanwhile"):
        make_repo(backend, "beta")
    assert [name for name, _ in backend.list("keys/")] == [first.key_name]
    again = open_repo(backend, "alpha")  # the winner's passphrase opens its repository
    assert again.config.id == config_id
