"""`apps`, `config check`, `backup --app/--all` from the config, and `db restore` (SQLite)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from casbackup.testing.fixtures import PASSWORD, CliResult, run_cli


def make_db(path: Path, rows: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany(
        "INSERT INTO notes (body) VALUES (?)", [(f"note {i} " * 30,) for i in range(rows)]
    )
    conn.commit()
    conn.close()


CONFIG = """
[repository]
location = "repo"
password_env = "NOTES_REPO_PW"

[[applications]]
name = "notes"
description = "Notes app"
sources = ["app"]
excludes = ["*.sqlite3", "*.log"]
default_backup_type = "full"

[applications.verification]
required_files = ["main.py"]

[[applications.databases]]
name = "main"
engine = "sqlite"
path = "app/notes.sqlite3"

[[applications]]
name = "wiki"
sources = ["wiki"]
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('notes')\n")
    (tmp_path / "app" / "debug.log").write_text("noise\n")
    (tmp_path / "wiki").mkdir()
    (tmp_path / "wiki" / "index.md").write_text("# wiki\n")
    make_db(tmp_path / "app" / "notes.sqlite3", 2000)
    (tmp_path / "casbackup.toml").write_text(CONFIG)
    assert run_cli("init", "--insecure-test-kdf", repo=str(tmp_path / "repo")).code == 0
    return tmp_path


def cli(site: Path, *args: str, **env: str) -> CliResult:
    """Repository and password come from the config: no -r, no CASBACKUP_PASSWORD."""
    full = {"CASBACKUP_CONFIG": str(site / "casbackup.toml"), "NOTES_REPO_PW": PASSWORD, **env}
    return run_cli(*args, env=full)


@pytest.fixture(autouse=True)
def _no_env_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CASBACKUP_PASSWORD", raising=False)


def test_config_check_shows_resolved_config_with_secrets_masked(site: Path) -> None:
    out = cli(site, "config", "check")
    assert out.code == 0, out.err
    assert f"repository: {site / 'repo'}" in out.out
    assert "password: environment variable NOTES_REPO_PW (set)" in out.out
    assert f"database main (sqlite): {site / 'app' / 'notes.sqlite3'}" in out.out
    assert "config OK: 2 applications" in out.out
    doc = json.loads(cli(site, "--json", "config", "check").out)
    assert doc["repository"]["password"] == {"env": "NOTES_REPO_PW", "present": True}
    assert PASSWORD not in json.dumps(doc)


def test_bad_config_exits_2_with_the_precise_message(site: Path) -> None:
    (site / "casbackup.toml").write_text(
        CONFIG.replace('default_backup_type = "full"', 'default_backup_type = "weekly"')
    )
    out = cli(site, "config", "check")
    assert out.code == 2
    assert out.err.startswith(
        f"error: {site / 'casbackup.toml'}: applications[0].default_backup_type"
    )
    assert len(out.err.strip().splitlines()) == 1
    backup = cli(site, "backup", "--app", "notes")
    assert backup.code == 2 and "default_backup_type" in backup.err
    missing = run_cli("config", "check", env={"CASBACKUP_CONFIG": str(site / "nope.toml")})
    assert missing.code == 2 and "does not exist" in missing.err


def test_no_config_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out = run_cli("config", "check")
    assert out.code == 2 and "no config file found" in out.err


def test_backup_app_from_config_and_apps_listing(site: Path) -> None:
    out = cli(site, "--json", "apps")
    assert out.code == 0, out.err
    rows = {r["name"]: r for r in json.loads(out.out)}
    assert rows["notes"]["last_snapshot"] is None and rows["notes"]["databases"] == ["main"]

    out = cli(site, "backup", "--app", "notes")
    assert out.code == 0, out.err
    assert "Database main: sqlite" in out.out and "2000 rows" in out.out
    assert "snapshot" in out.out and "of notes saved (full)" in out.out  # the app's default type
    snaps = json.loads(cli(site, "--json", "snapshots").out)
    (snap,) = snaps
    assert snap["app"] == "notes" and snap["databases"][0]["row_counts"] == {"notes": 2000}
    listing = cli(site, "ls", "latest").out
    assert "/.databases/main.sqlite" in listing and "debug.log" not in listing
    assert "notes.sqlite3" not in listing  # the live file is excluded; the dump is consistent

    out = cli(site, "--json", "apps")
    rows = {r["name"]: r for r in json.loads(out.out)}
    assert rows["notes"]["last_snapshot"]["id"] == snap["id"]
    assert rows["notes"]["last_snapshot"]["type"] == "full"
    assert rows["notes"]["verification"] in ("unknown", "not verified")
    assert rows["wiki"]["last_snapshot"] is None and rows["wiki"]["verification"] is None
    text = cli(site, "apps").out
    assert "never backed up" in text and snap["short_id"] in text


def test_app_errors(site: Path) -> None:
    out = cli(site, "backup", "--app", "nope")
    assert out.code == 2 and "no application 'nope' in the config (known: notes, wiki)" in out.err
    out = cli(site, "backup", "--all", str(site / "app"))
    assert out.code == 2 and "--all" in out.err
    out = cli(site, "backup")
    assert out.code == 2 and "nothing to back up" in out.err


def test_explicit_paths_with_app_need_no_config(site: Path, tmp_path: Path) -> None:
    env = {"CASBACKUP_PASSWORD": PASSWORD}
    out = run_cli("backup", "--app", "adhoc", str(site / "wiki"), repo=str(site / "repo"), env=env)
    assert out.code == 0, out.err
    snaps = json.loads(run_cli("--json", "snapshots", repo=str(site / "repo"), env=env).out)
    assert [s["app"] for s in snaps] == ["adhoc"] and snaps[0]["databases"] == []


def test_backup_all_and_shrink_warning(site: Path) -> None:
    out = cli(site, "backup", "--all")
    assert out.code == 0, out.err
    assert "== notes" in out.out and "== wiki" in out.out
    db = site / "app" / "notes.sqlite3"
    db.unlink()
    make_db(db, 10)
    out = cli(site, "--json", "backup", "--app", "notes")
    assert out.code == 0, out.err  # a warning, not a failure
    summary = json.loads(out.out.strip().splitlines()[-1])
    (warning,) = summary["dump_warnings"]
    assert "database 'main'" in warning and "less than half" in warning
    human = cli(site, "backup", "--app", "notes")
    assert human.code == 0 and "less than half" not in human.err  # compared with the last dump


def test_db_restore_sqlite(site: Path, tmp_path: Path) -> None:
    assert cli(site, "backup", "--app", "notes").code == 0
    out = cli(site, "db", "restore", "latest", "--app", "notes", "--database", "main")
    assert out.code == 27 and "already exists and is not empty" in out.err
    target = tmp_path / "restored.sqlite3"
    out = cli(
        site,
        "db",
        "restore",
        "latest",
        "--app",
        "notes",
        "--database",
        "main",
        "--into",
        str(target),
    )
    assert out.code == 0, out.err
    assert "1 table, 2000 rows" in out.out
    conn = sqlite3.connect(target)
    assert conn.execute("SELECT count(*) FROM notes").fetchone()[0] == 2000
    conn.close()
    (site / "app" / "notes.sqlite3").unlink()
    out = cli(site, "--json", "db", "restore", "latest", "--app", "notes", "--database", "main")
    assert out.code == 0, out.err
    doc = json.loads(out.out)
    assert doc["row_counts_match"] and doc["row_counts"] == {"notes": 2000}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--database", "other"], "has no database 'other' (it has: main)"),
        (["--into", "postgresql://u@h/db"], "restored into a file path"),
    ],
)
def test_db_restore_refusals(site: Path, args: list[str], message: str) -> None:
    assert cli(site, "backup", "--app", "notes").code == 0
    base = ["db", "restore", "latest", "--app", "notes"]
    if "--database" not in args:
        base += ["--database", "main"]
    out = cli(site, *base, *args)
    assert out.code in (2, 23) and message in out.err, out.err
    assert len(out.err.strip().splitlines()) == 1


def test_db_restore_url_forms() -> None:
    from casbackup.cli.cmd_db import _target_spec
    from casbackup.engines.base import DatabaseSpec
    from casbackup.errors import UsageError

    base = DatabaseSpec("main", "postgresql", host="db1", port=5433, user="app", password_env="PW")
    spec = _target_spec("postgresql://bob@10.0.0.1:6543/my%20db%22x", base, "main", "postgresql")
    assert (spec.host, spec.port, spec.user, spec.database) == ("10.0.0.1", 6543, "bob", 'my db"x')
    assert spec.password_env == "PW"
    spec = _target_spec("postgres:///other", base, "main", "postgresql")
    assert (spec.host, spec.port, spec.user, spec.database) == ("db1", 5433, "app", "other")
    for url, text in [
        ("mysql://u:secret@h/db", "must not contain a password"),
        ("mysql://u@h/db", "cannot be loaded into mysql"),
        ("postgresql://u@h/", "name one database"),
        ("postgresql://u@h:99999/db", "bad port"),
    ]:
        with pytest.raises(UsageError, match=text):
            _target_spec(url, base, "main", "postgresql")


def test_db_restore_url_query_is_applied_or_refused() -> None:
    """`--into URL?sslmode=require` was ignored without a word, and the restore went over a
    connection without TLS (found on a server without SSL: exit 0); `?password_env=` (the
    form recover's --db-into takes) was ignored too. Known options apply, over the
    config's; a password or an unknown parameter is refused."""
    from casbackup.cli.cmd_db import _target_spec
    from casbackup.engines.base import DatabaseSpec
    from casbackup.errors import UsageError

    base = DatabaseSpec("main", "postgresql", host="db1", user="app", password_env="PW",
                        options={"sslmode": "prefer", "globals": "false"})  # fmt: skip
    url = "postgresql://u@h/db?sslmode=require&password_env=OTHER"
    spec = _target_spec(url, base, "main", "postgresql")
    assert spec.options == {"sslmode": "require", "globals": "false"}
    assert (spec.password_env, spec.password_file) == ("OTHER", None)
    spec = _target_spec("mysql://u@h/db?password_file=/run/pw&ssl_mode=REQUIRED",
                        DatabaseSpec("main", "mysql"), "main", "mysql")  # fmt: skip
    assert spec.options == {"ssl_mode": "REQUIRED"} and spec.password_file == "/run/pw"
    for bad, text in [("password=secret", "never put a password"),
                      ("sslmod=require", "unknown parameter 'sslmod'")]:  # fmt: skip
        with pytest.raises(UsageError, match=text):
            _target_spec(f"postgresql://u@h/db?{bad}", base, "main", "postgresql")


def test_auto_verify_after_backup(site: Path) -> None:
    """--auto-verify proves the new snapshot restorable and records it; a flag overrides the config."""
    out = cli(site, "backup", "--app", "notes", "--auto-verify")
    assert out.code == 0, out.err
    assert "verified OK" in out.out
    snaps = json.loads(cli(site, "--json", "snapshots").out)
    assert snaps[-1]["verification"]["ok"] is True
    rows = {r["name"]: r for r in json.loads(cli(site, "--json", "apps").out)}
    assert rows["notes"]["verification"] not in ("unknown", "not verified", None)

    # Config asks for it: auto_verify on the application.
    config = (site / "casbackup.toml").read_text()
    (site / "casbackup.toml").write_text(
        config.replace(
            'required_files = ["main.py"]', 'required_files = ["main.py"]\nauto_verify = true'
        )
    )
    out = cli(site, "backup", "--app", "notes")
    assert out.code == 0 and "verified OK" in out.out, out.err
    out = cli(site, "backup", "--app", "notes", "--no-auto-verify")
    assert out.code == 0 and "verified" not in out.out, out.err
    snaps = json.loads(cli(site, "--json", "snapshots").out)
    assert [s["verification"] is not None for s in snaps] == [True, True, False]


def test_auto_verify_failure_exits_28(site: Path) -> None:
    """A required key file missing from the snapshot fails the automatic verification loudly."""
    config = (site / "casbackup.toml").read_text()
    (site / "casbackup.toml").write_text(
        config.replace('["main.py"]', '["main.py", "missing.conf"]')
    )
    out = cli(site, "backup", "--app", "notes", "--auto-verify")
    assert out.code == 28, out.out + out.err
    assert "missing.conf" in out.err and "Traceback" not in out.err
    snaps = json.loads(cli(site, "--json", "snapshots").out)
    assert len(snaps) == 1 and snaps[0]["verification"]["ok"] is False  # saved, and marked failed


def test_a_database_dump_counts_in_the_snapshot_size_and_the_repository_stats(site: Path) -> None:
    """An application whose data is mostly a database must not be listed as 0 B protected."""
    assert cli(site, "backup", "--app", "notes").code == 0
    snaps = json.loads(cli(site, "--json", "snapshots").out)
    (snap,) = snaps
    dump = sum(db["size"] for db in snap["databases"])
    assert dump > 100_000  # 2000 notes of ~250 bytes
    assert snap["protected_bytes"] == snap["summary"]["bytes_total"] + dump
    table = cli(site, "snapshots").out
    assert "0 B" not in table
    stats = json.loads(cli(site, "--json", "stats").out.splitlines()[-1])
    assert stats["logical_bytes"] == snap["protected_bytes"]
    assert stats["dedup_ratio"] > 0
