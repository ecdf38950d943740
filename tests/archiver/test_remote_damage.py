"""Damage met by the object-store readers (read ahead per pack, in merged ranges): a blob
damaged in the middle of a window, a pack deleted or truncated between planning and
reading, a delta's base damaged. Each fails the files that need it, by name, and nothing
else; never a wrong byte, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from casbackup.archiver.restore import RestoreOptions, restore
from casbackup.archiver.stream import ChunkReader
from casbackup.errors import CasError, IntegrityError
from casbackup.repo.ids import Kind
from casbackup.repo.pack import pack_name
from casbackup.repo.repository import Repository
from casbackup.store.local import LocalBackend
from casbackup.testing.faults import FaultyBackend
from casbackup.testing.fixtures import flip_stored_byte, make_repo, open_repo
from tests.repo.test_delta_files import (  # noqa: F401 (fixtures)
    DEPTH,
    _shallow_chains,
    nights,
    node_of,
)

from .trees import file_node, snapshot_of


class Vanishing(FaultyBackend):
    """A folder taken for an object store whose pack ``victim`` is deleted (or cut to
    ``keep`` bytes) by another client right after the reader planned its reads: at the
    first get of any pack."""

    victim: str = ""
    keep: int | None = None

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        if self.victim and name.startswith("data/"):
            path = os.path.join(self.inner.root, self.victim)  # type: ignore[attr-defined]
            if self.keep is None:
                os.unlink(path)
            else:
                os.chmod(path, 0o600)
                os.truncate(path, self.keep)
            self.victim = ""
        return super().get(name, offset, length)


def _four_files(path: str) -> tuple[list[Any], Any, dict[bytes, bytes]]:
    repo = make_repo(path)
    nodes, data = [], {}
    for i in range(4):
        body = os.urandom(30_000)
        nodes.append(file_node(repo, b"f%d" % i, body, chunk=1000))
        data[b"f%d" % i] = body
        repo.flush()  # a pack per file
    snap = snapshot_of(repo, nodes)
    repo.close()
    return nodes, snap, data


def _remote(path: str) -> Repository:
    return open_repo(Vanishing(LocalBackend(path), pretend_remote=True))


def _dump(repo: Repository, node: Any) -> bytes:
    with ChunkReader.for_node(repo, node, name=node.name.decode()) as reader:
        return reader.read()


def _outcome(repo: Repository, snap: Any, target: Path) -> tuple[list[str], dict[str, bytes]]:
    result = restore(repo, snap, RestoreOptions(target=str(target)))
    written = {p.name: p.read_bytes() for p in target.iterdir() if p.is_file()}
    return result.errors, written


def test_a_blob_damaged_mid_window_fails_its_file_only(tmp_path: Path) -> None:
    path = str(tmp_path / "repo")
    nodes, snap, data = _four_files(path)
    with open_repo(path) as repo:
        loc = repo.locate(nodes[1].content[15])
    flip_stored_byte(path, loc.pack, loc.offset, loc.stored_len)
    with _remote(path) as repo:
        errors, written = _outcome(repo, snap, tmp_path / "out")
        assert len(errors) == 1 and errors[0].startswith("f1: ") and "damaged" in errors[0]
        assert written == {k.decode(): v for k, v in data.items() if k != b"f1"}
        with pytest.raises(IntegrityError, match=r"^f1: blob .* is damaged"):
            _dump(repo, nodes[1])
        assert _dump(repo, nodes[2]) == data[b"f2"]


@pytest.mark.parametrize("keep", [None, 100], ids=["deleted", "truncated"])
def test_a_pack_gone_after_planning_fails_its_file_only(tmp_path: Path, keep: int | None) -> None:
    path = str(tmp_path / "repo")
    nodes, snap, data = _four_files(path)
    with open_repo(path) as repo:
        victim = pack_name(repo.locate(nodes[2].content[0]).pack)
    with _remote(path) as repo:
        repo.backend.victim, repo.backend.keep = victim, keep  # type: ignore[attr-defined]
        errors, written = _outcome(repo, snap, tmp_path / "out")
        assert len(errors) == 1 and errors[0].startswith("f2: "), errors
        assert ("missing" if keep is None else "truncated") in errors[0]
        assert written == {k.decode(): v for k, v in data.items() if k != b"f2"}
        with pytest.raises(CasError, match=r"^f2: data/"):
            _dump(repo, nodes[2])


def test_a_damaged_delta_base_fails_the_file_by_name(  # type: ignore[no-untyped-def]
    repo: Repository,
    repo_path: str,
    nights,  # noqa: F811
    tmp_path: Path,
) -> None:
    data, snaps, versions = nights
    deepest = snaps[DEPTH]
    node = node_of(repo, deepest, data)
    chained = next(c for c in node.content if repo.locate(c).kind == Kind.DELTA)
    base = chained
    while repo.locate(base).kind == Kind.DELTA:
        base = repo.locate(base).base  # type: ignore[assignment]
    loc = repo.locate(base)
    repo.close()
    with _remote(repo_path) as remote:  # unharmed first: the chains resolve through the plan
        assert _dump(remote, node) == versions[DEPTH]
    flip_stored_byte(repo_path, loc.pack, loc.offset, loc.stored_len)
    with _remote(repo_path) as remote:
        with pytest.raises(IntegrityError, match=r"^orders\.db: "):
            _dump(remote, node)
        result = restore(remote, deepest, RestoreOptions(target=str(tmp_path / "out")))
        assert len(result.errors) == 1, result.errors
        assert result.errors[0].startswith(str(data).lstrip("/")), result.errors
        assert not (tmp_path / "out" / str(data).lstrip("/")).exists()
