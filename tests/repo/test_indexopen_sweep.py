"""Temporary index caches left by killed runs are removed by the next run that needs one.

A run whose cache folder cannot be used keeps its index cache in a temporary folder
(repo/indexopen.py), as large as the repository's index (~130 bytes an entry: 650 MB at
5M chunks), and removes it when it closes the repository. A run killed with SIGKILL could
not: every such run left its copy in $TMPDIR for good."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from casbackup.liveness import this_process
from casbackup.repo import indexopen
from casbackup.repo.indexopen import OWNER_FILE, PREFIX, open_index_cache, sweep_temporaries

UNUSABLE = "/dev/null/cache"  # under a file: no folder can ever be made there

_KILLED = """
import os, signal, sys
from casbackup.repo.indexopen import open_index_cache
cache, folder = open_index_cache(sys.argv[1], "ab" * 32)
print(folder, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_runs_temporary_cache_goes_with_the_next_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", _KILLED, UNUSABLE], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = Path(proc.stdout.strip())
    assert left.parent == tmp_path and (left / "index").is_dir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    cache, folder = open_index_cache(UNUSABLE, "cd" * 32)
    try:
        assert folder is not None and Path(folder).is_dir()
        assert not left.exists()
        assert [p.name for p in tmp_path.iterdir()] == [Path(folder).name]
    finally:
        cache.close()


def _folder(parent: Path, name: str, owner: dict[str, object] | None) -> Path:
    path = parent / f"{PREFIX}{name}"
    path.mkdir()
    (path / "index").mkdir()
    if owner is not None:
        (path / OWNER_FILE).write_text(json.dumps(owner))
    return path


def test_only_folders_of_ended_runs_are_removed(tmp_path: Path) -> None:
    me = this_process()
    mine = {"pid": os.getpid(), "boot": me.boot, "pidns": me.pidns, "start": me.start}
    alive = _folder(tmp_path, "alive", mine)  # this very process
    parent = _folder(tmp_path, "parent", {**mine, "pid": os.getppid(), "start": None})
    reused = _folder(tmp_path, "reused", {**mine, "pid": os.getppid(), "start": -5})
    other_ns = _folder(tmp_path, "other-ns", {**mine, "pid": 999_999, "pidns": "pid:[1]"})
    ended = _folder(tmp_path, "ended", {**mine, "pid": 999_999, "start": 12})
    last_boot = _folder(tmp_path, "last-boot", {**mine, "pid": os.getppid(), "boot": "another"})
    fresh_orphan = _folder(tmp_path, "fresh-orphan", None)
    old_orphan = _folder(tmp_path, "old-orphan", None)
    garbage = _folder(tmp_path, "garbage", None)
    (garbage / OWNER_FILE).write_text('{"pid": [1]}')
    old = time.time() - indexopen.ORPHAN_AGE_S - 60
    os.utime(old_orphan, (old, old))
    os.utime(garbage, (old, old))
    (tmp_path / "elsewhere").mkdir()
    target = _folder(tmp_path / "elsewhere", "target", {**mine, "pid": 999_999})
    (tmp_path / f"{PREFIX}link").symlink_to(target)
    (tmp_path / f"{PREFIX}file").write_text("not a folder")
    removed = sweep_temporaries(str(tmp_path))
    gone = {ended, last_boot, old_orphan, garbage, reused}
    for path in (alive, parent, reused, other_ns, ended, last_boot, fresh_orphan, old_orphan,
                 garbage):  # fmt: skip
        assert path.exists() == (path not in gone), path
    assert removed == len(gone)
    assert target.exists() and (tmp_path / f"{PREFIX}link").is_symlink()
    assert (tmp_path / f"{PREFIX}file").exists()
    assert sweep_temporaries(str(tmp_path / "missing")) == 0
