from __future__ import annotations

import pytest

from casbackup.engines.base import DatabaseSpec
from casbackup.errors import UsageError
from casbackup.recovery.connection import connection_spec, describe, split_assignment

BASE = DatabaseSpec(name="main", engine="postgresql", host="db1", port=5433, user="app",
                    database="shop", password_env="SHOP_PW")  # fmt: skip


def test_urls() -> None:
    spec = connection_spec("main", "postgresql",
                           "postgres://admin@db2:6543/shop_copy?password_env=PW&sslmode=require", BASE)  # fmt: skip
    assert (spec.host, spec.port, spec.user, spec.database, spec.password_env) == (
        "db2", 6543, "admin", "shop_copy", "PW")  # fmt: skip
    assert dict(spec.options) == {"sslmode": "require"}
    my = connection_spec("m", "mariadb", "mysql://root@127.0.0.1/x%20y", None)
    assert (my.engine, my.database, my.port) == ("mysql", "x y", None)
    assert describe(my) == "mysql://root@127.0.0.1/x y"


def test_a_bare_name_keeps_the_snapshots_server() -> None:
    spec = connection_spec("main", "postgresql", "shop_restored", BASE)
    assert (spec.host, spec.port, spec.password_env, spec.database) == (
        "db1", 5433, "SHOP_PW", "shop_restored")  # fmt: skip


def test_sqlite_paths() -> None:
    assert connection_spec("l", "sqlite", "/srv/x.db", None).path == "/srv/x.db"
    assert connection_spec("l", "sqlite", "sqlite:///srv/x.db", None).path == "/srv/x.db"
    assert connection_spec("l", "sqlite", "rel/x.db", None).path == "rel/x.db"


@pytest.mark.parametrize(
    ("engine", "text", "message"),
    [
        ("postgresql", "postgresql://u:secret@h/db", "never put a password"),
        ("postgresql", "postgresql://u@h/db?password=secret", "never put a password"),
        ("postgresql", "postgresql://u@h/db?sslmod=require", "unknown parameter 'sslmod'"),
        ("mysql", "mysql://u@h/db?sslmode=require", "unknown parameter 'sslmode'"),
        ("postgresql", "mysql://h/db", "cannot go into mysql"),
        ("postgresql", "ftp://h/db", "unknown scheme"),
        ("postgresql", "postgresql://h", "names no database"),
        ("postgresql", "postgresql://h:99999/db", "bad port"),
        ("postgresql", "a/b", "give a URL"),
    ],
)
def test_bad_connections(engine: str, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        connection_spec("main", engine, text, BASE)


def test_bare_name_without_a_known_server() -> None:
    with pytest.raises(UsageError, match="names no server"):
        connection_spec("main", "postgresql", "db", None)


def test_split_assignment() -> None:
    assert split_assignment("main=postgresql://h/db=x") == ("main", "postgresql://h/db=x")
    with pytest.raises(UsageError):
        split_assignment("main")
