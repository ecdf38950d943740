"""Hostile storage (issue 12, kinds 1 and 2): whoever can write to the repository folder
without the key can at most destroy data; never make casbackup follow a planted link,
delete or read outside the repository, hang on a FIFO or allocate a planted size."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from casbackup.errors import FormatError, NotFound, StorageError
from casbackup.maintenance.prune import PruneOptions, prune
from casbackup.store.local import LocalBackend
from casbackup.store.memory import MemoryBackend
from casbackup.store.names import ObjectRefused
from casbackup.testing.fixtures import make_repo, open_repo, run_cli
from casbackup.verify.check import CheckOptions, check
from tests.cli.conftest import init_repo

HEX = "0123456789abcdef" * 4
OLD = time.time() - 30 * 86400  # older than any margin prune keeps


def backed_up_repo(tmp_path: Path) -> str:
    repo = init_repo(str(tmp_path / "repo"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"hello " * 1000)
    res = run_cli("backup", str(src), repo=repo)
    assert res.code == 0, res.err
    return repo


def plant_the_issue_example(repo: str, tmp_path: Path) -> Path:
    """The example of issue 12: ``data/au -> /some/folder`` plus ``data/00/authorized_keys``."""
    outside = tmp_path / "some-folder"
    outside.mkdir()
    victim = outside / "authorized_keys"
    victim.write_text("ssh-ed25519 AAAA... admin\n")
    os.utime(victim, (OLD, OLD))
    os.symlink(outside, os.path.join(repo, "data", "au"))
    planted = Path(repo, "data", "00")
    planted.mkdir(exist_ok=True)
    (planted / "authorized_keys").write_text("bait")
    os.utime(planted / "authorized_keys", (OLD, OLD))
    return victim


def test_prune_never_deletes_through_a_planted_symlink(tmp_path: Path) -> None:
    repo = backed_up_repo(tmp_path)
    victim = plant_the_issue_example(repo, tmp_path)
    with open_repo(repo) as r:
        plan, _result = prune(r, PruneOptions(unindexed_margin=0))
        assert plan.unindexed == ()  # the bait is not a pack: never planned for deletion
    res = run_cli("prune", repo=repo)
    assert res.code == 0, res.err
    assert victim.read_text() == "ssh-ed25519 AAAA... admin\n"
    assert (Path(repo) / "data" / "00" / "authorized_keys").exists()  # odd: never deleted
    assert os.path.islink(Path(repo) / "data" / "au")
    assert "'data/00/authorized_keys'" in res.err and "skipped" in res.err  # warned, named


def test_check_reports_odd_entries_as_damage_and_fails(tmp_path: Path) -> None:
    repo = backed_up_repo(tmp_path)
    plant_the_issue_example(repo, tmp_path)
    os.mkfifo(os.path.join(repo, "locks", "ab" * 16))
    (Path(repo) / "README").write_text("stray file")
    os.symlink("/etc/passwd", os.path.join(repo, "snapshots", HEX))
    res = run_cli("check", repo=repo, timeout=60)
    assert res.code == 29, (res.code, res.err)
    for name in ("data/au", "data/00/authorized_keys", "locks/" + "ab" * 16, "README",
                 "snapshots/" + HEX):  # fmt: skip
        assert f"error: {name!r}" in res.err, (name, res.err)
    assert "skipped" not in res.err  # check names them as errors, not again as warnings
    with open_repo(repo) as r:
        report = check(r, CheckOptions())
    assert len(report.errors) == 5


def test_a_fifo_in_the_repository_never_blocks(tmp_path: Path) -> None:
    """A FIFO under a lock's name, and a symlink to one under a key's: every command that
    lists locks or keys would have blocked forever in open()."""
    repo = backed_up_repo(tmp_path)
    os.mkfifo(os.path.join(repo, "locks", "cd" * 16))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    os.symlink(fifo, os.path.join(repo, "keys", HEX))
    for args in (["snapshots"], ["unlock", "--remove-all"], ["key", "list"]):
        res = run_cli(*args, repo=repo, timeout=60)
        assert res.code == 0, (args, res.err)
    assert os.path.exists(os.path.join(repo, "locks", "cd" * 16))  # not a lock: left alone
    b = LocalBackend(repo)
    with pytest.raises(ObjectRefused, match="not a regular file"):
        b.get("locks/" + "cd" * 16)
    with pytest.raises(ObjectRefused):
        b.get("keys/" + HEX)
    with pytest.raises(ObjectRefused):
        b.delete("keys/" + HEX)
    assert fifo.exists()


def test_oversized_snapshot_is_named_and_the_others_listed(tmp_path: Path) -> None:
    repo = backed_up_repo(tmp_path)
    with open(os.path.join(repo, "snapshots", HEX), "wb") as f:
        f.truncate(16 * 1024 * 1024 + 1)  # sparse: one byte over the cap of a snapshot
    res = run_cli("snapshots", "--json", repo=repo)
    assert res.code == 0, res.err
    assert res.out.count('"tree"') == 1  # the real snapshot is listed
    assert f"snapshots/{HEX} is damaged" in res.err


def test_a_4_gib_sparse_snapshot_is_refused_before_reading(tmp_path: Path) -> None:
    """Under a 1 GiB address-space limit: reading the planted object whole would die."""
    root = tmp_path / "repo"
    (root / "snapshots").mkdir(parents=True)
    with open(root / "snapshots" / HEX, "wb") as f:
        f.truncate(4 << 30)
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from casbackup.errors import StorageError
        from casbackup.store.local import LocalBackend
        b = LocalBackend({str(root)!r})
        assert dict(b.list("snapshots/")) == {{"snapshots/{HEX}": 4 << 30}}
        try:
            b.get("snapshots/{HEX}")
        except StorageError as exc:
            print(exc)
            sys.exit(0)
        sys.exit(1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"more than the 16777216 a snapshot may have" in proc.stdout


@pytest.mark.parametrize("backend_kind", ["local", "memory"])
def test_only_names_of_the_format_are_accepted(tmp_path: Path, backend_kind: str) -> None:
    b = LocalBackend(str(tmp_path / "r")) if backend_kind == "local" else MemoryBackend()
    bad = ["data/au/authorized_keys", "data/00/" + HEX, "data/01", "snapshots/" + HEX.upper(),
           "snapshots/x", "locks/" + HEX, "keys/" + HEX[:32], "index/" + HEX + "/x",
           "config.bak", "../config", "snapshots/../config", ""]  # fmt: skip
    for name in bad:
        with pytest.raises(StorageError, match="invalid object name"):
            b.put(name, b"x")
        with pytest.raises(StorageError, match="invalid object name"):
            b.delete(name)
        with pytest.raises(StorageError, match="invalid object name"):
            b.get(name)
    good = ["config", "data/01/01" + HEX[2:], "index/" + HEX, "snapshots/" + HEX,
            "verifications/" + HEX, "checkstate/" + HEX, "keys/" + HEX, "locks/" + HEX[:32]]  # fmt: skip
    for name in good:
        b.put(name, b"x")
    assert sorted(n for n, _ in b.list("")) == sorted(good)
    b.close()


def test_memory_backend_reports_odd_names_like_the_local_one() -> None:
    b = MemoryBackend()
    b.put("snapshots/" + HEX, b"x")
    b.objects["snapshots/evil"] = b"y"
    assert dict(b.list("snapshots/")) == {"snapshots/" + HEX: 1}
    assert list(b.odd_entries()) == [("snapshots/evil", "is not a name the repository format uses")]
    assert "snapshots/evil" in b.skipped.take()[0]


def test_every_deleting_path_refuses_links(tmp_path: Path) -> None:
    """delete/remove_temp unlink only regular files in folders reached without a symlink."""
    root = tmp_path / "repo"
    b = LocalBackend(str(root))
    b.put("index/" + HEX, b"i")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / HEX).write_text("precious")
    (outside / (HEX + ".tmp-0123456789ab")).write_text("precious")
    os.symlink(outside, root / "snapshots")  # a whole folder replaced by a link
    with pytest.raises(ObjectRefused):
        b.delete("snapshots/" + HEX)
    with pytest.raises(ObjectRefused):
        b.remove_temp("snapshots/" + HEX + ".tmp-0123456789ab")
    with pytest.raises(ObjectRefused):
        b.get("snapshots/" + HEX)
    with pytest.raises(ObjectRefused):
        b.put("snapshots/" + HEX, b"overwrite")
    assert (outside / HEX).read_text() == "precious"
    assert list(b.list("snapshots/")) == [] and list(b.list_temp_files()) == []
    assert dict(b.odd_entries()) == {"snapshots": "is a symlink (never followed)"}
    os.symlink(outside / HEX, root / "index" / ("ab" * 32))  # an object replaced by a link
    with pytest.raises(ObjectRefused):
        b.delete("index/" + "ab" * 32)
    assert b.exists("index/" + "ab" * 32)  # something stands there: init must refuse
    with pytest.raises(NotFound):
        b.delete("index/" + "cd" * 32)
    assert (outside / HEX).read_text() == "precious"


def test_forget_and_key_remove_through_a_linked_folder_fail_safely(tmp_path: Path) -> None:
    repo = backed_up_repo(tmp_path)
    (tmp_path / "src" / "b.txt").write_bytes(b"second")
    assert run_cli("backup", str(tmp_path / "src"), repo=repo).code == 0
    with open_repo(repo) as r:
        r.add_key(b"second")
        snaps = sorted(s.id for s in r.list_snapshots())
    # Move the snapshots folder outside and leave a link: deleting must not follow it.
    outside = tmp_path / "moved"
    os.rename(os.path.join(repo, "snapshots"), outside)
    os.symlink(outside, os.path.join(repo, "snapshots"))
    res = run_cli("forget", "--keep-last", "1", repo=repo)
    assert res.code == 0 and "removed 0 snapshots" in res.out, res.err
    assert "skipped 'snapshots'" in res.err and "2 snapshots this client saw" in res.err
    assert sorted(os.listdir(outside)) == snaps
    keys = sorted(os.listdir(os.path.join(repo, "keys")))
    os.rename(os.path.join(repo, "keys"), tmp_path / "keys")
    os.symlink(tmp_path / "keys", os.path.join(repo, "keys"))
    res = run_cli("key", "remove", keys[0][:12], "--force", repo=repo)
    assert res.code != 0 and "Traceback" not in res.err
    assert sorted(os.listdir(tmp_path / "keys")) == keys


def test_repository_files_are_private(tmp_path: Path) -> None:
    with make_repo(str(tmp_path / "repo")) as r:
        r.flush()
    for dirpath, dirnames, filenames in os.walk(tmp_path / "repo"):
        for d in dirnames:
            assert os.stat(os.path.join(dirpath, d)).st_mode & 0o077 == 0, d
        for f in filenames:
            assert os.stat(os.path.join(dirpath, f)).st_mode & 0o077 == 0, f


def test_an_oversized_key_file_is_skipped_and_named(tmp_path: Path) -> None:
    repo = backed_up_repo(tmp_path)
    with open(os.path.join(repo, "keys", "0" * 64), "wb") as f:
        f.truncate(64 * 1024 + 1)  # sorts first; one byte over the cap of a key file
    res = run_cli("snapshots", repo=repo)
    assert res.code == 0, res.err
    res = run_cli("key", "list", "--json", repo=repo)
    assert res.code == 0, res.err
    planted = next(k for k in json.loads(res.out) if k["id"] == "0" * 64)
    assert planted["problem"] == f"{64 * 1024 + 1} bytes: not a key file"


def test_oversized_records_and_locks_do_not_fail_their_listings(tmp_path: Path) -> None:
    repo = backed_up_repo(tmp_path)
    for folder in ("verifications", "checkstate", "index"):
        os.makedirs(os.path.join(repo, folder), exist_ok=True)
        with open(os.path.join(repo, folder, "f" * 64), "wb") as f:
            f.truncate(70 * 1024 * 1024)  # over every cap but the pack's
    res = run_cli("snapshots", repo=repo)
    assert res.code == 0, res.err
    assert f"verifications/{'f' * 64} is damaged" in res.err, res.err
    res = run_cli("check", repo=repo)
    assert res.code == 29 and "index file ffffffffffff" in res.err, res.err
    with open(os.path.join(repo, "locks", "e" * 32), "wb") as f:
        f.truncate(1 << 20)
    res = run_cli("backup", str(tmp_path / "src"), repo=repo)
    assert res.code == 11 and "unreadable lock file" in res.err, res.err
    res = run_cli("unlock", "--remove-all", repo=repo)
    assert res.code == 0 and not os.path.exists(os.path.join(repo, "locks", "e" * 32))


def test_a_planted_pack_trailer_cannot_make_check_read_gigabytes(tmp_path: Path) -> None:
    """A sparse 2 GiB pack whose trailer claims a 1 GiB header: refused before fetching it."""
    import struct

    from casbackup.repo.pack import read_header

    root = tmp_path / "repo"
    name = "data/ab/" + "ab" * 32
    (root / "data" / "ab").mkdir(parents=True)
    with open(root / name, "wb") as f:
        f.truncate(2 << 30)
        f.seek((2 << 30) - 4)
        f.write(struct.pack("<I", 1 << 30))
    b = LocalBackend(str(root))
    asked: list[int] = []

    def get(n: str, offset: int, length: int) -> bytes:
        asked.append(length)
        return b.get(n, offset, length)

    with pytest.raises(FormatError, match="over the .* limit"):
        read_header(get, name, 2 << 30, opener=None)  # type: ignore[arg-type]
    assert max(asked) <= 64 * 1024


def test_a_config_that_is_not_a_regular_file_is_one_line_error(tmp_path: Path) -> None:
    repo = backed_up_repo(tmp_path)
    os.rename(os.path.join(repo, "config"), tmp_path / "config")
    os.symlink("/dev/zero", os.path.join(repo, "config"))
    res = run_cli("snapshots", repo=repo, timeout=60)
    assert res.code == 25, res.err
    assert res.err.strip().splitlines() == ["error: config is damaged: a symlink (never followed)"]


def test_prune_deletes_nothing_when_snapshots_are_behind_a_link(tmp_path: Path) -> None:
    """A snapshots folder moved and linked back (by a user or an attacker): listing skips it,
    so every pack would look unused. Prune must refuse instead of deleting them all."""
    repo = backed_up_repo(tmp_path)
    packs_before = sorted(p.name for p in Path(repo, "data").rglob("*") if p.is_file())
    os.rename(os.path.join(repo, "snapshots"), tmp_path / "snapshots")
    os.symlink(tmp_path / "snapshots", os.path.join(repo, "snapshots"))
    res = run_cli("prune", repo=repo)
    assert res.code == 22, res.err
    assert "'snapshots' in the repository is not a folder or object" in res.err
    assert sorted(p.name for p in Path(repo, "data").rglob("*") if p.is_file()) == packs_before
    Path(repo, "snapshots").unlink()
    Path(repo, "snapshots").mkdir()
    os.symlink(tmp_path / "snapshots" / os.listdir(tmp_path / "snapshots")[0],
               Path(repo, "snapshots", HEX))  # fmt: skip
    res = run_cli("prune", repo=repo)
    assert res.code == 22 and f"'snapshots/{HEX}'" in res.err, res.err
    assert sorted(p.name for p in Path(repo, "data").rglob("*") if p.is_file()) == packs_before


def test_planted_symlinks_under_locks_index_and_verifications(tmp_path: Path) -> None:
    """The same rules in every folder: a lock-shaped file behind a linked ``locks/`` (unlock,
    backup, prune), an index entry linked to a file outside (repair index), and a linked
    ``verifications/`` (verify writes its record there): nothing outside is read,
    written or deleted, and each command fails in one line or goes on."""
    repo = backed_up_repo(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    lock = outside / ("ab" * 16)
    lock.write_text("precious")
    os.utime(lock, (OLD, OLD))
    entry = outside / HEX
    entry.write_text("precious")
    os.rmdir(os.path.join(repo, "locks"))
    os.symlink(outside, os.path.join(repo, "locks"))
    os.symlink(entry, os.path.join(repo, "index", HEX))
    res = run_cli("unlock", "--remove-all", repo=repo)
    assert res.code == 0 and "skipped 'locks'" in res.err, res.err
    for args in (["backup", str(tmp_path / "src")], ["prune"]):
        res = run_cli(*args, repo=repo)
        assert res.code == 25 and "Traceback" not in res.err, (args, res.err)
        assert "a symlink or a file stands where a folder must be" in res.err, res.err
    os.unlink(os.path.join(repo, "locks"))
    os.mkdir(os.path.join(repo, "locks"), 0o700)
    res = run_cli("repair", "index", repo=repo)
    assert res.code == 0 and f"skipped 'index/{HEX}'" in res.err, res.err
    assert os.path.islink(os.path.join(repo, "index", HEX))
    os.makedirs(os.path.join(repo, "verifications"), exist_ok=True)
    os.rmdir(os.path.join(repo, "verifications"))
    os.symlink(outside, os.path.join(repo, "verifications"))
    res = run_cli("verify", "latest", repo=repo)
    assert res.code != 0 and "Traceback" not in res.err
    assert "verifications/" in res.err and "stands where a folder must be" in res.err, res.err
    assert sorted(p.name for p in outside.iterdir()) == sorted([lock.name, entry.name])
    assert lock.read_text() == "precious" and entry.read_text() == "precious"


def test_an_oversized_config_is_one_line_and_read_no_further(tmp_path: Path) -> None:
    repo = backed_up_repo(tmp_path)
    with open(os.path.join(repo, "config"), "ab") as f:
        f.truncate(4 << 30)  # sparse: reading it whole would take 4 GiB
    res = run_cli("snapshots", repo=repo, timeout=60)
    assert res.code == 25, res.err
    assert res.err.strip().splitlines() == [
        f"error: config is damaged: {4 << 30} bytes, more than the 65536 a config may have"
    ]
