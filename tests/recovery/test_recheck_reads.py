"""The re-check before a recovery reads per pack, not per chunk (archiver/readcheck.py).

Before, it read file by file through ChunkReader, one get per chunk, one after the other:
on SeaweedFS over loopback 26.6-31.8 s for an application of 8,104 files (9,502 chunks),
1.4-1.5 s since.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from casbackup.recovery.plan import RecoverOptions, build_plan
from casbackup.recovery.recheck import recheck
from tests.verify.apps import backup, make_app


def test_the_recheck_reads_each_pack_in_a_few_ranged_gets(  # type: ignore[no-untyped-def]
    repo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, db = make_app(tmp_path)
    many = app / "data" / "many"
    many.mkdir()
    for i in range(300):
        (many / f"f{i:03d}").write_bytes(os.urandom(700) + b"%d" % i)
    backup(repo, app, [db])
    plan = build_plan(repo, RecoverOptions(app="shop", target=str(tmp_path / "t"),
                                           allow_unverified=True))  # fmt: skip
    gets: list[str] = []
    real_get = repo.backend.get

    def counting_get(name: str, offset: int = 0, length: int | None = None) -> bytes:
        if name.startswith("data/"):
            gets.append(name)
        return real_get(name, offset, length)

    monkeypatch.setattr(repo.backend, "get", counting_get)
    out = recheck(repo, plan)
    assert not out.problems and out.files >= 305
    assert len(gets) < out.files / 10, len(gets)  # one get per chunk made 305+
    assert not (tmp_path / "t").exists()
