"""recover re-checks the PostgreSQL globals file it reads, before the target is touched."""

from __future__ import annotations

import posixpath
from pathlib import Path

from casbackup.testing.fixtures import open_repo, run_cli
from tests.cli.conftest import init_repo
from tests.engines.conftest import PG_HOST, PG_PORT, PG_USER, psql
from tests.verify.apps import corrupt_file


def test_a_damaged_globals_file_stops_the_recovery_before_the_target(
    tmp_path: Path, pg_database: str
) -> None:
    # The re-check read the files and the dumps, not the roles file beside a PostgreSQL
    # dump: recover restored every file into the target, then failed on the damaged roles
    # file when the database came, leaving a half-recovered target.
    psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1);", pg_database)
    src = tmp_path / "src"
    src.mkdir()
    (src / "settings.ini").write_text("x")
    repo = init_repo(str(tmp_path / "repo"))
    config = tmp_path / "casbackup.toml"
    config.write_text(
        f'[repository]\nlocation = "{repo}"\n\n[[applications]]\nname = "shop"\n'
        f'sources = ["{src}"]\n\n[[applications.databases]]\nname = "main"\n'
        f'engine = "postgresql"\nhost = "{PG_HOST}"\nport = {PG_PORT}\nuser = "{PG_USER}"\n'
        f'database = "{pg_database}"\n'
    )
    env = {"CASBACKUP_CONFIG": str(config)}
    res = run_cli("backup", "--app", "shop", env=env)
    assert res.code == 0, res.err
    handle = open_repo(repo)
    (snap,) = handle.list_snapshots(warnings=[])
    (record,) = snap.databases
    name = record.properties.get("globals")
    assert isinstance(name, str), record.properties  # the backup kept the roles
    corrupt_file(handle, repo, snap, posixpath.join(posixpath.dirname(record.path), name))
    handle.close()
    target = tmp_path / "rebuilt"
    args = ("recover", "--app", "shop", "--target", str(target), "--allow-unverified",
            "--overwrite-databases", "--report", str(tmp_path / "report"))  # fmt: skip
    res = run_cli(*args, env=env)
    assert res.code == 30 and "failed the re-check; nothing was restored" in res.err, res.err
    assert name in res.err
    assert not (target / "src").exists()  # no file restored before the damage was found
    # Without the roles (--no-globals) the file is not needed, and the recovery goes on.
    res = run_cli(*args, "--no-globals", env=env)
    assert res.code == 0, res.err
