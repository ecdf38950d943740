"""Delta blobs (issue 16): chains at the depth limit through every reader, prune, check,
damage, format versions. The chain depth limit is lowered to 3 so that a few nights
reach it; readers in subprocesses (cat) use the default limit, which is higher."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
from pathlib import Path

import blake3
import pytest

from casbackup.archiver.restore import RestoreOptions, restore
from casbackup.archiver.stream import ChunkReader
from casbackup.crypto.keys import MasterKey
from casbackup.engines.base import DatabaseSpec
from casbackup.errors import UnsupportedFormat
from casbackup.maintenance.migrate import migrate
from casbackup.maintenance.prune import PruneOptions, prune
from casbackup.recovery.execute import recover
from casbackup.recovery.plan import RecoverOptions
from casbackup.repo import config as config_module
from casbackup.repo import delta
from casbackup.repo.config import FORMAT_VERSION, RepoConfig
from casbackup.repo.ids import Kind
from casbackup.repo.pack import pack_name
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.testing.fixtures import TEST_CONFIG_KW, flip_stored_byte, make_repo, open_repo
from casbackup.verify.check import CheckOptions, check
from casbackup.verify.sandbox import VerifyOptions, verify_snapshot
from casbackup.vfs import Vfs, snapshot_folder
from tests.verify.apps import backup, make_app

# Databases of a few hundred kB, cut every 64 KiB as a large one is every 1 MiB.
pytestmark = pytest.mark.usefixtures("small_page_chunks")
DEPTH = 3
ROWS = 20_000
DUMP = "/.databases/local.sqlite"


# Chunk boundaries, and so every size and depth this module asserts, depend on the
# repository's key (it seeds the chunker's gear table): with a random key about one run in
# a hundred met other boundaries. Over 100 keys, one stored 59% of the first night on the
# night after the limit (that night's changed rows erased a boundary: two chunks became
# one of 234 kB, which has one base and is stored whole; 3-49% for the others). One fixed
# key gives every run the same chunks (a change to the chunker or to SQLite's file layout
# changes them for every run alike, so a failure then shows on the first run).
FIXED_KEY = MasterKey(bytes(range(32)))


@pytest.fixture
def repo_version() -> int:
    """The format version of this module's repositories: the newest, unless a test is
    parametrized over ``BOTH_CODECS`` (format 6 writes this module's in-place row changes
    as aligned deltas, format 5 as patch-from)."""
    return FORMAT_VERSION


BOTH_CODECS = pytest.mark.parametrize("repo_version", [6, 5], ids=["aligned", "patch-from"])


@pytest.fixture
def repo_path(tmp_path: Path, repo_version: int) -> str:
    path = str(tmp_path / "repo")
    make_repo(path, key=FIXED_KEY, version=repo_version).close()
    return path


def payload_versions(repo: Repository, snaps: list[Snapshot]) -> set[int]:
    """The DELTA payload versions (1 patch-from, 2 aligned) of the snapshots' dump chunks."""
    found = set()
    for snap in snaps:
        for c in dump_node(repo, snap).content:
            loc = repo.locate(c)
            if loc.kind == Kind.DELTA:
                envelope = repo.fetch_envelope(loc.pack, loc.offset, loc.stored_len)
                found.add(delta.payload_version(delta.open_delta(repo.opener, c, envelope)))
    return found


@pytest.fixture(autouse=True)
def _shallow_chains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(delta, "MAX_DEPTH", DEPTH)


def change_rows(db: DatabaseSpec, seed: int, share: float = 0.01, rows: int = ROWS) -> None:
    """Update ``share`` of the ``rows`` in place, scattered, keeping each value's length."""
    rng = random.Random(seed)
    conn = sqlite3.connect(db.path)  # type: ignore[arg-type]
    for i in rng.sample(range(1, rows + 1), int(rows * share)):
        item = f"item {i}"
        conn.execute("UPDATE orders SET item = ? WHERE id = ?", (item[::-1], i))
    conn.commit()
    conn.close()


def nights(repo: Repository, app: Path, db: DatabaseSpec, count: int) -> list[Snapshot]:
    snaps = [backup(repo, app, [db])]
    for n in range(1, count):
        change_rows(db, n)
        # A file that changes whole each night: forgetting a night leaves its packs partly
        # used, so prune repacks the dump chunks beside it that later nights build on.
        (app / "data" / "blob.bin").write_bytes(os.urandom(150_000))
        snaps.append(backup(repo, app, [db]))
    return snaps


def dump_node(repo: Repository, snap: Snapshot):  # type: ignore[no-untyped-def]
    node = repo.find_node(snap.root, DUMP)
    assert node is not None
    return node


def depths(repo: Repository, snap: Snapshot) -> list[int]:
    return [repo.delta_depth(c) for c in dump_node(repo, snap).content]  # type: ignore[misc]


def read_dump(repo: Repository, snap: Snapshot) -> bytes:
    node = dump_node(repo, snap)
    with ChunkReader(repo, node.content, size=node.size, content_hash=node.content_hash) as r:
        data = r.read()
    assert blake3.blake3(data).digest() == node.content_hash
    return data


@pytest.fixture
def chained(repo: Repository, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Five nights: the dump's chunks go full, 1, 2, 3 deltas deep, then (the chains full)
    deltas of the full chunks at their bottom, one deep."""
    app, db = make_app(tmp_path, rows=ROWS)
    snaps = nights(repo, app, db, DEPTH + 2)
    return app, db, snaps


def test_chains_reach_the_limit_then_restart_on_their_full_base(repo: Repository, chained) -> None:  # type: ignore[no-untyped-def]
    _, _, snaps = chained
    seen = [depths(repo, s) for s in snaps]
    assert len(seen[0]) >= 2
    assert max(seen[0]) == 0
    assert max(seen[DEPTH]) == DEPTH  # the limit is reached ...
    assert max(max(d) for d in seen) == DEPTH  # ... never passed
    kinds = {repo.locate(c).kind for c in dump_node(repo, snaps[DEPTH]).content}
    assert Kind.DELTA in kinds
    # The night after the limit: a chunk whose counterpart's chain is full is a delta of
    # the full blob at the bottom of that chain (one level deep), not a full copy.
    parent = dump_node(repo, snaps[DEPTH]).content
    roots = {delta.chain_of(repo.locate, c, repo.locate(c))[-1][0] for c in parent
             if repo.delta_depth(c) == DEPTH}  # fmt: skip
    restarted = [c for c in dump_node(repo, snaps[DEPTH + 1]).content
                 if c not in parent and repo.locate(c).base in roots]  # fmt: skip
    assert restarted and all(repo.delta_depth(c) == 1 for c in restarted)
    # Each changed night costs far less than the first one did.
    first = sum(repo.locate(c).stored_len for c in dump_node(repo, snaps[0]).content)
    second = {c for c in dump_node(repo, snaps[1]).content} - set(dump_node(repo, snaps[0]).content)
    # (typically 2-5%; without deltas a 1% scattered change stores ~all. A dump of ~90 kB is
    # a handful of chunks, so one boundary more or less moves these sums: FIXED_KEY above)
    assert sum(repo.locate(c).stored_len for c in second) < first / 2
    restart = set(dump_node(repo, snaps[DEPTH + 1]).content) - set(parent)
    assert sum(repo.locate(c).stored_len for c in restart) < first / 2


def test_a_full_chain_not_worth_restarting_stores_full_loading_no_base(  # type: ignore[no-untyped-def]
    repo: Repository, chained, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, db, snaps = chained
    full = snaps[-1]
    for n in range(DEPTH):  # on until the restarted chains are full again
        if max(depths(repo, full)) == DEPTH:
            break
        change_rows(db, 50 + n)
        full = backup(repo, app, [db])
    assert max(depths(repo, full)) == DEPTH
    monkeypatch.setattr(delta, "MAX_SHARE", 0.0)  # a restart never pays
    at_limit = [c for c in dump_node(repo, full).content if repo.delta_depth(c) == DEPTH]
    chains = {c: [link for link, _ in delta.chain_of(repo.locate, c, repo.locate(c))]
              for c in at_limit}  # fmt: skip
    loaded: list[bytes] = []
    real = delta.resolve_chain

    def counting(fetch, opener, chain, **kw):  # type: ignore[no-untyped-def]
        loaded.append(chain[0][0])
        return real(fetch, opener, chain, **kw)

    monkeypatch.setattr(delta, "resolve_chain", counting)
    change_rows(db, 60)
    snap = backup(repo, app, [db])
    monkeypatch.setattr(delta, "resolve_chain", real)
    new = [c for c in dump_node(repo, snap).content if c not in dump_node(repo, full).content]
    bases = {repo.locate(c).base for c in new}
    # No new chunk builds on a full chain or its bottom, and no link of one was loaded
    # (chunks whose counterpart had room still became deltas of it).
    assert at_limit and Kind.DATA in {repo.locate(c).kind for c in new}
    for c, links in chains.items():
        assert not set(links) & bases, c.hex()[:16]
        assert not set(links) & set(loaded), c.hex()[:16]
    assert read_dump(repo, snap)


def test_choose_base() -> None:
    deep = [100] * delta.MAX_DEPTH + [10_000]
    assert delta.choose_base([10_000]) == 0  # a full counterpart
    assert delta.choose_base([100, 10_000]) == 0  # a chain with room: the counterpart
    assert delta.choose_base(deep) == delta.MAX_DEPTH  # at the limit: its full base
    big = [2_000] * delta.MAX_DEPTH + [10_000]
    assert delta.choose_base(big) is None  # the changes add up: store full


@BOTH_CODECS
def test_every_reader_round_trips_a_chain_at_the_limit(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, chained, tmp_path: Path, repo_version: int
) -> None:
    _, db, snaps = chained
    assert payload_versions(repo, snaps) == ({1, 2} if repo_version == 6 else {1})
    deepest = snaps[DEPTH]
    expected = read_dump(repo, deepest)  # ChunkReader (db restore, dump)
    # and the night after the limit, whose chains restarted on their full bases
    restarted = snaps[DEPTH + 1]
    again = restore(repo, restarted, RestoreOptions(target=str(tmp_path / "restarted")))
    assert not again.errors
    got = (tmp_path / "restarted" / ".databases" / "local.sqlite").read_bytes()
    assert got == read_dump(repo, restarted)
    assert _restarted_on(repo, restarted, snaps[0])  # (the shape this part is about)
    restarted_path = f"/shop/{snapshot_folder(restarted)}{DUMP}"
    assert Vfs(repo).read(restarted_path, 0, len(got) + 10) == got  # mount
    node = dump_node(repo, deepest)
    # restore: writer processes and threads read the chain from packs themselves
    for workers in (1, 2):
        target = tmp_path / f"restored{workers}"
        result = restore(repo, deepest, RestoreOptions(target=str(target), workers=workers))
        assert not result.errors
        assert (target / ".databases" / "local.sqlite").read_bytes() == expected
    # mount (the vfs core under FUSE)
    vfs = Vfs(repo)
    path = f"/shop/{snapshot_folder(deepest)}{DUMP}"
    assert vfs.read(path, 0, node.size + 10) == expected
    assert vfs.read(path, 70_000, 5000) == expected[70_000:75_000]
    # cat/dump in a real process
    res = subprocess.run(
        [sys.executable, "-m", "casbackup.cli.main", "-r", repo_path, "dump",
         f"{deepest.id}:{DUMP}"],
        capture_output=True, env=dict(os.environ), timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout == expected
    # check --read-data resolves every delta
    report = check(repo, CheckOptions(read_data=True, workers=2))
    assert report.ok, report.errors
    # verify: restore into a sandbox, load the dump, compare row counts
    rec = verify_snapshot(repo, deepest, VerifyOptions(sandbox_dir=str(tmp_path))).record
    assert rec.ok and rec.databases[0].ok
    # recover: the database rebuilt from the chained dump
    into = tmp_path / "recovered.sqlite"
    out = recover(repo, RecoverOptions(app="shop", target=str(tmp_path / "rebuilt"),
                                       snapshot=deepest.id, allow_unverified=True,
                                       db_into={"local": str(into)}))  # fmt: skip
    assert out.ok, out.errors
    conn = sqlite3.connect(into)
    live = sqlite3.connect(db.path)  # type: ignore[arg-type]
    try:
        assert conn.execute("SELECT count(*) FROM orders").fetchone()[0] == ROWS
        assert conn.execute("SELECT item FROM orders WHERE id = 1").fetchone() is not None
    finally:
        conn.close()
        live.close()


@BOTH_CODECS
def test_prune_after_forgetting_the_snapshots_that_hold_the_bases(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, chained, tmp_path: Path
) -> None:
    _, _, snaps = chained
    expected = {s.id: read_dump(repo, s) for s in snaps[2:]}
    # The night after the limit restarted its chains on the first night's full chunks:
    # forgetting that night leaves them used only through those deltas.
    assert _restarted_on(repo, snaps[DEPTH + 1], snaps[0])
    for s in snaps[:2]:
        repo.delete_snapshot(s.id)
    bases = {loc.base for s in snaps[2:] for c in dump_node(repo, s).content
             for loc in [repo.locate(c)] if loc.base is not None}  # fmt: skip
    homes = {repo.locate(b).pack for b in bases}  # type: ignore[arg-type]
    plan, _ = prune(repo, PruneOptions(max_unused=0.0))  # repack every partly used pack
    assert homes & {use.pack for use in plan.repack}  # bases were copied into new packs
    repo.close()
    with open_repo(repo_path) as fresh:
        report = check(fresh, CheckOptions(read_data=True, workers=1))
        assert report.ok, report.errors
        for s in snaps[2:]:
            assert read_dump(fresh, s) == expected[s.id]
            target = tmp_path / f"r-{s.short_id}"
            assert not restore(fresh, s, RestoreOptions(target=str(target))).errors
            assert (target / ".databases" / "local.sqlite").read_bytes() == expected[s.id]


def _restarted_on(repo: Repository, snap: Snapshot, first: Snapshot) -> list[bytes]:
    """``snap``'s dump chunks that are deltas of one of ``first``'s full chunks."""
    full = {c for c in dump_node(repo, first).content if repo.locate(c).kind == Kind.DATA}
    return [c for c in dump_node(repo, snap).content if repo.locate(c).base in full]


def _full_base(repo: Repository, snap: Snapshot) -> bytes:
    """A full chunk of ``snap``'s dump that a later night's delta builds on."""
    for chunk in dump_node(repo, snap).content:
        if repo.locate(chunk).kind == Kind.DATA:
            return chunk
    raise AssertionError("no full chunk")


@BOTH_CODECS
def test_a_damaged_base_names_every_dependent_file_in_every_snapshot(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, chained, tmp_path: Path
) -> None:
    _, _, snaps = chained
    base = _full_base(repo, snaps[0])
    dependents = [
        s for s in snaps if any(
            base in [c for c, _ in delta.chain_of(repo.locate, c, repo.locate(c))]
            for c in dump_node(repo, s).content
        )
    ]  # fmt: skip
    assert len(dependents) >= DEPTH + 1  # the base night and every delta night above it
    loc = repo.locate(base)
    flip_stored_byte(repo_path, loc.pack, loc.offset, loc.stored_len, 0x01)
    report = check(repo, CheckOptions(read_data=True, workers=1))
    assert not report.ok
    for s in dependents:
        assert DUMP in report.affected.get(s.id, []), (s.short_id, report.affected)
    assert any("delta blob" in e and "damaged" in e for e in report.errors)
    with pytest.raises(Exception) as exc:  # noqa: PT011 - VerificationFailed, exit 28
        verify_snapshot(repo, snaps[DEPTH], VerifyOptions(sandbox_dir=str(tmp_path)))
    assert getattr(exc.value, "exit_code", None) == 28 and DUMP in str(exc.value)


def test_a_missing_base_is_named_by_check_without_reading_data(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, chained
) -> None:
    _, _, snaps = chained
    base = _full_base(repo, snaps[0])
    os.remove(os.path.join(repo_path, pack_name(repo.locate(base).pack)))
    report = check(repo, CheckOptions())
    assert not report.ok
    assert any("delta blob" in e and "is missing" in e for e in report.errors), report.errors
    for s in snaps[: DEPTH + 1]:
        assert DUMP in report.affected.get(s.id, [])


def test_a_version_2_repository_writes_no_delta_until_migrate(tmp_path: Path) -> None:
    from casbackup.crypto.keyfile import WEAK_KDF
    from casbackup.store.local import LocalBackend
    from casbackup.testing.fixtures import PASSWORD

    path = str(tmp_path / "v2")
    repo = Repository.init(LocalBackend(path), PASSWORD.encode(), kdf=WEAK_KDF,
                           config=RepoConfig(version=2, **TEST_CONFIG_KW), key=FIXED_KEY)  # fmt: skip
    app, db = make_app(tmp_path, rows=ROWS)
    snaps = nights(repo, app, db, 2)
    assert not repo.deltas_allowed
    assert {repo.locate(c).kind for c in dump_node(repo, snaps[1]).content} == {Kind.DATA}
    migrate(repo)
    assert repo.config.version == FORMAT_VERSION and repo.deltas_allowed
    # The first night after it cuts the SQLite dump at fixed offsets (aligned deltas are
    # allowed now): its parent was cut by content, so it is stored whole, once.
    change_rows(db, 7)
    snap = backup(repo, app, [db])
    assert {repo.locate(c).kind for c in dump_node(repo, snap).content} == {Kind.DATA}
    change_rows(db, 8)
    snap = backup(repo, app, [db])
    assert Kind.DELTA in {repo.locate(c).kind for c in dump_node(repo, snap).content}
    repo.close()
    with open_repo(path) as again:
        assert again.config.version == FORMAT_VERSION
        assert check(again, CheckOptions(read_data=True, workers=1)).ok
        read_dump(again, snap)


def test_a_version_2_reader_refuses_a_version_3_repository(repo_path: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    with open(os.path.join(repo_path, "config"), "rb") as f:
        raw = f.read()
    monkeypatch.setattr(config_module, "FORMAT_VERSION", 2)
    with pytest.raises(UnsupportedFormat) as exc:
        RepoConfig.decode(raw)
    assert exc.value.exit_code == 21 and "upgrade casbackup" in str(exc.value)


_KILL_BACKUP = """
import os, signal, sys
from casbackup.crypto.keys import MasterKey
from casbackup.engines.base import DatabaseSpec
from casbackup.repo import delta
from casbackup.repo.ids import Kind
from casbackup.repo.repository import Repository
from casbackup.testing.fixtures import open_repo
from tests.conftest import SMALL_PAGE_CHUNK
from tests.verify.apps import backup
import casbackup.archiver.backup
casbackup.archiver.backup.PAGE_IMAGE_CHUNK = SMALL_PAGE_CHUNK  # as small_page_chunks does
real, count = Repository.store_sealed, [0]
def store_sealed(self, kind, *a, **k):
    if kind == Kind.DELTA:
        count[0] += 1
        if count[0] == int(sys.argv[3]):
            self.flush()  # some deltas durable and indexed, the rest never written
        if count[0] == int(sys.argv[3]) + 1:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(self, kind, *a, **k)
Repository.store_sealed = store_sealed
repo = open_repo(sys.argv[1])
backup(repo, __import__("pathlib").Path(sys.argv[4]),
       [DatabaseSpec(name="local", engine="sqlite", path=sys.argv[2])])
"""


def test_sigkill_during_a_backup_writing_deltas(
    repo: Repository, repo_path: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    # Three times the rows: enough changed chunks that the third delta, where the child is
    # killed, exists whatever chunk boundaries this repository's key gives.
    app, db = make_app(tmp_path, rows=3 * ROWS)
    first = backup(repo, app, [db])
    change_rows(db, 1, share=0.05, rows=3 * ROWS)
    proc = subprocess.run(
        [sys.executable, "-c", _KILL_BACKUP, repo_path, db.path, "2", str(app)],  # type: ignore[list-item]
        env=dict(os.environ), cwd=str(Path(__file__).parents[2]), timeout=120,
    )  # fmt: skip
    assert proc.returncode == -9
    with open_repo(repo_path) as again:
        assert check(again, CheckOptions(read_data=True, workers=1)).ok
        snap = backup(again, app, [db])  # the next run goes on and adopts the flushed deltas
        assert Kind.DELTA in {again.locate(c).kind for c in dump_node(again, snap).content}
        read_dump(again, first)
        read_dump(again, snap)
        assert check(again, CheckOptions(read_data=True, workers=1)).ok


_KILL_PRUNE = """
import os, signal, sys
from casbackup.maintenance.prune import PruneOptions, prune
from casbackup.repo.pack import PackWriter
from casbackup.testing.fixtures import open_repo
repo = open_repo(sys.argv[1])
real_put, real_delete = repo.backend.put, repo.backend.delete
where, count = sys.argv[2], [0]
def put(name, data):
    real_put(name, data)
    if where == "repack" and name.startswith("data/"):
        os.kill(os.getpid(), signal.SIGKILL)  # a new pack of bases stored, nothing indexed
    if where == "index" and name.startswith("index/"):
        os.kill(os.getpid(), signal.SIGKILL)  # the new index written, old packs all there
def delete(name):
    count[0] += 1
    if where == "delete" and count[0] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    real_delete(name)
repo.backend.put, repo.backend.delete = put, delete
prune(repo, PruneOptions(max_unused=0.0))
"""


@pytest.mark.parametrize("where", ["repack", "index", "delete"])
def test_sigkill_during_a_prune_repacking_bases(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, chained, where: str
) -> None:
    _, _, snaps = chained
    expected = {s.id: read_dump(repo, s) for s in snaps[2:]}
    assert _restarted_on(repo, snaps[DEPTH + 1], snaps[0])
    for s in snaps[:2]:
        repo.delete_snapshot(s.id)
    repo.close()
    proc = subprocess.run([sys.executable, "-c", _KILL_PRUNE, repo_path, where],
                          env=dict(os.environ), timeout=120)  # fmt: skip
    assert proc.returncode == -9
    with open_repo(repo_path) as again:
        report = check(again, CheckOptions(read_data=True, workers=1))
        assert report.ok, report.errors
        prune(again, PruneOptions(max_unused=0.0))
        assert check(again, CheckOptions(read_data=True, workers=1)).ok
        for s in snaps[2:]:
            assert read_dump(again, s) == expected[s.id]


def test_repair_index_rebuilds_bases_from_pack_headers(  # type: ignore[no-untyped-def]
    repo: Repository, repo_path: str, chained
) -> None:
    from casbackup.verify.repair import repair_index

    _, _, snaps = chained
    expected = read_dump(repo, snaps[DEPTH])
    for name in os.listdir(os.path.join(repo_path, "index")):
        os.remove(os.path.join(repo_path, "index", name))
    repo.close()
    with open_repo(repo_path) as again:
        result = repair_index(again)
        assert result.packs_from_headers > 0
        assert read_dump(again, snaps[DEPTH]) == expected
        assert check(again, CheckOptions(read_data=True, workers=1)).ok


def test_an_unchanged_dump_adds_only_the_root_tree(repo: Repository, tmp_path: Path) -> None:
    app, db = make_app(tmp_path, rows=ROWS)
    first = backup(repo, app, [db])
    again = backup(repo, app, [db])
    assert again.summary.bytes_stored < 2_000  # the root tree; the dump's folder dedups
    a, b = dump_node(repo, first), dump_node(repo, again)
    assert (a.content, a.mtime_ns) == (b.content, b.mtime_ns)
