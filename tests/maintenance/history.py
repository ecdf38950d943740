"""A synthetic history of backups with fake dates, shared by the forget and prune tests."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.archiver.restore import RestoreOptions, restore
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot


@dataclass
class History:
    source: str
    contents: dict[str, dict[str, bytes]] = field(
        default_factory=dict
    )  # snap id -> rel path -> bytes

    def expect_restores(self, repo: Repository, snap: Snapshot, target: str) -> None:
        restore(repo, snap, RestoreOptions(target=target, subpath=self.source))
        found = {}
        for dirpath, _dirs, files in os.walk(target):
            for name in files:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    found[os.path.relpath(path, target)] = f.read()
        assert found == self.contents[snap.id], f"snapshot {snap.short_id} did not restore exactly"


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def redate(repo: Repository, snap: Snapshot, when: datetime) -> Snapshot:
    """Give a snapshot a fake time: save a copy with the new time, delete the original."""
    ns = int(when.timestamp()) * 1_000_000_000
    new = repo.save_snapshot(replace(snap, time=when.isoformat(), start_ns=ns, id=""))
    repo.delete_snapshot(snap.id)
    return new


def build_history(
    repo: Repository, root: str, days_ago: list[int], *, app: str = "app", file_size: int = 24_000
) -> History:
    """One backup per entry of ``days_ago`` (oldest first), each with changing data.

    Every backup replaces ``day`` (data only that snapshot has), appends to ``log``, and
    two backups out of three add a small ``archive/<n>`` file that stays for good. Once a
    snapshot is forgotten, its pack is then either wholly unused (delete) or mostly unused
    (repack): prune has both kinds of work.
    """
    source = os.path.join(root, "src")
    os.makedirs(os.path.join(source, "archive"), exist_ok=True)
    _write(os.path.join(source, "constant"), os.urandom(file_size))
    history = History(source)
    now = datetime.now(UTC).replace(microsecond=0)
    for i, ago in enumerate(sorted(days_ago, reverse=True)):
        _write(os.path.join(source, "day"), os.urandom(file_size))
        with open(os.path.join(source, "log"), "ab") as f:
            f.write(f"backup {i}\n".encode())
        if i % 3:
            _write(os.path.join(source, "archive", f"{i:03d}"), os.urandom(file_size // 6))
        result = run_backup(repo, BackupOptions(paths=(source,), app=app))
        assert result.snapshot is not None
        snap = redate(repo, result.snapshot, now - timedelta(days=ago, hours=1))
        contents = {}
        for dirpath, _dirs, files in os.walk(source):
            for name in files:
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    contents[os.path.relpath(path, source)] = f.read()
        history.contents[snap.id] = contents
    return history


def repo_bytes(path: str) -> int:
    """Apparent size of every stored object (locks excluded: they come and go)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        if os.path.relpath(dirpath, path).startswith("locks"):
            continue
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total
