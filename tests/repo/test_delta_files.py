"""Large files stored as deltas of their previous version (--delta-files, issue 16).

A file of fixed-length records with 1% of them rewritten in place at random (a database
file's pages, a disk image) touches most of its chunks: without the option every chunk is
stored again; with it each changed chunk is a DELTA of the parent's chunk at the same
place. Chains are lowered to depth 3 so a few backups reach the limit.
"""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from casbackup.archiver import delta_files
from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.archiver.delta_bases import BaseFinder, store_chunks
from casbackup.archiver.delta_files import DeltaFileReader, wants_delta
from casbackup.archiver.restore import RestoreOptions, restore
from casbackup.archiver.stream import ChunkReader
from casbackup.archiver.workers import CancelFlag
from casbackup.chunking.chunker import Chunker, StreamCutter
from casbackup.config import load_config
from casbackup.config.model import Config
from casbackup.errors import NotFound
from casbackup.maintenance.prune import PruneOptions, prune
from casbackup.repo import delta
from casbackup.repo.config import RepoConfig
from casbackup.repo.ids import Kind
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.tree import Node, NodeKind
from casbackup.store.local import LocalBackend
from casbackup.testing.fixtures import (
    PASSWORD,
    TEST_CONFIG_KW,
    WEAK_KDF,
    flip_stored_byte,
    open_repo,
)
from casbackup.verify.check import CheckOptions, check
from casbackup.vfs import Vfs, snapshot_folder

DEPTH = 3
RECORD = 100
RECORDS = 24_000  # 2.4 MB: about 200 chunks of the test chunker (12 KiB average)
THRESHOLD = 1 << 20


@pytest.fixture(autouse=True)
def _shallow_chains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delta, "MAX_DEPTH", DEPTH)


def write_records(path: Path) -> None:
    rng = random.Random(7)
    words = [b"paid", b"shipped", b"new", b"cancelled", b"returned", b"refunded"]
    with open(path, "wb") as f:
        for i in range(RECORDS):
            body = b" ".join(rng.choice(words) for _ in range(14))
            f.write(f"{i:08d} ".encode() + body[: RECORD - 10].ljust(RECORD - 10) + b"\n")


def source(tmp_path: Path) -> tuple[Path, Path]:
    """A source folder holding one file of records: (folder, file)."""
    src = tmp_path / "src"
    src.mkdir()
    data = src / "orders.db"
    write_records(data)
    return src, data


def change_in_place(path: Path, seed: int, share: float = 0.01) -> None:
    """Rewrite ``share`` of the records at random, each keeping its length and place."""
    rng = random.Random(seed)
    with open(path, "r+b") as f:
        for i in rng.sample(range(RECORDS), int(RECORDS * share)):
            f.seek(i * RECORD + 9)
            f.write(rng.choice([b"ARCHIVED", b"DISPUTED", b"ONHOLD!!"]))


def run(repo: Repository, src: Path, delta_files: int = THRESHOLD) -> Snapshot:
    result = run_backup(repo, BackupOptions(paths=(str(src),), app="shop", delta_files=delta_files))
    assert result.snapshot is not None and not result.warnings, result.warnings
    return result.snapshot


def node_of(repo: Repository, snap: Snapshot, path: Path) -> Node:
    node = repo.find_node(snap.root, str(path))
    assert node is not None and node.kind == NodeKind.FILE
    return node


def stored(repo: Repository, ids: set[bytes]) -> int:
    return sum(repo.locate(c).stored_len for c in ids)


def read_file(repo: Repository, node: Node) -> bytes:
    with ChunkReader(repo, node.content, size=node.size, content_hash=node.content_hash) as r:
        return r.read()


@pytest.fixture
def nights(repo: Repository, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A first backup, then DEPTH + 2 backups each after a 1% in-place change: the file's
    chunks go full, 1, 2, 3 deltas deep, then restart on their full bases."""
    src, data = source(tmp_path)
    (src / "small.txt").write_text("small files are read by the readers as always\n")
    snaps, versions = [run(repo, src)], [data.read_bytes()]
    for n in range(1, DEPTH + 3):
        change_in_place(data, n)
        snaps.append(run(repo, src))
        versions.append(data.read_bytes())
    return data, snaps, versions


def test_a_changed_large_file_costs_what_changed_through_chains_at_the_limit(  # type: ignore[no-untyped-def]
    repo: Repository, nights
) -> None:
    data, snaps, versions = nights
    nodes = [node_of(repo, s, data) for s in snaps]
    first = set(nodes[0].content)
    full = stored(repo, first)
    for before, after in zip(nodes, nodes[1:], strict=False):
        new = set(after.content) - set(before.content)
        assert len(new) > len(after.content) // 2  # the change touched most chunks ...
        assert stored(repo, new) < full / 5  # ... and costs a fraction of the file
    depths = [max(repo.delta_depth(c) or 0 for c in n.content) for n in nodes]
    assert depths[0] == 0 and depths[1] == 1 and max(depths) == DEPTH  # never passed
    assert {repo.locate(c).kind for c in nodes[-1].content} >= {Kind.DELTA}
    for node, expected in zip(nodes, versions, strict=True):
        assert read_file(repo, node) == expected


def test_without_the_option_the_same_change_stores_the_file_again(
    repo: Repository, tmp_path: Path
) -> None:
    src, data = source(tmp_path)
    first = run(repo, src, delta_files=0)
    change_in_place(data, 1)
    second = run(repo, src, delta_files=0)
    new = set(node_of(repo, second, data).content) - set(node_of(repo, first, data).content)
    assert stored(repo, new) > stored(repo, set(node_of(repo, first, data).content)) / 2
    assert Kind.DELTA not in {repo.locate(c).kind for c in new}


def test_every_reader_and_check_resolve_the_chains(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, nights, tmp_path: Path
) -> None:
    data, snaps, versions = nights
    deepest = snaps[DEPTH]
    for workers in (1, 2):
        target = tmp_path / f"restored{workers}"
        result = restore(repo, deepest, RestoreOptions(target=str(target), workers=workers))
        assert not result.errors
        assert (target / str(data).lstrip("/")).read_bytes() == versions[DEPTH]
    vfs = Vfs(repo)  # mount's core
    path = f"/shop/{snapshot_folder(deepest)}{data}"
    assert vfs.read(path, 0, RECORDS * RECORD + 10) == versions[DEPTH]
    assert vfs.read(path, 1_000_003, 5000) == versions[DEPTH][1_000_003:1_005_003]
    res = subprocess.run(
        [sys.executable, "-m", "casbackup.cli.main", "-r", repo_path, "dump",
         f"{snaps[-1].id}:{data}"],
        capture_output=True, env=dict(os.environ, CASBACKUP_PASSWORD=PASSWORD), timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout == versions[-1]
    report = check(repo, CheckOptions(read_data=True, workers=2))
    assert report.ok, report.errors


def test_prune_after_forgetting_the_nights_that_hold_the_bases(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, nights, tmp_path: Path
) -> None:
    data, snaps, versions = nights
    for s in snaps[:2]:
        repo.delete_snapshot(s.id)
    prune(repo, PruneOptions(max_unused=0.0))
    repo.close()
    with open_repo(repo_path) as fresh:
        report = check(fresh, CheckOptions(read_data=True, workers=1))
        assert report.ok, report.errors
        for s, expected in zip(snaps[2:], versions[2:], strict=True):
            assert read_file(fresh, node_of(fresh, s, data)) == expected


def test_damage_to_a_base_names_the_file_in_every_snapshot_built_on_it(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, nights
) -> None:
    data, snaps, _ = nights
    first = node_of(repo, snaps[0], data)
    base = next(c for c in first.content if repo.locate(c).kind == Kind.DATA
                and any(repo.locate(d).base == c for d in node_of(repo, snaps[1], data).content))  # fmt: skip
    loc = repo.locate(base)
    flip_stored_byte(repo_path, loc.pack, loc.offset, loc.stored_len, 0x01)
    report = check(repo, CheckOptions(read_data=True, workers=1))
    assert not report.ok
    for s in snaps[:2]:
        assert str(data) in report.affected.get(s.id, []), (s.short_id, report.affected)


def test_a_new_unchanged_or_small_file_is_read_as_always(repo: Repository, tmp_path: Path) -> None:
    earlier = Node(name=b"f", kind=NodeKind.FILE, mode=0o600, uid=0, gid=0, mtime_ns=7,
                   ctime_ns=0, size=5 << 20, content=(b"x" * 32,), content_hash=b"")  # fmt: skip
    assert wants_delta(THRESHOLD, 2 << 20, 9, earlier)
    assert wants_delta(THRESHOLD, 5 << 20, 9, earlier)  # same size, newer mtime
    assert wants_delta(THRESHOLD, 2 << 20, 7, earlier)  # same mtime, other size
    assert not wants_delta(THRESHOLD, 5 << 20, 7, earlier)  # looks unchanged: the readers
    assert not wants_delta(0, 2 << 20, 9, earlier)  # off
    assert not wants_delta(THRESHOLD, THRESHOLD - 1, 9, earlier)  # smaller than the threshold
    assert not wants_delta(THRESHOLD, 2 << 20, 9, None)  # new: no earlier version
    empty = Node(name=b"f", kind=NodeKind.FILE, mode=0o600, uid=0, gid=0, mtime_ns=0,
                 ctime_ns=0, size=0, content=(), content_hash=b"")  # fmt: skip
    assert not wants_delta(THRESHOLD, 2 << 20, 9, empty)
    folder = Node(name=b"f", kind=NodeKind.DIR, mode=0o700, uid=0, gid=0, mtime_ns=0, ctime_ns=0)
    assert not wants_delta(THRESHOLD, 2 << 20, 9, folder)


def test_a_full_backup_reads_unchanged_large_files_through_the_readers(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = source(tmp_path)
    write_records(src / "copy.db")
    run(repo, src)
    change_in_place(src / "orders.db", 1)
    handed: list[bytes] = []
    real = DeltaFileReader.submit

    def submit(self: DeltaFileReader, path: bytes, *args: object) -> None:
        handed.append(path)
        real(self, path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(DeltaFileReader, "submit", submit)
    result = run_backup(
        repo, BackupOptions(paths=(str(src),), type="full", app="shop", delta_files=THRESHOLD)
    )
    assert result.snapshot is not None and not result.warnings
    assert handed == [os.fsencode(src / "orders.db")]  # the changed one only
    assert (
        read_file(repo, node_of(repo, result.snapshot, src / "copy.db"))
        == (src / "copy.db").read_bytes()
    )


def test_a_file_gone_or_swapped_for_a_fifo_is_a_read_error_not_a_crash(
    repo: Repository, tmp_path: Path
) -> None:
    src, data = source(tmp_path)
    earlier = node_of(repo, run(repo, src), data)
    outcomes: list[object] = []
    reader = DeltaFileReader(repo, Chunker(repo.config.chunker, repo.key.chunker_seed),
                             CancelFlag(), lambda n: None)  # fmt: skip
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (tmp_path / "gone", fifo):
        reader.submit(os.fsencode(path), earlier, lambda o, e: outcomes.append(o or e))
    reader.close()
    assert [o.error[0] for o in outcomes] == [2, 22]  # type: ignore[attr-defined]
    cancel = CancelFlag()
    cancel.set()
    reader = DeltaFileReader(repo, Chunker(repo.config.chunker, repo.key.chunker_seed),
                             cancel, lambda n: None)  # fmt: skip
    reader.submit(os.fsencode(data), earlier, lambda o, e: outcomes.append(o or e))
    reader.close()
    assert outcomes[-1].cancelled  # type: ignore[attr-defined]


def test_a_file_this_user_may_not_read_is_a_read_error_not_a_failed_backup(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large changed file of mode 000 seen by a user without CAP_DAC_OVERRIDE: both opens
    (with O_NOATIME, then without) fail with EACCES. The readers report it as the file's
    error (exit 3); the delta thread let the second open's error fail the whole backup."""
    src, data = source(tmp_path)
    (src / "notes.txt").write_text("kept\n")
    run(repo, src)
    change_in_place(data, 1)
    (src / "notes.txt").write_text("changed\n")
    real_open = os.open
    locked = os.fsencode(data)

    def no_access(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if isinstance(path, (str, bytes)) and os.fsencode(path) == locked:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", no_access)
    result = run_backup(repo, BackupOptions(paths=(str(src),), app="shop", delta_files=THRESHOLD))
    monkeypatch.undo()
    assert result.warnings == [f"{data}: Permission denied"]
    assert result.snapshot is not None and result.snapshot.summary.errors == 1
    with pytest.raises(NotFound):
        repo.find_node(result.snapshot.root, str(data))
    assert read_file(repo, node_of(repo, result.snapshot, src / "notes.txt")) == b"changed\n"


def test_a_dry_run_with_bases_stores_nothing(repo: Repository, tmp_path: Path) -> None:
    """store_chunks' ``dry_run`` (ids only, nothing stored) held only without bases: with
    the parent's version as bases it stored every new chunk, as deltas or whole."""
    src, data = source(tmp_path)
    earlier = node_of(repo, run(repo, src), data)
    change_in_place(data, 1)
    chunker = Chunker(repo.config.chunker, repo.key.chunker_seed)
    bases = BaseFinder.for_content(repo, earlier.content)
    added = repo.stats_blobs_added
    with open(data, "rb") as f:
        ids, _, size = store_chunks(repo, chunker.stream(f), bases, dry_run=True)
    assert repo.stats_blobs_added == added
    assert size == data.stat().st_size and not repo.has_blobs(ids)


def test_a_version_2_repository_stores_the_file_whole_and_says_why(tmp_path: Path) -> None:
    path = str(tmp_path / "v2")
    repo = Repository.init(LocalBackend(path), PASSWORD.encode(), kdf=WEAK_KDF,
                           config=RepoConfig(**TEST_CONFIG_KW, version=2))  # fmt: skip
    src, _ = source(tmp_path)
    run(repo, src)
    change_in_place(src / "orders.db", 1)
    result = run_backup(repo, BackupOptions(paths=(str(src),), delta_files=THRESHOLD))
    assert any("--delta-files needs repository format 3" in n for n in result.notes)
    repo.close()


def test_the_cli_option_and_the_config_key(repo_path: str, tmp_path: Path) -> None:
    src, _ = source(tmp_path)
    env = dict(os.environ, CASBACKUP_PASSWORD=PASSWORD)
    base = [sys.executable, "-m", "casbackup.cli.main", "-r", repo_path, "backup", str(src)]
    for bad, why in (("10k", "too small"), ("lots", "is not a size"), ("-5M", "is not a size")):
        res = subprocess.run([*base, "--delta-files", bad], capture_output=True, text=True,
                             env=env, timeout=60)  # fmt: skip
        assert res.returncode == 2 and why in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    for night in range(2):
        if night:
            change_in_place(src / "orders.db", night)
        res = subprocess.run([*base, "--delta-files", "1M", "--json"], capture_output=True,
                             text=True, env=env, timeout=120)  # fmt: skip
        assert res.returncode == 0, res.stderr
    with open_repo(repo_path) as repo:
        last = repo.list_snapshots()[-1]
        content = node_of(repo, last, src / "orders.db").content
        assert Kind.DELTA in {repo.locate(c).kind for c in content}

    def parse_config_text(text: str) -> Config:
        path = tmp_path / "casbackup.toml"
        path.write_text(text)
        return load_config(path)

    app = '[[applications]]\nname = "shop"\nsources = ["/srv"]\n'
    assert parse_config_text(app + 'delta_files = "64M"\n').applications[0].delta_files == 64 << 20
    assert parse_config_text(app + "delta_files = 2097152\n").applications[0].delta_files == 2 << 20
    assert parse_config_text(app + 'delta_files = "0"\n').applications[0].delta_files == 0
    assert parse_config_text(app).applications[0].delta_files == 0
    parse_config_text(app + 'delta_files = "64M"\n')
    shown = subprocess.run(
        [sys.executable, "-m", "casbackup.cli.main", "--config", str(tmp_path / "casbackup.toml"),
         "config", "check"], capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert "changed files of 64.0 MiB or more: stored as deltas" in shown.stdout, shown.stderr
    for bad, why in (
        ('"10k"', "too small"),
        ('"big"', "is not a size"),
        ("true", "must be a size"),
    ):
        with pytest.raises(Exception) as exc:  # noqa: PT011 - ConfigError, exit 2
            parse_config_text(app + f"delta_files = {bad}\n")
        assert "delta_files" in str(exc.value) and why in str(exc.value)


def test_a_repository_error_while_storing_deltas_fails_the_backup_cleanly(
    repo: Repository, repo_path: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from casbackup.errors import StorageError

    src, _ = source(tmp_path)
    first = run(repo, src)
    change_in_place(src / "orders.db", 1)

    def full_disk(*args: object, **kwargs: object) -> None:
        raise StorageError("no space left on device")

    monkeypatch.setattr(Repository, "save_data_delta", full_disk)
    with pytest.raises(StorageError, match="no space left"):
        run(repo, src)
    monkeypatch.undo()
    assert [s.id for s in repo.list_snapshots()] == [first.id]
    second = run(repo, src)
    assert check(repo, CheckOptions(read_data=True, workers=1)).ok
    assert Kind.DELTA in {
        repo.locate(c).kind for c in node_of(repo, second, src / "orders.db").content
    }


def test_a_delta_that_failed_to_store_fails_the_backup_when_the_file_then_fails_to_read(
    repo: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pack write failing under an encoder thread, then a read error (EIO) in the same
    file before that delta was waited for: the read error used to end the file as one
    unreadable file (a snapshot saved, exit 3) and the repository's error was dropped,
    though a failed pack takes the other blobs added to it, other files' too, with it."""
    from casbackup.errors import StorageError

    src, _ = source(tmp_path)
    first = run(repo, src)
    change_in_place(src / "orders.db", 1, share=0.2)  # every chunk changed: each one a delta

    def full_disk(*args: object, **kwargs: object) -> None:
        raise StorageError("no space left on device")

    class BadSector(StreamCutter):
        def chunks(self, reader: BinaryIO) -> Iterator[memoryview]:
            for i, piece in enumerate(super().chunks(reader)):
                if i == 3:  # fewer deltas than IN_FLIGHT submitted: none waited for yet
                    raise OSError(errno.EIO, "Input/output error")
                yield piece

    monkeypatch.setattr(Repository, "save_data_delta", full_disk)
    monkeypatch.setattr(delta_files, "StreamCutter", BadSector)
    with pytest.raises(StorageError, match="no space left"):
        run_backup(repo, BackupOptions(paths=(str(src),), app="shop", delta_files=THRESHOLD))
    assert [s.id for s in repo.list_snapshots()] == [first.id]


_KILL_BACKUP = """
import os, signal, sys
from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.repo.ids import Kind
from casbackup.repo.repository import Repository
from casbackup.testing.fixtures import open_repo
real, count = Repository.store_sealed, [0]
def store_sealed(self, kind, *a, **k):
    if kind == Kind.DELTA:
        count[0] += 1
        if count[0] == 3:
            self.flush()  # some deltas durable and indexed, the rest never written
        if count[0] == 4:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(self, kind, *a, **k)
Repository.store_sealed = store_sealed
repo = open_repo(sys.argv[1])
run_backup(repo, BackupOptions(paths=(sys.argv[2],), app="shop", delta_files=1 << 20))
"""


def test_sigkill_during_a_backup_writing_file_deltas(
    repo: Repository, repo_path: str, tmp_path: Path
) -> None:
    src, data = source(tmp_path)
    first = run(repo, src)
    change_in_place(data, 1, share=0.05)
    repo.close()
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_BACKUP, repo_path, str(src)],
        env=dict(os.environ), cwd=str(Path(__file__).parents[2]), timeout=120,
    )  # fmt: skip
    assert proc.returncode == -9
    with open_repo(repo_path) as again:
        assert check(again, CheckOptions(read_data=True, workers=1)).ok
        snap = run(again, src)
        assert read_file(again, node_of(again, snap, data)) == data.read_bytes()
        assert read_file(again, node_of(again, first, data)) != data.read_bytes()
        assert check(again, CheckOptions(read_data=True, workers=1)).ok
