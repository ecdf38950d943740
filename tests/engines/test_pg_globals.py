"""PostgreSQL globals and privileges against the real server (issue 16, dump gaps).

A dump that GRANTs to a role the server lacks loads its data and names each GRANT it could not
apply; the globals kept with the dump create missing roles (with their passwords) and leave
existing roles alone; verify flags a dump whose privileges name roles the snapshot lacks.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from casbackup.engines.base import DatabaseSpec
from casbackup.engines.pg_sql import (
    created_roles,
    guarded_script,
    referenced_roles,
    short,
    split_statements,
)
from casbackup.engines.postgresql import PostgresEngine, check_option, globals_enabled
from casbackup.errors import DatabaseError
from casbackup.repo.snapshot import DatabaseRecord
from casbackup.verify.dumps import check_dump
from tests.engines.conftest import (
    PG_HOST,
    PG_PORT,
    PG_USER,
    own_warnings,
    pg_ident,
    pg_spec,
    psql,
    read_in_pieces,
    unique,
)


@pytest.fixture
def roles(pg_server: None) -> Iterator[list[str]]:
    """Role names appended here are dropped after the test (with what they own)."""
    names: list[str] = []
    yield names
    for name in names:
        psql(f"DROP ROLE IF EXISTS {pg_ident(name)};")


def make_role(roles: list[str], password: str | None = None) -> str:
    name = unique("casb_role")
    roles.append(name)
    extra = f" LOGIN PASSWORD '{password}'" if password else ""
    psql(f"CREATE ROLE {pg_ident(name)}{extra};")
    return name


def granting_db(database: str, role: str) -> None:
    psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text);"
        "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g;"
        "CREATE VIEW v AS SELECT id FROM t;"
        f"GRANT SELECT, UPDATE ON t TO {pg_ident(role)};"
        "GRANT SELECT ON v TO PUBLIC;"
        f"ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {pg_ident(role)};",
        database,
    )


def dump(spec: DatabaseSpec) -> tuple[bytes, dict[str, object]]:
    stream = PostgresEngine().dump(spec)
    try:
        data = read_in_pieces(stream)
        info = stream.finish()
    finally:
        stream.close()
    return data, dict(info.properties)


def dump_globals(spec: DatabaseSpec) -> bytes:
    stream = PostgresEngine().dump_globals(spec)
    try:
        data = read_in_pieces(stream)
        info = stream.finish()
    finally:
        stream.close()
    assert info.format == "pg-globals-sql" and info.row_counts == {}
    return data


def only_roles(globals_sql: bytes, keep: set[str]) -> bytes:
    """The globals with every other role's statements left out: the server is shared with
    other tests, whose roles this test must not recreate."""
    out = []
    for line in globals_sql.decode().splitlines():
        words = line.split()
        if line.startswith(("CREATE ROLE", "ALTER ROLE")) and words[2].rstrip(";") not in keep:
            continue
        out.append(line)
    return ("\n".join(out) + "\n").encode()


def grants(database: str, table: str) -> str:
    return psql(f"SELECT relacl::text FROM pg_class WHERE relname = '{table}';", database).strip()


def test_grant_to_missing_role_loads_the_data_and_names_the_grant(
    pg_database: str, pg_cleanup: list[str], roles: list[str]
) -> None:
    role = make_role(roles)
    granting_db(pg_database, role)
    data, props = dump(pg_spec(pg_database))
    assert "globals" not in props  # named by whoever stores the file (the backup)
    psql(f"DROP OWNED BY {pg_ident(role)}; DROP ROLE {pg_ident(role)};", pg_database)
    target = unique("casb_pg_rebuilt")
    pg_cleanup.append(target)

    info = PostgresEngine().restore(pg_spec(target), io.BytesIO(data), properties=props)

    assert info.row_counts == {"public.t": 50}
    failed = [w for w in info.warnings if "privilege not restored" in w]
    assert len(failed) == 2 and all(f'role "{role}" does not exist' in w for w in failed)
    assert any(f"GRANT SELECT,UPDATE ON TABLE public.t TO {role}" in w for w in failed)
    assert any("ALTER DEFAULT PRIVILEGES" in w for w in failed)
    # What could be granted was: the view's grant to PUBLIC is in place.
    assert "=r/" in grants(target, "v")


def test_globals_create_missing_roles_and_leave_existing_ones(
    pg_server: None, roles: list[str]
) -> None:
    gone = make_role(roles, password="secret one")
    kept = make_role(roles)
    member = make_role(roles)
    psql(f"GRANT {pg_ident(kept)} TO {pg_ident(member)};")
    hash_before = psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{gone}';").strip()
    data = only_roles(dump_globals(pg_spec("postgres")), {gone, kept, member})
    assert f"CREATE ROLE {gone};" in data.decode()
    psql(f"DROP ROLE {pg_ident(gone)}; ALTER ROLE {pg_ident(kept)} CONNECTION LIMIT 7;")

    summary, warnings = PostgresEngine().restore_globals(pg_spec("postgres"), io.BytesIO(data))

    assert warnings == []
    assert "1 created" in summary and "2 already here" in summary
    row = psql(f"SELECT rolcanlogin, rolpassword FROM pg_authid WHERE rolname = '{gone}';")
    assert row.strip() == f"t|{hash_before}"  # back, with its password
    limit = psql(f"SELECT rolconnlimit FROM pg_roles WHERE rolname = '{kept}';").strip()
    assert limit == "7"  # an existing role is not altered
    assert psql(
        f"SELECT pg_has_role('{member}', '{kept}', 'MEMBER');"
    ).strip() == "t"  # fmt: skip


def test_globals_failures_are_warnings_naming_the_statement(
    pg_server: None, roles: list[str]
) -> None:
    name = unique("casb_role")
    roles.append(name)
    script = (
        f"CREATE ROLE {name};\n"
        f"ALTER ROLE {name} WITH NOLOGIN;\n"
        f"GRANT {name} TO casb_no_such_role_x;\n"
        "CREATE TABLESPACE casb_ts LOCATION '/nonexistent/casb';\n"
    ).encode()
    summary, warnings = PostgresEngine().restore_globals(pg_spec("postgres"), io.BytesIO(script))
    assert "1 created" in summary
    assert len(warnings) == 2
    assert "casb_no_such_role_x" in warnings[0] and "does not exist" in warnings[0]
    assert "CREATE TABLESPACE casb_ts" in warnings[1]


def test_globals_file_that_is_not_one_is_refused(pg_server: None) -> None:
    engine = PostgresEngine()
    with pytest.raises(DatabaseError, match="psql command"):
        engine.restore_globals(pg_spec("postgres"), io.BytesIO(b"\\! touch /tmp/x\nSELECT 1;\n"))
    with pytest.raises(DatabaseError, match="holds no roles"):
        engine.restore_globals(pg_spec("postgres"), io.BytesIO(b"DROP TABLE x;\n"))
    with pytest.raises(DatabaseError, match="not utf-8"):
        engine.restore_globals(pg_spec("postgres"), io.BytesIO(b"CREATE ROLE \xff;"))


def test_globals_option_is_validated(pg_server: None) -> None:
    assert check_option("globals", "false") is None
    assert "true or false" in str(check_option("globals", "ture"))
    assert globals_enabled(pg_spec("x")) is True
    assert globals_enabled(pg_spec("x", options={"globals": "off"})) is False
    with pytest.raises(DatabaseError, match="options.globals"):
        globals_enabled(pg_spec("x", options={"globals": "maybe"}))
    assert PostgresEngine().extra_dumps(pg_spec("x", options={"globals": "no"})) == ()


def test_older_pg_restore_warns(pg_database: str, pg_cleanup: list[str]) -> None:
    psql("CREATE TABLE t (id int); INSERT INTO t VALUES (1);", pg_database)
    data, props = dump(pg_spec(pg_database))
    tool = props["dump_tool"]
    assert isinstance(tool, dict) and tool["name"] == "pg_dump" and tool["product"] == "PostgreSQL"
    assert tool["version"].split(".")[0] == "15" or int(tool["version"].split(".")[0]) >= 15
    target = unique("casb_pg_old")
    pg_cleanup.append(target)
    newer = {**props, "dump_tool": {**tool, "version": "99.1"}}
    info = PostgresEngine().restore(pg_spec(target), io.BytesIO(data), properties=newer)
    older = [w for w in info.warnings if "older pg_restore" in w]
    assert len(older) == 1 and "pg_dump 99.1" in older[0]
    # A record without the field (made before it existed) restores without the warning.
    PostgresEngine().drop(pg_spec(target))
    bare = {k: v for k, v in props.items() if k != "dump_tool"}
    info = PostgresEngine().restore(pg_spec(target), io.BytesIO(data), properties=bare)
    assert not [w for w in info.warnings if "older" in w]


def test_verify_flags_roles_the_snapshot_does_not_hold(
    roles: list[str], pg_database: str, tmp_path: Path
) -> None:
    role = make_role(roles)
    granting_db(pg_database, role)
    data, props = dump(pg_spec(pg_database))
    files = tmp_path / "tree"
    (files / ".databases").mkdir(parents=True)
    (files / ".databases" / "pgtest.pgdump").write_bytes(data)
    (files / ".databases" / "pgtest.globals.sql").write_bytes(b"CREATE ROLE someone_else;\n")
    props["globals"] = "pgtest.globals.sql"  # as the backup records it
    record = DatabaseRecord("pgtest", "postgresql", "pg-custom", "15", "/.databases/pgtest.pgdump",
                            len(data), {"public.t": 50}, props)  # fmt: skip
    server = pg_spec("unused")

    flagged = check_dump(record, str(files), server)
    assert flagged.check.ok, flagged.check.problem  # the data loads: a warning, not a failure
    gaps = [w for w in flagged.warnings if "do not hold" in w]
    assert len(gaps) == 1 and role in gaps[0] and "pgtest.globals.sql" in gaps[0]

    (files / ".databases" / "pgtest.globals.sql").write_text(
        f'CREATE ROLE "{role}";\nCREATE ROLE postgres;\n'
    )
    held = check_dump(record, str(files), server)
    assert held.check.ok and not [w for w in held.warnings if "do not hold" in w]

    no_globals = {k: v for k, v in props.items() if k != "globals"}
    bare = check_dump(DatabaseRecord(**{**record.__dict__, "properties": no_globals}),
                      str(files), server)  # fmt: skip
    assert any("no globals kept" in w and role in w for w in bare.warnings)


# --- the SQL handling, without a server ----------------------------------------------------


def test_split_statements_understands_quotes_and_comments() -> None:
    text = (
        "-- a comment; with a semicolon\n"
        "\\restrict abc123\n"
        'GRANT SELECT ON TABLE public."t;x" TO "Odd ""R";\n'
        "COMMENT ON ROLE r IS E'it\\'s; fine';\n"
        "ALTER ROLE r SET search_path TO 'a  b';\n"
        "\\unrestrict abc123\n"
    )
    assert split_statements(text) == [
        'GRANT SELECT ON TABLE public."t;x" TO "Odd ""R"',
        "COMMENT ON ROLE r IS E'it\\'s; fine'",
        "ALTER ROLE r SET search_path TO 'a  b'",
    ]
    for bad in ("SELECT 1;\n\\! rm -rf /\n", "SELECT 'open", "SELECT 1 \\gexec"):
        with pytest.raises(DatabaseError):
            split_statements(bad)


def test_roles_named_by_privileges_and_globals() -> None:
    statements = split_statements(
        'GRANT SELECT ON TABLE public.t TO "Odd ""R", bob WITH GRANT OPTION;'
        "REVOKE ALL ON SCHEMA public FROM PUBLIC;"
        "ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public GRANT SELECT ON TABLES TO rd;"
        "GRANT app TO carol GRANTED BY admin;"
        "GRANT pg_read_all_data TO dave;"
    )
    assert referenced_roles(statements) == {'Odd "R', "bob", "app", "rd", "carol", "admin", "dave"}
    globals_sql = split_statements('CREATE ROLE app;\nCREATE ROLE "Mixed";\nALTER ROLE app LOGIN;')
    assert created_roles(globals_sql) == {"app": 0, "Mixed": 1}


def test_statements_reach_the_server_only_as_literals() -> None:
    script = guarded_script(["GRANT x TO y", "SET role = 'evil'", "SELECT ':USER'"])
    assert "SET role" not in script  # session settings are the script's own
    # The statement's quote is doubled twice: once in EXECUTE's literal, once in DO's.
    assert "EXECUTE ''SELECT '''':USER''''''" in script
    assert "PASSWORD '...'" in short("ALTER ROLE a WITH LOGIN PASSWORD 'SCRAM-SHA-256$x'")


# --- end to end through the CLI ------------------------------------------------------------


def test_db_restore_on_a_rebuilt_server_brings_roles_back_first(
    roles: list[str], pg_database: str, tmp_path: Path
) -> None:
    from tests.engines.test_backup_integration import cli, db_entry, write_config

    role = make_role(roles, password="app secret")
    granting_db(pg_database, role)
    entry = db_entry("orders", "postgresql", host=PG_HOST, port=PG_PORT, user=PG_USER,
                     database=pg_database)  # fmt: skip
    config = write_config(tmp_path, {"shop": entry})
    backup = cli(config, "--json", "backup", "--app", "shop")
    assert backup.code == 0, backup.err
    listing = cli(config, "ls", "latest").out
    assert "/.databases/orders.globals.sql" in listing and "/.databases/orders.pgdump" in listing
    records = json.loads(backup.out.strip().splitlines()[-1])["databases"]
    assert [d["name"] for d in records] == ["orders"]  # the globals get no record of their own
    assert records[0]["properties"]["globals"] == "orders.globals.sql"

    # The server is rebuilt: the database and the role are gone.
    PostgresEngine().drop(pg_spec(pg_database))
    psql(f"DROP ROLE {pg_ident(role)};")
    without = cli(config, "db", "restore", "latest", "--app", "shop", "--database", "orders",
                  "--no-globals")  # fmt: skip
    assert without.code == 0, without.err  # before issue 16: exit 27, nothing restored
    assert f"privilege not restored: GRANT SELECT,UPDATE ON TABLE public.t TO {role}" in without.err
    assert psql("SELECT count(*) FROM t;", pg_database).strip() == "50"

    PostgresEngine().drop(pg_spec(pg_database))
    out = cli(config, "db", "restore", "latest", "--app", "shop", "--database", "orders")
    assert out.code == 0, out.err
    assert "warning" not in out.err and "roles from the backup: " in out.err
    assert f"{role}=rw/" in grants(pg_database, "t")  # the role is back, and its GRANT with it
    assert psql(f"SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}';").strip() == "t"


def test_db_restore_of_a_record_without_the_new_fields(
    pg_database: str, pg_cleanup: list[str], tmp_path: Path
) -> None:
    """Records written before globals and tool versions existed still restore, silently."""
    from casbackup.repo.snapshot import Snapshot

    psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);", pg_database)
    data, props = dump(pg_spec(pg_database))
    old = {k: v for k, v in props.items() if k in ("encoding", "collate", "ctype")}
    target = unique("casb_pg_oldrec")
    pg_cleanup.append(target)
    info = PostgresEngine().restore(pg_spec(target), io.BytesIO(data), properties=old)
    assert info.row_counts == {"public.t": 2} and own_warnings(info.warnings) == ()
    record = {"name": "x", "engine": "postgresql", "format": "pg-custom", "server_version": "15",
              "path": "/.databases/x.pgdump", "size": 1, "row_counts": {}, "properties": old}  # fmt: skip
    doc = {"version": 1, "time": "2026-01-01T00:00:00+00:00", "start_ns": 0, "host": "h",
           "user": "u", "paths": [], "tree": "0" * 64, "databases": [record]}  # fmt: skip
    snap = Snapshot.decode(json.dumps(doc).encode())
    assert snap.databases[0].properties == old


def test_recover_restores_roles_before_the_dump(  # type: ignore[no-untyped-def]
    repo, roles: list[str], pg_database: str, tmp_path: Path
) -> None:
    from dataclasses import replace

    from casbackup.archiver.application import stream_specs
    from casbackup.archiver.backup import BackupOptions, run_backup
    from casbackup.recovery.execute import recover
    from casbackup.recovery.plan import RecoverOptions
    from tests.verify.apps import definition

    role = make_role(roles)
    granting_db(pg_database, role)
    app = tmp_path / "app"
    app.mkdir()
    (app / "settings.ini").write_text("[db]\n")
    spec = replace(pg_spec(pg_database), name="orders")
    options = BackupOptions(paths=(str(app),), type="full", app="shop",
                            streams=stream_specs((spec,)),
                            app_definition=definition("shop", app, [spec], []))  # fmt: skip
    assert run_backup(repo, options).snapshot is not None

    PostgresEngine().drop(spec)
    psql(f"DROP ROLE {pg_ident(role)};")
    # Without the globals (roles managed elsewhere): the data loads, the role stays absent,
    # and its GRANT is a warning naming it.
    bare = recover(repo, RecoverOptions(app="shop", target=str(tmp_path / "bare"),
                                        configured={"orders": spec}, globals=False,
                                        allow_unverified=True))  # fmt: skip
    assert bare.ok, bare.errors
    assert bare.report is not None
    [db] = bare.report["databases"]
    assert db["ok"] and db["globals"] == []
    assert psql(f"SELECT count(*) FROM pg_roles WHERE rolname = '{role}';").strip() == "0"
    assert [w for w in bare.report["warnings"] if role in w and "privilege not restored" in w]

    PostgresEngine().drop(spec)
    result = recover(repo, RecoverOptions(app="shop", target=str(tmp_path / "rebuilt"),
                                          configured={"orders": spec}, allow_unverified=True))  # fmt: skip

    assert result.ok, result.errors
    assert result.report is not None
    [db] = result.report["databases"]
    assert db["ok"] and db["row_counts"] == {"public.t": 50}
    assert db["globals"] and " created, " in db["globals"][0]  # other tests share the server
    assert not [w for w in result.report["warnings"] if role in w]
    assert f"{role}=rw/" in grants(pg_database, "t")


def test_a_user_that_cannot_read_passwords_still_keeps_the_roles(
    pg_server: None, roles: list[str]
) -> None:
    user = make_role(roles)
    psql(f"ALTER ROLE {pg_ident(user)} LOGIN;")
    spec = pg_spec("postgres", user=user)
    stream = PostgresEngine().dump_globals(spec)
    try:
        data = read_in_pieces(stream)
        info = stream.finish()
    finally:
        stream.close()
    assert info.properties == {"passwords": False}  # --no-role-passwords: pg_authid is closed
    assert f"CREATE ROLE {user};" in data.decode() and "PASSWORD" not in data.decode()


def test_backup_log_names_the_globals_and_the_dump_once_each(
    pg_database: str, tmp_path: Path
) -> None:
    """Found on a real `serve`: the job log said 'dumping database orders (postgresql)' twice,
    once for the globals and once for the dump, as if the dump had been taken twice."""
    from tests.engines.test_backup_integration import cli, db_entry, write_config

    psql("CREATE TABLE t (id int PRIMARY KEY);", pg_database)
    entry = db_entry("orders", "postgresql", host=PG_HOST, port=PG_PORT, user=PG_USER,
                     database=pg_database)  # fmt: skip
    out = cli(write_config(tmp_path, {"shop": entry}), "backup", "--app", "shop")
    assert out.code == 0, out.err
    lines = [line for line in (out.out + out.err).splitlines() if "dumping " in line]
    assert lines == [
        "dumping server globals for database orders (postgresql)",
        "dumping database orders (postgresql)",
    ], lines


def test_globals_cut_after_the_trailers_words_in_a_comment_are_refused(
    roles: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The globals' completeness check looked for the trailer's words anywhere in the last
    4 KiB, so a pg_dumpall cut short (exit 0) right after a role comment holding them
    ('... cluster dump complete', which anyone who may comment on a role can write) was
    recorded as whole, every role after it missing. The tool's own last lines count now."""
    role = make_role(roles)
    words = "-- PostgreSQL database cluster dump complete"
    psql(f"COMMENT ON ROLE {pg_ident(role)} IS E'note\\n{words}\\nmore';")
    script = tmp_path / "pg_dumpall"
    script.write_text(
        '#!/bin/sh\ncase "$*" in *--version*) exec /usr/bin/pg_dumpall "$@";; esac\n'
        '/usr/bin/pg_dumpall "$@" > "$0.out" || exit 1\n'
        f"n=$(grep -boa 'note' \"$0.out\" | tail -1 | cut -d: -f1)\n"
        f'head -c $((n + {len("note") + 1 + len(words)})) "$0.out"\nexit 0\n'
    )
    script.chmod(0o755)
    assert words.encode() in dump_globals(pg_spec("postgres"))  # the real tool: whole
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with pytest.raises(DatabaseError, match="pg_dumpall --globals-only output is incomplete"):
        dump_globals(pg_spec("postgres"))
