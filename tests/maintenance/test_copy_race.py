"""Copy from an object store while another client adds to the destination: a chunk the
plan read ahead as missing is stored meanwhile by that client (a backup of the same data
with shared chunker parameters). The copy stays correct: every file byte for byte, and a
clean ``check --read-data`` of the destination."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from casbackup.maintenance import copy as copy_module
from casbackup.maintenance.copy import CopyOptions, copy_snapshots
from casbackup.repo.ids import Kind
from casbackup.testing.faults import FaultyBackend
from casbackup.testing.fixtures import open_repo
from casbackup.verify.check import CheckOptions, check

from .test_copy import _contents, _shared_dst, source  # noqa: F401 (fixture)


def test_a_chunk_the_destination_gains_after_planning(  # type: ignore[no-untyped-def]
    source,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, ids, _data = source
    remote_src = open_repo(FaultyBackend(src.backend, pretend_remote=True))
    dst_path = str(tmp_path / "dst")
    _shared_dst(src, dst_path).close()
    dst = open_repo(dst_path, "other")
    other = open_repo(dst_path, "other")  # another client of the destination
    gained: list[bytes] = []
    plan = copy_module._Copier._plan

    def planning(self: Any, nodes: list[Any]) -> Any:
        ahead = plan(self, nodes)
        if ahead is not None and not gained:
            chunk = next(c for n in nodes for c in n.content)  # planned: dst lacked it
            other.save_blob(Kind.DATA, src.load_blob(chunk, Kind.DATA), chunk)
            other.flush()
            gained.append(chunk)
        return ahead

    monkeypatch.setattr(copy_module._Copier, "_plan", planning)
    result = copy_snapshots(remote_src, dst, CopyOptions())
    assert gained and len(result.copied) == 2
    for src_id, dst_id in result.copied:
        assert _contents(dst, dst_id) == _contents(src, src_id)
    dst.close()
    other.close()
    remote_src.close()
    with open_repo(dst_path, "other") as fresh:
        report = check(fresh, CheckOptions(read_data=True))
        assert report.ok, report.errors
