"""A dump records what its restore needs beyond the bytes (issue 18, item 9): the live
SQLite file's owner and mode, a MariaDB database's default character set and collation.
`db restore` (and recover, through the same engine call) applies them."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from casbackup.engines import get_engine
from casbackup.engines.base import DatabaseSpec
from casbackup.engines.mysql import MysqlEngine
from casbackup.engines.postgresql import PostgresEngine
from casbackup.engines.sqlite import apply_file_properties
from casbackup.errors import DatabaseError
from tests.engines.conftest import (
    mariadb,
    my_spec,
    own_warnings,
    pg_ident,
    pg_spec,
    psql,
    read_in_pieces,
    unique,
)
from tests.engines.test_backup_integration import (
    cli,
    db_entry,
    make_sqlite,
    sqlite_rows,
    write_config,
)

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="needs root to own files as another user")
APP_UID = APP_GID = 1000


def lite_spec(path: Path) -> DatabaseSpec:
    return DatabaseSpec(name="files", engine="sqlite", path=str(path))


def owned_db(path: Path, mode: int = 0o664) -> None:
    make_sqlite(path)
    os.chown(path, APP_UID, APP_GID)
    os.chmod(path, mode)


def dump(spec: DatabaseSpec) -> tuple[bytes, dict[str, object]]:
    with get_engine(spec.engine).dump(spec) as stream:
        data = read_in_pieces(stream)
        info = stream.finish()
    return data, dict(info.properties)


@needs_root
def test_sqlite_dump_records_owner_and_mode_and_restore_applies_them(tmp_path: Path) -> None:
    live = tmp_path / "app.db"
    owned_db(live)
    data, props = dump(lite_spec(live))
    assert props["uid"] == APP_UID and props["gid"] == APP_GID and props["mode"] == 0o664
    live.unlink()
    info = get_engine("sqlite").restore(lite_spec(live), io.BytesIO(data), properties=props)
    st = os.stat(live)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (APP_UID, APP_GID, 0o664)
    assert own_warnings(info.warnings) == ()


@needs_root
def test_sqlite_restore_without_recorded_properties_keeps_the_replaced_files(
    tmp_path: Path,
) -> None:
    """Snapshots from before this record: the file being replaced gives owner and mode."""
    live = tmp_path / "app.db"
    owned_db(live, 0o640)
    data, _ = dump(lite_spec(live))
    get_engine("sqlite").restore(lite_spec(live), io.BytesIO(data), overwrite=True)
    st = os.stat(live)
    assert (st.st_uid, st.st_mode & 0o7777) == (APP_UID, 0o640)


def test_sqlite_recorded_properties_are_untrusted(tmp_path: Path) -> None:
    live = tmp_path / "app.db"
    make_sqlite(live)
    data, _ = dump(lite_spec(live))
    live.unlink()
    hostile = {"mode": "4777", "uid": -3, "gid": True, "user": 7}
    get_engine("sqlite").restore(lite_spec(live), io.BytesIO(data), properties=hostile)
    st = os.stat(live)
    assert (st.st_uid, st.st_mode & 0o7777) == (os.geteuid(), 0o600)  # nothing applied
    live.unlink()
    with pytest.raises(DatabaseError, match="recorded properties are malformed"):
        get_engine("sqlite").restore(lite_spec(live), io.BytesIO(data), properties=[1, 2])  # type: ignore[arg-type]
    assert not live.exists()


@needs_root
def test_refused_owner_is_a_warning_and_drops_setuid() -> None:
    """As an ordinary user the owner cannot be given: a warning; the mode still is, minus
    setuid/setgid (they would grant the restoring user's rights)."""
    base = Path(tempfile.mkdtemp(prefix="casbackup-props-"))  # tmp_path is root's 0700
    os.chmod(base, 0o755)
    target = base / "f"
    target.write_bytes(b"x")
    os.chown(target, 65534, 65534)
    code = (
        "import sys; from casbackup.engines.sqlite import apply_file_properties as a;"
        "print('|'.join(a(sys.argv[1], {'uid': 1000, 'gid': 1000, 'mode': 0o6664}, 'db')))"
    )
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-c", code, str(target)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == (
        f"db: owner 1000:1000 of {target} not restored: Operation not permitted"
    )
    assert os.stat(target).st_mode & 0o7777 == 0o664
    assert apply_file_properties(str(target), {}, "db") == ()
    shutil.rmtree(base)


@needs_root
def test_db_restore_gives_the_sqlite_file_its_owner_and_mode(tmp_path: Path) -> None:
    """The issue's example: an application's SQLite file owned by its user, mode 0664,
    comes back from `db restore` as it was, not root 0600."""
    lite = tmp_path / "shop.sqlite3"
    owned_db(lite)
    before = sqlite_rows(lite)
    config = write_config(tmp_path, {"shop": db_entry("files", "sqlite", path=str(lite))})
    result = cli(config, "--json", "backup", "--app", "shop")
    assert result.code == 0, result.err
    snaps = json.loads(cli(config, "--json", "snapshots").out)
    (record,) = snaps[-1]["databases"]
    assert record["properties"]["mode"] == 0o664 and record["properties"]["uid"] == APP_UID
    lite.unlink()
    out = cli(config, "db", "restore", "latest", "--app", "shop", "--database", "files")
    assert out.code == 0, out.err
    st = os.stat(lite)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (APP_UID, APP_GID, 0o664)
    assert sqlite_rows(lite) == before


def test_mariadb_default_charset_and_collation_come_back(my_database: str) -> None:
    mariadb(f"ALTER DATABASE `{my_database}` CHARACTER SET latin1 COLLATE latin1_german1_ci;")
    mariadb("CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(10)); INSERT INTO t VALUES (1, 'a');",
            my_database)  # fmt: skip
    spec = my_spec(my_database)
    data, props = dump(spec)
    assert {k: props[k] for k in ("charset", "collation")} == {
        "charset": "latin1",
        "collation": "latin1_german1_ci",
    }
    MysqlEngine().drop(spec)
    MysqlEngine().restore(spec, io.BytesIO(data), properties=props)
    defaults = mariadb(
        "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema."
        f"schemata WHERE schema_name = '{my_database}'"
    ).split()
    assert defaults == ["latin1", "latin1_german1_ci"]
    assert mariadb("SELECT v FROM t", my_database).strip() == "a"


def test_mariadb_recorded_names_never_reach_sql(my_database: str) -> None:
    spec = my_spec(my_database)
    with pytest.raises(DatabaseError, match="recorded charset"):
        MysqlEngine().restore(spec, io.BytesIO(b""), properties={"charset": "latin1; DROP"})


@needs_root
def test_recover_gives_the_sqlite_file_its_owner_and_mode(repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from casbackup.recovery.execute import recover
    from casbackup.recovery.plan import RecoverOptions
    from casbackup.verify.sandbox import run_verification
    from tests.verify.apps import backup, make_app

    app, spec = make_app(tmp_path)
    assert spec.path is not None
    os.chown(spec.path, APP_UID, APP_GID)
    os.chmod(spec.path, 0o664)
    snap = backup(repo, app, [spec])
    assert run_verification(repo, snap).ok
    target = tmp_path / "rebuilt"
    result = recover(repo, RecoverOptions(app="shop", target=str(target)))
    assert result.ok, result.errors
    st = os.stat(target / "databases" / "local.sqlite")
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (APP_UID, APP_GID, 0o664)


def test_postgresql_encoding_and_locale_come_back(pg_server: None, pg_cleanup: list[str]) -> None:
    """The same kind of loss as MariaDB's: a LATIN1 database came back as the server's UTF8."""
    name = unique("casb_enc")
    pg_cleanup.append(name)
    psql(f"CREATE DATABASE {pg_ident(name)} TEMPLATE template0 ENCODING 'LATIN1' "
         "LC_COLLATE 'C' LC_CTYPE 'C';")  # fmt: skip
    psql("CREATE TABLE t (v text); INSERT INTO t VALUES ('café');", name)
    spec = pg_spec(name)
    data, props = dump(spec)
    assert {k: props[k] for k in ("encoding", "collate", "ctype")} == {
        "encoding": "LATIN1",
        "collate": "C",
        "ctype": "C",
    }
    PostgresEngine().drop(spec)
    info = PostgresEngine().restore(spec, io.BytesIO(data), properties=props)
    assert own_warnings(info.warnings) == ()
    row = psql(f"SELECT pg_encoding_to_char(encoding), datcollate FROM pg_database "
               f"WHERE datname = '{name}';").strip()  # fmt: skip
    assert row == "LATIN1|C"
    assert psql("SELECT v FROM t;", name).strip() == "café"


def test_postgresql_locale_missing_here_is_a_warning(
    pg_server: None, pg_cleanup: list[str]
) -> None:
    name = unique("casb_loc")
    pg_cleanup.append(name)
    psql(f"CREATE DATABASE {pg_ident(name)};")
    psql("CREATE TABLE t (v int); INSERT INTO t VALUES (1);", name)
    spec = pg_spec(name)
    data, props = dump(spec)
    PostgresEngine().drop(spec)
    moved = {**props, "collate": "xx_NOWHERE.UTF-8", "ctype": "xx_NOWHERE.UTF-8"}
    info = PostgresEngine().restore(spec, io.BytesIO(data), properties=moved)
    (warning,) = info.warnings
    assert "lacks the recorded locale" in warning
    assert psql("SELECT v FROM t;", name).strip() == "1"
    with pytest.raises(DatabaseError, match="recorded encoding"):
        PostgresEngine().restore(pg_spec(unique("casb_x")), io.BytesIO(data),
                                 properties={"encoding": "UTF8'; DROP"})  # fmt: skip
