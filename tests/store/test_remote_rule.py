"""One rule for "is this an object store" (store/base.is_remote), kept by every reader.

ChunkReader, readcheck, restore and copy used to ask ``isinstance(backend, LocalBackend)``
while the VFS, the tree cache, the uploader asked the ``remote`` attribute (check's tree
walk asked ``LocalFiles``): a local folder inside any wrapper (retry, a plugin's guard,
fault injection) was an object store to the first and a folder to the others. Here a
wrapped folder and a wrapped object store are each judged the same by every reader.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from casbackup.archiver import restore_files
from casbackup.archiver.readplan import LOCAL_GAP, REMOTE_GAP
from casbackup.archiver.restore import RestoreOptions, restore
from casbackup.archiver.stream import ChunkReader
from casbackup.maintenance.copy import CopyResult, _Copier
from casbackup.repo.repository import Repository
from casbackup.store.base import is_remote
from casbackup.store.guard import GuardedBackend
from casbackup.store.local import LocalBackend
from casbackup.store.memory import MemoryBackend
from casbackup.store.retry import RetryingBackend
from casbackup.testing.faults import FaultyBackend
from casbackup.testing.fixtures import make_repo
from casbackup.verify.check_walk import _TreePacks
from casbackup.vfs.core import Vfs
from tests.archiver.trees import file_node, snapshot_of


class RemoteMemory(MemoryBackend):
    """Stands in for an object store: it says so as S3Backend does."""

    remote = True


WRAPPERS: dict[str, Callable[[Any], Any]] = {
    "bare": lambda b: b,
    "retry": lambda b: RetryingBackend(b, sleep=lambda s: None),
    "guard": lambda b: GuardedBackend(b, "plugin"),
    "faults": FaultyBackend,
    "retry+faults": lambda b: RetryingBackend(FaultyBackend(b), sleep=lambda s: None),
}


def _inner(kind: str, tmp_path: Path) -> Any:
    return LocalBackend(str(tmp_path / "repo")) if kind == "folder" else RemoteMemory()


def _choices(repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """What each reader chose for ``repo``'s backend: read-ahead or not, its gap."""
    node = file_node(repo, b"f", os.urandom(40_000), chunk=1000)
    snap = snapshot_of(repo, [node])
    gaps: list[int] = []
    real = restore_files.BlobReader

    def recording(*args: Any, **kwargs: Any) -> Any:
        gaps.append(kwargs["gap"])
        return real(*args, **kwargs)

    monkeypatch.setattr(restore_files, "BlobReader", recording)
    restore(repo, snap, RestoreOptions(target=str(tmp_path / "out"), workers=1))
    copier = _Copier(repo, make_repo(MemoryBackend()), CopyResult())
    vfs = Vfs(repo)
    try:
        return {
            "chunk reader reads ahead": ChunkReader.for_node(repo, node)._ahead,
            "restore gap": {LOCAL_GAP: "local", REMOTE_GAP: "remote"}[gaps[0]],
            "copy reads ahead": copier._pool is not None,
            "check reads tree packs whole": _TreePacks(repo).remote,
            "vfs reads ahead": vfs._ahead is not None,
            "uploader": repo._uploader is not None,
        }
    finally:
        copier.close(wait=False)
        vfs.close()


@pytest.mark.parametrize("kind", ["folder", "object store"])
def test_every_reader_judges_a_wrapped_backend_as_its_inner_one(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = kind == "object store"
    seen: dict[str, dict[str, Any]] = {}
    for name, wrap in WRAPPERS.items():
        backend = wrap(_inner(kind, tmp_path / name))
        assert is_remote(backend) is remote, name
        repo = make_repo(backend)
        with monkeypatch.context() as patch:
            seen[name] = _choices(repo, tmp_path / name, patch)
        repo.close()
    expected = {
        "chunk reader reads ahead": remote,
        "restore gap": "remote" if remote else "local",
        "copy reads ahead": remote,
        "check reads tree packs whole": remote,
        "vfs reads ahead": remote,
        "uploader": remote,
    }
    for name, choices in seen.items():
        assert choices == expected, (name, choices)
