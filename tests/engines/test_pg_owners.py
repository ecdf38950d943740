"""PostgreSQL restore gives back who owned what and the database's own properties.

The data loads with `pg_restore --no-owner`; found on a real restore (casbackup backing up as
the superuser `postgres`, the application connecting as its own role): every table came back
owned by `postgres`, the application's role could not read its own tables, and the database
lost its `ALTER DATABASE ... SET search_path/TimeZone`, its comment and its CONNECT grants.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest

from casbackup.engines.pg_owners import capped, database_statements, owner_statements
from casbackup.engines.postgresql import PostgresEngine
from tests.engines.conftest import own_warnings, pg_ident, pg_spec, psql, read_in_pieces, unique


@pytest.fixture
def roles(pg_server: None) -> Iterator[list[str]]:
    names: list[str] = []
    yield names
    for name in names:
        psql(f"DROP ROLE IF EXISTS {pg_ident(name)};")


def dump(database: str) -> tuple[bytes, dict[str, object]]:
    with PostgresEngine().dump(pg_spec(database)) as stream:
        data = read_in_pieces(stream)
        info = stream.finish()
    return data, dict(info.properties)


def app_database(database: str, role: str) -> None:
    """A database as an application that connects as `role` has it."""
    r = pg_ident(role)
    psql(
        f"ALTER DATABASE {pg_ident(database)} OWNER TO {r};"
        f"ALTER DATABASE {pg_ident(database)} SET search_path = app, public;"
        f"ALTER DATABASE {pg_ident(database)} SET TimeZone = 'Asia/Tokyo';"
        f"COMMENT ON DATABASE {pg_ident(database)} IS 'the shop''s data';"
        f"REVOKE CONNECT ON DATABASE {pg_ident(database)} FROM PUBLIC;"
        f"GRANT CONNECT ON DATABASE {pg_ident(database)} TO {r};"
    )
    psql(
        f"SET ROLE {r}; CREATE SCHEMA app;"
        "CREATE TABLE app.t (id serial PRIMARY KEY, v text);"
        "INSERT INTO app.t (v) SELECT 'row ' || g FROM generate_series(1, 20) g;"
        # A line shaped like an owner statement inside a function body is the body's.
        "CREATE FUNCTION app.f() RETURNS int LANGUAGE sql AS $$\nSELECT 1;\n"
        "-- ALTER TABLE app.t OWNER TO postgres;\n$$;"
        "SELECT lo_from_bytea(0, 'a large object');",
        database,
    )


def ownership(database: str) -> list[str]:
    return psql(
        "SELECT 'db ' || pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        " UNION ALL SELECT 'schema ' || pg_get_userbyid(nspowner) FROM pg_namespace"
        "  WHERE nspname = 'app'"
        " UNION ALL SELECT c.relname || ' ' || pg_get_userbyid(c.relowner) FROM pg_class c"
        "  JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'app'"
        " UNION ALL SELECT 'function ' || pg_get_userbyid(proowner) FROM pg_proc"
        "  WHERE proname = 'f'"
        " UNION ALL SELECT 'lo ' || pg_get_userbyid(lomowner) FROM pg_largeobject_metadata"
        " ORDER BY 1;",
        database,
    ).split("\n")


def db_properties(database: str) -> list[str]:
    return psql(
        "SELECT array_to_string(setconfig, ';') FROM pg_db_role_setting s"
        " JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = current_database();"
        "SELECT shobj_description(oid, 'pg_database'), has_database_privilege('public',"
        " current_database(), 'CONNECT') FROM pg_database WHERE datname = current_database();",
        database,
    ).split("\n")


def test_restore_keeps_owners_and_database_properties(
    roles: list[str], pg_database: str, pg_cleanup: list[str]
) -> None:
    role = unique("casb_owner")
    roles.append(role)
    psql(f"CREATE ROLE {pg_ident(role)} LOGIN;")
    app_database(pg_database, role)
    data, props = dump(pg_database)
    target = unique("casb_pg_owned")
    pg_cleanup.append(target)

    info = PostgresEngine().restore(pg_spec(target), io.BytesIO(data), properties=props)

    assert info.row_counts == {"app.t": 20}
    assert own_warnings(info.warnings) == ()
    assert ownership(target) == ownership(pg_database)
    assert all(line.endswith(role) for line in ownership(target) if line)
    assert db_properties(target) == db_properties(pg_database)
    assert "search_path=app, public;TimeZone=Asia/Tokyo" in db_properties(target)[0]
    # The application's role reads its own table.
    assert psql(f"SET ROLE {pg_ident(role)}; SELECT count(*) FROM app.t;", target).strip() == "20"
    # Replacing the database gives them back too (the new one takes the old one's place).
    PostgresEngine().restore(pg_spec(target), io.BytesIO(data), properties=props, overwrite=True)
    assert ownership(target) == ownership(pg_database)
    assert db_properties(target) == db_properties(pg_database)


def test_owner_missing_here_is_a_warning_and_the_data_loads(
    roles: list[str], pg_database: str, pg_cleanup: list[str]
) -> None:
    role = unique("casb_gone")
    roles.append(role)
    psql(f"CREATE ROLE {pg_ident(role)} LOGIN;")
    app_database(pg_database, role)
    data, props = dump(pg_database)
    psql(f"DROP DATABASE {pg_ident(pg_database)};")
    psql(f"DROP ROLE {pg_ident(role)};")
    psql(f"CREATE DATABASE {pg_ident(pg_database)};")  # for the fixture to drop
    target = unique("casb_pg_owned")
    pg_cleanup.append(target)

    info = PostgresEngine().restore(pg_spec(target), io.BytesIO(data), properties=props)

    assert info.row_counts == {"app.t": 20}
    owner_warnings = [w for w in info.warnings if "owner not restored" in w]
    assert owner_warnings and all(f'role "{role}" does not exist' in w for w in owner_warnings)
    assert any(f"ALTER TABLE app.t OWNER TO {role}" in w for w in owner_warnings)
    # What needs no missing role still came back.
    assert "search_path=app, public;TimeZone=Asia/Tokyo" in db_properties(target)[0]


def test_owner_statements_are_each_entrys_last_statement_only() -> None:
    text = (
        "--\n-- Name: f(); Type: FUNCTION; Schema: app; Owner: o\n--\n\n"
        "CREATE FUNCTION app.f() RETURNS int\n    LANGUAGE sql\n    AS $$\nSELECT 1;\n"
        "ALTER TABLE app.t OWNER TO mallory;\n$$;\n\n\nALTER FUNCTION app.f() OWNER TO o;\n\n"
        "SET default_tablespace = '';\n\n"
        '--\n-- Name: t; Type: TABLE; Schema: app; Owner: "odd role"\n--\n\n'
        'CREATE TABLE app.t (id int);\n\n\nALTER TABLE app.t OWNER TO "odd role";\n\n'
        "--\n-- Name: x; Type: TABLE; Schema: app; Owner: o\n--\n\nCREATE TABLE app.x (id int);\n"
    )
    assert owner_statements(text) == [
        "ALTER FUNCTION app.f() OWNER TO o",
        'ALTER TABLE app.t OWNER TO "odd role"',
    ]


def test_the_last_entrys_owner_is_found_before_the_dumps_closing_comment() -> None:
    """Found by recovering a database whose only table was owned by a role the target
    server lacked: no warning, and the table silently belonged to the restoring user."""
    text = (
        "--\n-- Name: t; Type: TABLE; Schema: public; Owner: gone\n--\n\n"
        "CREATE TABLE public.t (\n    id integer\n);\n\n\nALTER TABLE public.t OWNER TO gone;\n\n"
        "--\n-- PostgreSQL database dump complete\n--\n\n"
    )
    assert owner_statements(text) == ["ALTER TABLE public.t OWNER TO gone"]


def test_database_statements_name_the_database_restored_into() -> None:
    text = (
        "--\n-- Name: shop; Type: DATABASE; Schema: -; Owner: o\n--\n\n"
        "CREATE DATABASE shop WITH TEMPLATE = template0 ENCODING = 'UTF8';\n\n\n"
        "ALTER DATABASE shop OWNER TO o;\n\n\\connect shop\n\nSET x = 1;\n\n"
        "--\n-- Name: DATABASE shop; Type: COMMENT; Schema: -; Owner: o\n--\n\n"
        "COMMENT ON DATABASE shop IS 'a ; b';\n\n"
        "--\n-- Name: shop; Type: DATABASE PROPERTIES; Schema: -; Owner: o\n--\n\n"
        "ALTER DATABASE shop SET search_path TO 'app', 'public';\n"
        "ALTER ROLE o IN DATABASE shop SET work_mem TO '64MB';\n\n"
        "--\n-- Name: DATABASE shop; Type: ACL; Schema: -; Owner: o\n--\n\n"
        "REVOKE CONNECT,TEMPORARY ON DATABASE shop FROM PUBLIC;\n"
        "GRANT CONNECT ON DATABASE shop TO o;\n\n"
        "--\n-- Name: t; Type: TABLE; Schema: public; Owner: o\n--\n\n"
        "ALTER DATABASE shop SET evil TO 'x';\n"
    )
    assert database_statements(text, 'new "db"', "UTF8") == [
        'ALTER DATABASE "new ""db""" OWNER TO o',
        'COMMENT ON DATABASE "new ""db""" IS \'a ; b\'',
        'ALTER DATABASE "new ""db""" SET search_path TO \'app\', \'public\'',
        'ALTER ROLE o IN DATABASE "new ""db""" SET work_mem TO \'64MB\'',
        'REVOKE CONNECT,TEMPORARY ON DATABASE "new ""db""" FROM PUBLIC',
        'GRANT CONNECT ON DATABASE "new ""db""" TO o',
    ]


def test_many_warnings_are_counted_not_listed() -> None:
    warnings = [f"w{i}" for i in range(25)]
    out = capped(warnings, "database 'x'")
    assert out[:10] == warnings[:10] and len(out) == 11 and "15 more" in out[-1]
