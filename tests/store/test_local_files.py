"""Local files and children (issue 12, kind 8): private modes, exclusive temp names, capped
secrets, a password command without a shell, and children without casbackup's secrets."""

from __future__ import annotations

import json
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from casbackup.engines.base import DatabaseSpec
from casbackup.engines.process import child_env, run_tool
from casbackup.recovery.report import write_report
from casbackup.repo.indexcache import cache_root
from casbackup.testing.fixtures import PASSWORD, make_repo, run_cli
from tests.cli.conftest import assert_one_error, init_repo


def assert_private(top: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [*dirnames, *filenames]:
            mode = stat.S_IMODE(os.lstat(os.path.join(dirpath, name)).st_mode)
            assert mode & 0o077 == 0, (os.path.join(dirpath, name), oct(mode))


def test_index_cache_is_private_and_old_caches_are_tightened(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        root = Path(cache_root())
        (root / "stale").mkdir(parents=True, mode=0o755)  # left by an older version
        os.chmod(root, 0o755)
        with make_repo(str(tmp_path / "repo")) as repo:
            repo.cache.contains(b"\0" * 32)  # opens (creates) the LMDB cache
            cache_dir = root / repo.config.id / "index"
        assert (cache_dir / "data.mdb").exists()
        assert_private(root / repo.config.id)
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o700
        os.chmod(cache_dir / "data.mdb", 0o644)  # an older version's cache file
        with make_repo(str(tmp_path / "repo2")):
            pass
        from casbackup.testing.fixtures import open_repo

        with open_repo(str(tmp_path / "repo")) as repo:
            repo.cache.contains(b"\0" * 32)
        assert stat.S_IMODE(os.stat(cache_dir / "data.mdb").st_mode) == 0o600
    finally:
        os.umask(old)


def test_recover_report_never_follows_a_planted_temp_name(tmp_path: Path) -> None:
    """The issue's example: ``<file>.json.tmp`` planted as a symlink to a file of the victim."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    out = tmp_path / "reports"
    out.mkdir()
    os.symlink(victim, out / "report.json.tmp")
    os.symlink(victim, out / "report.md.tmp")
    doc = {
        "app": "web", "ok": True, "target": "/srv/web", "started": "2026-11-30T00:00:00Z",
        "duration_s": 1.0, "host": "h", "files": [], "databases": [], "errors": [],
        "warnings": [], "recheck": {"files": 0, "bytes": 0, "problems": []},
        "snapshot": {"id": "ab" * 32, "time": "t", "host": "h", "type": "full"},
    }  # fmt: skip
    json_path, md_path = write_report(doc, str(out / "report"))
    assert victim.read_text() == "precious"
    assert json.loads(Path(json_path).read_text())["app"] == doc["app"]
    for path in (json_path, md_path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # A planted final name is replaced (the link itself), never written through.
    os.unlink(json_path)
    os.symlink(victim, json_path)
    write_report(doc, str(out / "report"))
    assert victim.read_text() == "precious" and not os.path.islink(json_path)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["report.json", "report.md", "report.json.tmp", "report.md.tmp"]
    )


def test_password_file_on_dev_zero_fails_fast_with_one_line(tmp_path: Path) -> None:
    repo = init_repo(str(tmp_path / "repo"))
    started = time.monotonic()
    res = run_cli("snapshots", "--password-file", "/dev/zero", repo=repo, timeout=60)
    assert_one_error(res, 2, "password file /dev/zero holds more than 64 KiB")
    assert time.monotonic() - started < 30
    big = tmp_path / "big"
    big.write_bytes(b"x" * (64 * 1024 + 1))
    assert_one_error(run_cli("snapshots", "--password-file", str(big), repo=repo), 2, "64 KiB")
    ok = tmp_path / "ok"
    ok.write_text(PASSWORD + "\n")
    assert run_cli("snapshots", "--password-file", str(ok), repo=repo).code == 0


@pytest.mark.parametrize("command", [("key", "add"), ("key", "passwd")])
def test_new_password_file_on_dev_zero_fails_fast(tmp_path: Path, command: tuple[str, str]) -> None:
    """``--new-password-file /dev/zero`` was read whole: the command grew until the OOM
    killer stopped it (exit 137)."""
    repo = init_repo(str(tmp_path / "repo"))
    res = run_cli(*command, "--new-password-file", "/dev/zero", repo=repo, timeout=60)
    assert_one_error(res, 2, "password file /dev/zero holds more than 64 KiB")
    ok = tmp_path / "new"
    ok.write_text("a new passphrase\n")
    assert run_cli("key", "add", "--new-password-file", str(ok), repo=repo).code == 0
    res = run_cli("snapshots", repo=repo, env={"CASBACKUP_PASSWORD": "a new passphrase"})
    assert res.code == 0, res.err


def _password_script(tmp_path: Path) -> Path:
    script = tmp_path / "secret.py"
    script.write_text(
        "import json, os, sys\n"
        f"open({str(tmp_path / 'seen.json')!r}, 'w').write("
        "json.dumps({'argv': sys.argv[1:], 'env': sorted(os.environ)}))\n"
        f"print({PASSWORD!r})\n"
    )
    return script


def test_password_command_runs_without_a_shell_and_without_our_secrets(tmp_path: Path) -> None:
    repo = init_repo(str(tmp_path / "repo"))
    script = _password_script(tmp_path)
    marker = tmp_path / "marker"
    # Through a shell, '>' would redirect (the passphrase lost, a file made) and '$(...)'
    # would run; without one they are plain words handed to the program.
    command = f"{sys.executable} {script} '$(touch {marker})' > {marker}"
    res = run_cli("snapshots", "--password-command", command, repo=repo,
                  env={"CASBACKUP_PASSWORD": "not this one", "CASBACKUP_OTHER_SECRET": "x",
                       "KEEP_ME": "1"})  # fmt: skip
    assert res.code == 0, res.err
    assert not marker.exists()
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["argv"] == [f"$(touch {marker})", ">", str(marker)]
    assert not [k for k in seen["env"] if k.startswith("CASBACKUP_")]
    assert "KEEP_ME" in seen["env"] and "PATH" in seen["env"]


def test_password_command_output_is_capped(tmp_path: Path) -> None:
    repo = init_repo(str(tmp_path / "repo"))
    res = run_cli("snapshots", "--password-command", "cat /dev/zero", repo=repo, timeout=60)
    assert_one_error(res, 2, "password command printed more than 64 KiB")
    res = run_cli("snapshots", "--password-command", "'unclosed", repo=repo)
    assert_one_error(res, 2, "cannot be split into words")


def test_database_tools_never_see_casbackup_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASBACKUP_PASSWORD", "repo secret")
    monkeypatch.setenv("CASBACKUP_PASSWORD_FILE", "/etc/secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "cloud secret")
    monkeypatch.setenv("PGSSLMODE", "require")
    env = child_env({"PGPASSWORD": "db"})
    assert not [k for k in env if k.startswith("CASBACKUP_")]
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert env["PGSSLMODE"] == "require" and env["PGPASSWORD"] == "db"
    # A real child started the way the engines start pg_dump/psql/mysql.
    out = run_tool(
        [sys.executable, "-c", "import os, json; print(json.dumps(dict(os.environ)))"],
        what="env probe",
    )
    seen = json.loads(out)
    assert "CASBACKUP_PASSWORD" not in seen and "AWS_SECRET_ACCESS_KEY" not in seen
    assert seen["PATH"] == os.environ["PATH"]


def test_database_password_file_is_capped(tmp_path: Path) -> None:
    from casbackup.engines.base import resolve_password
    from casbackup.errors import DatabaseError

    spec = DatabaseSpec(name="db", engine="postgresql", password_file="/dev/zero")
    with pytest.raises(DatabaseError, match="holds more than 64 KiB"):
        resolve_password(spec)
    binary = tmp_path / "pw"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(DatabaseError, match="not UTF-8"):
        resolve_password(DatabaseSpec(name="db", engine="postgresql", password_file=str(binary)))


def test_blob_filter_file_is_private(tmp_path: Path) -> None:
    from casbackup.repo.bloom import BlobFilter

    old = os.umask(0o022)
    try:
        f = BlobFilter.create(str(tmp_path / "blob-filter"), 100)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "blob-filter").st_mode) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["blob-filter"]
    del f
