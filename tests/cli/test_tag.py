"""`casbackup tag`: change a snapshot's tags after the backup (restic's `tag`).

Pinning a snapshot against retention (`keep_tags`) needs tags on snapshots that exist; a
record is content-addressed, so a tag change rewrites it (new id) and the snapshot keeps
its identity: its old id still finds it and its verification state follows it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from casbackup.errors import FormatError, UnsupportedFormat
from casbackup.maintenance.copy import CopyOptions, copy_snapshots
from casbackup.maintenance.tags import TagChange, rewrite_snapshot
from casbackup.repo.snapshot import Snapshot
from casbackup.testing.fixtures import open_repo, run_cli
from tests.cli.conftest import assert_one_error, init_repo


@pytest.fixture
def two(cli_repo: str, tmp_path: Path) -> tuple[str, list[str]]:
    src = tmp_path / "src"
    src.mkdir()
    ids = []
    for n in range(2):
        (src / "f.txt").write_text(f"version {n}\n")
        res = run_cli("-q", "backup", str(src), "--app", "web", repo=cli_repo)
        assert res.code == 0, res.err
        ids.append(res.out.strip())
    return cli_repo, ids


def _snaps(repo: str) -> list[dict]:  # type: ignore[type-arg]
    res = run_cli("--json", "snapshots", repo=repo)
    assert res.code == 0, res.err
    return json.loads(res.out)


def test_tags_change_and_the_old_id_still_finds_the_snapshot(two) -> None:  # type: ignore[no-untyped-def]
    repo, ids = two
    res = run_cli("tag", "--add", "release,audit", ids[0][:8], repo=repo)
    assert res.code == 0, res.err
    assert "tags release, audit" in res.out and "changed 1 snapshot" in res.out
    first = _snaps(repo)[0]
    assert first["tags"] == ["release", "audit"] and first["id"] != ids[0]
    assert first["original"] == ids[0] and first["revision"] == 1
    # The id from before the change (a job log, a note) still names it.
    res = run_cli("tag", "--remove", "audit", ids[0][:8], repo=repo)
    assert res.code == 0, res.err
    again = _snaps(repo)[0]
    assert again["tags"] == ["release"] and again["original"] == ids[0]
    assert again["revision"] == 2
    assert run_cli("-q", "ls", ids[0][:10], repo=repo).code == 0
    res = run_cli("tag", "--set", "", "latest", "--app", "web", repo=repo)
    assert res.code == 0, res.err
    assert [s["tags"] for s in _snaps(repo)] == [["release"], []]
    assert len(_snaps(repo)) == 2
    assert run_cli("check", "--read-data", repo=repo).code == 0


def test_dry_run_and_no_change_rewrite_nothing(two) -> None:  # type: ignore[no-untyped-def]
    repo, ids = two
    res = run_cli("tag", "--add", "x", "--dry-run", ids[0], repo=repo)
    assert res.code == 0 and "would change 1 snapshot" in res.out, res.err
    assert [s["id"] for s in _snaps(repo)] == ids
    res = run_cli("tag", "--remove", "nope", ids[1], repo=repo)
    assert res.code == 0 and "tags unchanged" in res.out, res.err
    assert [s["id"] for s in _snaps(repo)] == ids


def test_a_tag_pins_a_snapshot_against_retention(two) -> None:  # type: ignore[no-untyped-def]
    repo, ids = two
    assert run_cli("tag", "--add", "release", ids[0], repo=repo).code == 0
    res = run_cli("forget", "--keep-last", "1", "--keep-tag", "release", repo=repo)
    assert res.code == 0, res.err
    assert [s["tags"] for s in _snaps(repo)] == [["release"], []]


def test_verification_state_follows_a_tag_change(two) -> None:  # type: ignore[no-untyped-def]
    repo, ids = two
    res = run_cli("verify", ids[0], repo=repo)
    assert res.code == 0, res.err
    assert run_cli("tag", "--add", "release", ids[0], repo=repo).code == 0
    first = _snaps(repo)[0]
    assert first["verification"]["ok"] is True, first
    # and forget's "newest verified snapshot" rule still protects it
    res = run_cli("forget", "--keep-last", "1", repo=repo)
    assert res.code == 0, res.err
    assert len(_snaps(repo)) == 2 and "newest verified" in res.out


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        ((), 2, "--add, --remove or --set"),
        (("--set", "a", "--add", "b"), 2, "without --add and --remove"),
        (("--add", "bad\ttag"), 2, "is not usable"),
        (("--add", " padded"), 2, "is not usable"),
        (("--add", "x" * 101), 2, "is not usable"),
        # a byte that is not UTF-8 (a Latin-1 terminal): kept, it made every snapshot listing
        # of the web service fail to encode
        (("--add", "caf\udce9"), 2, "is not usable"),
    ],
)
def test_bad_requests_are_one_line_errors(two, args, code, fragment) -> None:  # type: ignore[no-untyped-def]
    repo, ids = two
    assert_one_error(run_cli("tag", *args, ids[0], repo=repo), code, fragment)
    assert [s["id"] for s in _snaps(repo)] == ids


def test_unknown_snapshot_changes_nothing(two) -> None:  # type: ignore[no-untyped-def]
    repo, ids = two
    assert_one_error(run_cli("tag", "--add", "x", ids[0], "ffffffff", repo=repo), 23, "ffffffff")
    assert [s["id"] for s in _snaps(repo)] == ids
    assert_one_error(run_cli("tag", "--add", "x", repo=repo), 2, "name the snapshots")


def test_backup_tags_are_checked_and_split_like_restic(cli_repo: str, tmp_path: Path) -> None:
    src = tmp_path / "s"
    src.mkdir()
    res = run_cli("backup", str(src), "--tag", "a\nb", repo=cli_repo)
    assert_one_error(res, 2, "is not usable")
    assert _snaps(cli_repo) == []
    res = run_cli("-q", "backup", str(src), "--tag", "a,b", repo=cli_repo)
    assert res.code == 0, res.err
    assert _snaps(cli_repo)[0]["tags"] == ["a", "b"]
    res = run_cli("--json", "snapshots", "--tag", "b,a", repo=cli_repo)
    assert len(json.loads(res.out)) == 1


def test_an_interrupted_tag_change_leaves_one_snapshot(two) -> None:  # type: ignore[no-untyped-def]
    """Killed between storing the new record and deleting the old: both are present."""
    repo_path, ids = two
    repo = open_repo(repo_path)
    with repo.locked(exclusive=True):
        old = repo.load_snapshot(ids[0])
        new = repo.save_snapshot(
            replace(old, tags=("release",), original=old.identity, revision=1, id="")
        )
    listed = _snaps(repo_path)
    assert [s["id"] for s in listed] == [new.id, ids[1]]
    res = run_cli("snapshots", repo=repo_path)
    assert f"{old.short_id} is an older record of snapshot {new.short_id}" in res.err
    res = run_cli("check", repo=repo_path)
    assert res.code == 0 and f"{old.short_id} is an older record" in res.err, res.err
    # The next tag change of it removes the left-over; the data was never at risk.
    res = run_cli("tag", "--add", "more", ids[0][:8], repo=repo_path)
    assert res.code == 0, res.err
    assert "removed left-over record" in res.out
    res = run_cli("snapshots", repo=repo_path)
    assert "older record" not in res.err
    assert [s["tags"] for s in _snaps(repo_path)] == [["release", "more"], []]
    assert run_cli("prune", repo=repo_path).code == 0
    assert run_cli("check", "--read-data", repo=repo_path).code == 0
    assert run_cli("-q", "restore", ids[0][:8], "--target", str(Path(repo_path).parent / "r"),
                   repo=repo_path).code == 0  # fmt: skip


def test_records_stay_version_1_until_rewritten(two) -> None:  # type: ignore[no-untyped-def]
    repo_path, ids = two
    snap = open_repo(repo_path).load_snapshot(ids[0])
    doc = json.loads(snap.encode())
    assert doc["version"] == 1 and "original" not in doc and "revision" not in doc
    rewritten = replace(snap, original=snap.id, revision=1)
    doc = json.loads(rewritten.encode())
    assert doc["version"] == 2 and doc["original"] == snap.id
    assert Snapshot.decode(rewritten.encode()).identity == snap.id


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"version": 3}, UnsupportedFormat),
        ({"version": True}, UnsupportedFormat),
        ({"version": 2, "original": None, "revision": 1}, FormatError),
        ({"version": 1, "original": "ab" * 32, "revision": 1}, FormatError),
        ({"version": 2}, FormatError),  # version 2 without original
        ({"version": 2, "original": "AB" * 32, "revision": 1}, FormatError),
        ({"version": 2, "original": "ab" * 32, "revision": 0}, FormatError),
        ({"version": 2, "original": "ab" * 32, "revision": True}, FormatError),
        ({"version": 1, "tags": "release"}, FormatError),
        ({"version": 1, "tags": [1]}, FormatError),
    ],
)
def test_bad_rewritten_records_are_refused(two, change, error) -> None:  # type: ignore[no-untyped-def]
    repo_path, ids = two
    doc = json.loads(open_repo(repo_path).load_snapshot(ids[0]).encode())
    doc.update(change)
    with pytest.raises(error):
        Snapshot.decode(json.dumps(doc).encode())


def test_copy_skips_a_snapshot_retagged_since_it_was_copied(two, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    repo_path, ids = two
    dst_path = init_repo(str(tmp_path / "dst"))
    src, dst = open_repo(repo_path), open_repo(dst_path)
    with src.locked(), dst.locked():
        first = copy_snapshots(src, dst, CopyOptions())
    assert len(first.copied) == 2
    with src.locked(exclusive=True):
        rewrite_snapshot(src, src.load_snapshot(ids[0]), ("release",))
    src, dst = open_repo(repo_path), open_repo(dst_path)
    with src.locked(), dst.locked():
        again = copy_snapshots(src, dst, CopyOptions())
    assert again.copied == [] and len(again.skipped) == 2
    copies = dst.list_snapshots()
    assert [s.original for s in copies] == [None, None]
    assert sorted(s.copied_from for s in copies) == sorted(ids)


def test_tag_change_rules() -> None:
    assert TagChange(add=("b", "a")).apply(("a", "c")) == ("a", "c", "b")
    assert TagChange(remove=("a",)).apply(("a", "c", "a")) == ("c",)
    assert TagChange(set_to=()).apply(("a",)) == ()
    assert TagChange(set_to=("x", "x")).apply(()) == ("x",)


def test_a_forgotten_snapshot_is_not_listed_again_from_an_older_record(two, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Found with the CLI: after a `tag` killed between its two writes, `forget latest`
    removed the snapshot and `snapshots` listed it again at once, under the older record
    the tag change left (with its old tags). Forgetting a snapshot deletes those too."""
    repo_path, ids = two
    repo = open_repo(repo_path)
    with repo.locked(exclusive=True):
        old = repo.load_snapshot(ids[1])
        repo.save_snapshot(
            replace(old, tags=("release",), original=old.identity, revision=1, id="")
        )
    repo.close()
    res = run_cli("forget", "latest", "--app", "web", repo=repo_path)
    assert res.code == 0, res.err
    assert [s["id"] for s in _snaps(repo_path)] == [ids[0]]
    # A retention policy's forget does the same.
    res = run_cli("-q", "backup", str(tmp_path / "src"), "--app", "web", repo=repo_path)
    assert res.code == 0, res.err
    third = res.out.strip()
    repo = open_repo(repo_path)
    with repo.locked(exclusive=True):
        first = repo.load_snapshot(ids[0])
        repo.save_snapshot(replace(first, tags=("x",), original=first.identity, revision=1, id=""))
    repo.close()
    res = run_cli("forget", "--app", "web", "--keep-tag", "none", repo=repo_path)
    assert res.code == 0, res.err
    assert [s["id"] for s in _snaps(repo_path)] == [third]
    res = run_cli("snapshots", repo=repo_path)
    assert "older record" not in res.err


def test_a_version_4_repository_is_migrated_before_tags_change(tmp_path: Path) -> None:
    """Records of version 2 go only into a version 5 repository: readers that do not know
    them refuse the whole repository (exit 21) instead of calling a snapshot damaged (and
    pointing at 'forget' for it, as the version 4 code's prune does)."""
    from casbackup.crypto.keyfile import WEAK_KDF
    from casbackup.repo.config import RepoConfig
    from casbackup.repo.repository import Repository
    from casbackup.store.local import LocalBackend
    from casbackup.testing.fixtures import PASSWORD, TEST_CONFIG_KW

    path = str(tmp_path / "v4")
    Repository.init(LocalBackend(path), PASSWORD.encode(), kdf=WEAK_KDF,
                    config=RepoConfig(version=4, **TEST_CONFIG_KW)).close()  # fmt: skip
    src = tmp_path / "s"
    src.mkdir()
    (src / "f").write_text("x")
    assert run_cli("-q", "backup", str(src), repo=path).code == 0
    assert run_cli("tag", "--add", "x", "latest", "--dry-run", repo=path).code == 0
    assert_one_error(run_cli("tag", "--add", "x", "latest", repo=path), 21, "casbackup migrate")
    assert run_cli("migrate", repo=path).code == 0
    assert run_cli("tag", "--add", "x", "latest", repo=path).code == 0
    assert _snaps(path)[0]["tags"] == ["x"]


def test_a_version_4_reader_refuses_a_version_5_repository(cli_repo: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from casbackup.errors import UnsupportedFormat
    from casbackup.repo import config as config_module

    monkeypatch.setattr(config_module, "FORMAT_VERSION", 4)
    with pytest.raises(UnsupportedFormat, match="upgrade casbackup"):
        open_repo(cli_repo)


def test_a_bad_ref_among_several_tags_none_of_them(two) -> None:  # type: ignore[no-untyped-def]
    """A snapshot this client forgot, put back by a rollback: refused, and the good ref
    given before it is not tagged either (it was, before the refusal)."""
    repo_path, ids = two
    record = Path(repo_path) / "snapshots" / ids[0]
    saved = record.read_bytes()
    assert run_cli("forget", ids[0], repo=repo_path).code == 0
    record.write_bytes(saved)  # the record is back: this client forgot it
    res = run_cli("tag", "--add", "y", ids[1], ids[0], repo=repo_path)
    assert res.code == 23 and "not among the repository's snapshots" in res.err, res.err
    assert [s["tags"] for s in _snaps(repo_path)][-1] == []  # ids[1] untouched
