"""A folder of the layout that cannot be opened (permission denied, I/O error) is a storage
error, never an empty listing: found by a newcomer, `chmod 000 repo/snapshots` made
`casbackup snapshots` print "0 snapshots" with exit 0 and a warning about a symlink."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from casbackup.errors import StorageError
from casbackup.store.local import LocalBackend
from casbackup.store.names import ObjectRefused


def _backend_with_a_snapshot(tmp_path: Path) -> LocalBackend:
    backend = LocalBackend(str(tmp_path / "repo"))
    backend.put("snapshots/" + "ab" * 32, b"x")
    return backend


def _refuse(backend: LocalBackend, monkeypatch: pytest.MonkeyPatch, err: int) -> None:
    """Opening 'snapshots' fails with ``err`` (as root, chmod 000 would not stop us)."""
    real = backend._open_dir

    def open_dir(folders: list[str], *, create: bool = False) -> int:
        if folders == ["snapshots"]:
            raise OSError(err, os.strerror(err))
        return real(folders, create=create)

    monkeypatch.setattr(backend, "_open_dir", open_dir)


@pytest.mark.parametrize("err", [errno.EACCES, errno.EIO])
def test_an_unopenable_folder_fails_the_listing(tmp_path, monkeypatch, err) -> None:  # type: ignore[no-untyped-def]
    backend = _backend_with_a_snapshot(tmp_path)
    _refuse(backend, monkeypatch, err)
    with pytest.raises(StorageError, match="listing snapshots") as caught:
        list(backend.list("snapshots/"))
    assert not isinstance(caught.value, ObjectRefused)


def test_a_symlink_in_a_folders_place_is_still_skipped_as_odd(tmp_path) -> None:  # type: ignore[no-untyped-def]
    backend = _backend_with_a_snapshot(tmp_path)
    root = tmp_path / "repo"
    (root / "snapshots").rename(root / "elsewhere")
    (root / "snapshots").symlink_to(root / "elsewhere")
    assert list(backend.list("snapshots/")) == []
    assert ("snapshots", "is a symlink or a file, not a folder") in list(
        backend.odd_entries("snapshots/")
    )
