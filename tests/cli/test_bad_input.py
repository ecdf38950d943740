"""Bad input through the real CLI: exact exit codes, one line 'error: ...', never a traceback."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.testing.fixtures import CliResult, open_repo, run_cli
from tests.cli.conftest import CLI, assert_one_error


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    root.mkdir()
    (root / "a.txt").write_text("a\n")
    (root / "b.txt").write_text("b\n")
    return root


@pytest.fixture
def backed_up(cli_repo: str, src: Path) -> tuple[str, str]:
    res = run_cli("-q", "backup", str(src), repo=cli_repo)
    assert res.code == 0, res.err
    return cli_repo, res.out.strip()


# ---------------------------------------------------------------------- opening
def test_wrong_passphrase(backed_up) -> None:  # type: ignore[no-untyped-def]
    repo, _ = backed_up
    res = run_cli("snapshots", repo=repo, env={"CASBACKUP_PASSWORD": "not it"})
    assert_one_error(res, 12, "wrong passphrase")
    # An empty CASBACKUP_PASSWORD counts as unset (as restic does), so it is 'no passphrase'.
    res = run_cli("snapshots", repo=repo, env={"CASBACKUP_PASSWORD": ""})
    assert_one_error(res, 2, "no passphrase")


def test_no_repository(tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = run_cli("snapshots", repo=str(tmp_path / "nothing-here"))
    assert_one_error(res, 10, "no repository at", "casbackup init")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("not a repository")
    res = run_cli("backup", str(tmp_path), repo=str(tmp_path / "plain"))
    assert_one_error(res, 10, "no repository at")
    res = run_cli("snapshots")  # no -r and no CASBACKUP_REPO
    assert_one_error(res, 2, "no repository given")


def test_init_refuses_existing_repository_and_nonempty_folder(backed_up, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, _ = backed_up
    assert_one_error(run_cli("init", "--insecure-test-kdf", repo=repo), 20, "already exists")
    other = tmp_path / "full-of-things"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    assert_one_error(run_cli("init", "--insecure-test-kdf", repo=str(other)), 20, "not empty")
    assert (other / "precious.txt").read_text() == "keep me"
    # Refused before the passphrase is asked for: an unreadable source must not mask it.
    no_pass = ("--password-file", str(tmp_path / "no-such-pass"))
    assert_one_error(run_cli("init", *no_pass, repo=repo), 20, "already exists")
    assert_one_error(run_cli("init", *no_pass, repo=str(other)), 20, "not empty")


def test_empty_passphrase_is_refused_by_init(tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = run_cli(
        "init", "--insecure-test-kdf", repo=str(tmp_path / "r"), env={"CASBACKUP_PASSWORD": ""}
    )
    assert_one_error(res, 2, "no passphrase")
    assert not (tmp_path / "r" / "config").exists()
    empty = tmp_path / "empty-passphrase"
    empty.write_text("\n")
    res = run_cli(
        "init",
        "--insecure-test-kdf",
        "--password-file",
        str(empty),
        repo=str(tmp_path / "r"),
        env={"CASBACKUP_PASSWORD": ""},
    )
    assert_one_error(res, 2, "empty passphrase")
    assert not (tmp_path / "r" / "config").exists()


def test_newer_format_version(backed_up) -> None:  # type: ignore[no-untyped-def]
    repo, _ = backed_up
    config = Path(repo) / "config"
    doc = json.loads(config.read_text())
    doc["version"] = 99
    config.write_text(json.dumps(doc))
    res = run_cli("snapshots", repo=repo)
    assert_one_error(res, 21, "version 99", "upgrade casbackup")


def test_damaged_config(backed_up) -> None:  # type: ignore[no-untyped-def]
    repo, _ = backed_up
    (Path(repo) / "config").write_text("{ not json")
    res = run_cli("snapshots", repo=repo)
    assert res.code != 0
    assert_one_error(res, res.code, "config")


def test_locked_repository(backed_up, src) -> None:  # type: ignore[no-untyped-def]
    repo, _ = backed_up
    with open_repo(repo) as r, r.locked(exclusive=True, command="prune"):
        res = run_cli("backup", str(src), repo=repo)
        assert_one_error(res, 11, "locked", "exclusive lock", "prune", "casbackup unlock")
        assert_one_error(run_cli("check", repo=repo), 11, "locked")
    assert run_cli("backup", str(src), repo=repo).code == 0  # released


# ---------------------------------------------------------------------- sources
def test_missing_source_path(cli_repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = run_cli("backup", str(tmp_path / "no-such-folder"), repo=cli_repo)
    assert_one_error(res, 23, "no-such-folder", "does not exist")
    assert run_cli("--json", "snapshots", repo=cli_repo).out.strip() == "[]"
    assert_one_error(run_cli("backup", repo=cli_repo), 2, "nothing to back up")


def _drop_dac_capabilities() -> None:
    """In the child: stay root but lose CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH, so mode 000 holds.

    Dropped from the bounding set: root regains every capability in it on exec.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    pr_capbset_drop = 24
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(pr_capbset_drop, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _run_unprivileged(*args: str, repo: str) -> CliResult:
    preexec = _drop_dac_capabilities if os.geteuid() == 0 else None
    proc = subprocess.run(
        [*CLI, "-r", repo, *args], capture_output=True, env=dict(os.environ), preexec_fn=preexec,
        timeout=120,
    )  # fmt: skip
    return CliResult(proc.returncode, proc.stdout.decode(), proc.stderr.decode())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="capabilities are Linux's")
def test_unreadable_sources_exit_3_and_the_snapshot_is_saved(cli_repo, src, tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret = src / "secret.txt"
    secret.write_text("no one may read this")
    secret.chmod(0o000)
    locked_dir = src / "locked"
    locked_dir.mkdir()
    (locked_dir / "inside.txt").write_text("hidden")
    locked_dir.chmod(0o000)
    try:
        res = _run_unprivileged("backup", str(src), repo=cli_repo)
    finally:
        locked_dir.chmod(0o755)
    assert res.code == 3, res.err
    assert "Traceback" not in res.err
    lines = res.err.strip().splitlines()
    assert lines[-1] == "error: snapshot saved, but 2 files or folders could not be read"
    warnings = [line for line in lines[:-1] if line.startswith("warning: ")]
    assert any(f"{secret}: Permission denied" in w for w in warnings), lines
    assert any(f"{locked_dir}: Permission denied" in w for w in warnings), lines
    assert all(line.startswith(("warning: ", "no parent")) for line in lines[:-1]), lines
    snaps = json.loads(run_cli("--json", "snapshots", repo=cli_repo).out)
    assert len(snaps) == 1
    assert snaps[0]["summary"]["errors"] == 2 and len(snaps[0]["errors"]) == 2
    res = run_cli("restore", f"latest:{src}", "--target", str(tmp_path / "out"), repo=cli_repo)
    assert res.code == 0, res.err
    assert (tmp_path / "out" / "a.txt").read_text() == "a\n"
    assert not (tmp_path / "out" / "secret.txt").exists()


# ---------------------------------------------------------------------- restore and ids
def test_restore_into_existing_files(backed_up, src, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, snap = backed_up
    target = tmp_path / "target"
    target.mkdir()
    (target / "a.txt").write_text("mine")
    res = run_cli("restore", f"{snap}:{src}", "--target", str(target), repo=repo)
    assert_one_error(res, 26, "a.txt exists in the target", "--overwrite")
    assert (target / "a.txt").read_text() == "mine"
    res = run_cli("restore", f"{snap}:{src}", "--target", str(target), "--overwrite", repo=repo)
    assert res.code == 0, res.err
    assert (target / "a.txt").read_text() == "a\n"


def test_unknown_and_malformed_snapshot_ids(backed_up, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, snap = backed_up
    unknown = "0123456789abcdef"
    unknown = unknown if not snap.startswith(unknown[:4]) else "fedcba9876543210"
    target = str(tmp_path / "t")
    assert_one_error(run_cli("restore", unknown, "-t", target, repo=repo), 23, "no snapshot")
    assert_one_error(run_cli("ls", f"{unknown[:6]}:/x", repo=repo), 23, "no snapshot")
    assert_one_error(
        run_cli("restore", "not-hex", "-t", target, repo=repo), 23, "not a snapshot id"
    )
    res = run_cli("restore", f"{snap}:/no/such/path", "-t", target, repo=repo)
    assert_one_error(res, 23, "/no does not exist in the snapshot")
    res = run_cli("restore", "latest", "--app", "nobody", "-t", target, repo=repo)
    assert_one_error(res, 23, "application 'nobody'")


def test_ambiguous_prefix(backed_up, src, tmp_path) -> None:  # type: ignore[no-untyped-def]
    repo, _ = backed_up
    # Seventeen snapshots: at least two share a first hex digit (pigeonhole).
    with open_repo(repo) as r:
        for i in range(16):
            run_backup(r, BackupOptions(paths=(str(src),), type="incremental", tags=(str(i),)))
        ids = [s.id for s in r.list_snapshots()]
    first = [i[0] for i in ids]
    shared = next(c for c in first if first.count(c) > 1)
    res = run_cli("restore", shared, "-t", str(tmp_path / "t"), repo=repo)
    assert_one_error(res, 24, f"'{shared}' matches", "more digits")
    assert run_cli("ls", ids[0][:12], repo=repo).code == 0
