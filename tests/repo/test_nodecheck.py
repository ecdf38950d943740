"""A file node that contradicts its content is damage everywhere (issue 12, kind 9)."""

from __future__ import annotations

import os
from dataclasses import replace

import blake3
import pytest

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.archiver.restore import RestoreOptions, restore
from casbackup.archiver.stream import ChunkReader
from casbackup.errors import IntegrityError
from casbackup.repo.ids import Kind
from casbackup.repo.nodecheck import EMPTY_HASH, file_node_problem
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot, now_utc
from casbackup.repo.tree import Node, NodeKind
from casbackup.testing.fixtures import PASSWORD, run_cli
from casbackup.verify.check import CheckOptions, check
from casbackup.verify.sandbox import VerifyOptions, run_verification
from casbackup.vfs import Vfs, snapshot_folder

HUGE = 2**64 - 1


def test_rule() -> None:
    ok = Node(b"f", NodeKind.FILE, size=3, content=(b"x" * 32,), content_hash=b"h" * 32)
    assert file_node_problem(ok) is None
    assert file_node_problem(ok, [3]) is None
    assert "chunks hold 4" in (file_node_problem(ok, [1, 3]) or "")
    assert "no content hash" in (file_node_problem(replace(ok, content_hash=b"")) or "")
    empty = Node(b"e", NodeKind.FILE, content_hash=EMPTY_HASH)
    assert file_node_problem(empty, []) is None
    assert "hash is not" in (file_node_problem(replace(empty, content_hash=b"h" * 32)) or "")
    forged = Node(b"f", NodeKind.FILE, size=HUGE)
    assert file_node_problem(forged) is not None
    assert file_node_problem(Node(b"d", NodeKind.DIR, subtree=b"s" * 32)) is None


def _forge(repo: Repository, nodes: list[Node]) -> Snapshot:
    """A snapshot of /srv holding ``nodes`` (someone with the key can write this)."""
    srv = repo.save_tree(sorted(nodes, key=lambda n: n.name))
    root = repo.save_tree([Node(b"srv", NodeKind.DIR, mode=0o755, subtree=srv)])
    when, ns = now_utc()
    snap = Snapshot(time=when, start_ns=ns, host="h", user="u", paths=("/srv",), tree=root.hex())
    return repo.save_snapshot(snap)


@pytest.fixture
def forged(repo: Repository, tmp_path) -> tuple[Repository, Snapshot]:  # type: ignore[no-untyped-def]
    """The issue's example (2^64-1 bytes, no chunks, no hash) beside a file whose size
    disagrees with its real chunks, and a sound file."""
    data = os.urandom(30_000)
    chunk, _added = repo.save_blob(Kind.DATA, data)
    digest = blake3.blake3(data).digest()
    nodes = [
        Node(b"good", NodeKind.FILE, size=len(data), content=(chunk,), content_hash=digest),
        Node(b"huge", NodeKind.FILE, size=HUGE),
        Node(b"longer", NodeKind.FILE, size=len(data) + 7, content=(chunk,), content_hash=digest),
    ]
    return repo, _forge(repo, nodes)


def test_check_names_each_contradicting_file(forged, repo_path: str) -> None:  # type: ignore[no-untyped-def]
    repo, snap = forged
    report = check(repo, CheckOptions())
    assert any("/srv/huge" in e and "no content hash" in e for e in report.errors)
    assert any("/srv/longer" in e and "chunks hold" in e for e in report.errors)
    assert not any("/srv/good" in e for e in report.errors)
    assert set(report.affected[snap.id]) == {"/srv/huge", "/srv/longer"}
    res = run_cli("check", repo=repo_path)
    assert res.code == 29 and "/srv/huge" in res.err


def test_restore_refuses_instead_of_an_empty_file(forged, tmp_path, repo_path: str) -> None:  # type: ignore[no-untyped-def]
    repo, snap = forged
    target = str(tmp_path / "out")
    result = restore(repo, snap, RestoreOptions(target=target))
    failed = " ".join(result.errors)
    assert "huge" in failed and "longer" in failed and "good" not in failed
    assert os.path.exists(os.path.join(target, "srv", "good"))
    assert not os.path.exists(os.path.join(target, "srv", "huge"))
    res = run_cli("restore", snap.id, "--target", str(tmp_path / "cli"), repo=repo_path)
    assert res.code != 0 and "huge" in res.err


def test_dump_refuses(forged, repo_path: str) -> None:  # type: ignore[no-untyped-def]
    _repo, snap = forged
    for name in ("huge", "longer"):
        res = run_cli("dump", f"{snap.id}:/srv/{name}", repo=repo_path)
        assert res.code == 22 and res.out == "", (name, res.code, res.err)
        assert f"/srv/{name}" in res.err
    assert run_cli("dump", f"{snap.id}:/srv/good", repo=repo_path).code == 0


def test_chunk_reader_refuses(forged) -> None:  # type: ignore[no-untyped-def]
    repo, snap = forged
    node = repo.find_node(snap.root, "/srv/huge")
    with pytest.raises(IntegrityError, match="no content hash"):
        ChunkReader.for_node(repo, node, name="/srv/huge")


def test_file_system_view_refuses(forged) -> None:  # type: ignore[no-untyped-def]
    repo, snap = forged
    vfs = Vfs(repo)
    folder = f"/{snap.host}/{snapshot_folder(snap)}/srv"
    for name in ("huge", "longer"):
        with pytest.raises(IntegrityError):
            vfs.read(f"{folder}/{name}", 0, 4096)
    assert len(vfs.read(f"{folder}/good", 0, 100)) == 100


def test_verify_flags_it(forged) -> None:  # type: ignore[no-untyped-def]
    repo, snap = forged
    result = run_verification(repo, snap, VerifyOptions())
    assert not result.record.ok
    paths = {f.path for f in result.record.failures}
    assert {"/srv/huge", "/srv/longer"} <= paths, result.record.failures


def test_real_backups_pass_the_rule(repo: Repository, tmp_path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    src.mkdir()
    (src / "empty").write_bytes(b"")
    (src / "big").write_bytes(os.urandom(300_000))
    (src / "small").write_bytes(b"x")
    snap = run_backup(repo, BackupOptions(paths=(str(src),))).snapshot
    assert snap is not None
    report = check(repo, CheckOptions())
    assert report.ok, report.errors


def test_copy_refuses_instead_of_spreading_it(forged, tmp_path, repo_path: str) -> None:  # type: ignore[no-untyped-def]
    """copy wrote the forged node into the destination unchanged, exit 0."""
    from casbackup.testing.fixtures import make_repo

    repo, snap = forged
    repo.close()
    dst = str(tmp_path / "dst")
    make_repo(dst).close()
    res = run_cli("copy", "--from-repo", repo_path, repo=dst,
                  env={"CASBACKUP_FROM_PASSWORD": PASSWORD})  # fmt: skip
    assert res.code == 22, (res.code, res.err)
    assert f"copying snapshot {snap.short_id}" in res.err and "'huge'" in res.err, res.err
    assert run_cli("snapshots", "--json", repo=dst).out.strip() == "[]"
