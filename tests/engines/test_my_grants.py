"""MySQL/MariaDB: a backup user that cannot see triggers or routines is refused, not trusted.

Found with a backup user granted `SELECT, LOCK TABLES, SHOW VIEW, EVENT ON db.*`: mariadb-dump
left the database's trigger and procedure out, exited 0, and the backup was recorded as
complete.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from casbackup.engines.my_grants import hidden_kinds
from casbackup.engines.mysql import MysqlEngine, check_option
from casbackup.errors import DatabaseError
from tests.engines.conftest import mariadb, my_ident, my_spec, read_in_pieces, unique

LIMITED = "SELECT, LOCK TABLES, SHOW VIEW, EVENT"


@pytest.fixture
def backup_user(my_database: str) -> Iterator[str]:
    user = unique("casb_bk")
    mariadb(
        "CREATE TABLE t (id INT PRIMARY KEY, s VARCHAR(20)); INSERT INTO t VALUES (1, 'a');"
        "CREATE TRIGGER t_bi BEFORE INSERT ON t FOR EACH ROW SET NEW.s = UPPER(NEW.s);"
        "CREATE PROCEDURE p() SELECT 1;",
        my_database,
    )
    mariadb(
        f"CREATE USER '{user}'@'%'; GRANT {LIMITED} ON {my_ident(my_database)}.* TO '{user}'@'%';"
    )
    try:
        yield user
    finally:
        mariadb(f"DROP USER IF EXISTS '{user}'@'%'; DROP ROLE IF EXISTS {user}_r;")


def dump(spec: object) -> bytes:
    with MysqlEngine().dump(spec) as stream:  # type: ignore[arg-type]
        data = read_in_pieces(stream)
        stream.finish()
    return data


def test_user_that_cannot_see_triggers_or_routines_is_refused(
    my_database: str, backup_user: str
) -> None:
    spec = my_spec(my_database, user=backup_user)
    with pytest.raises(DatabaseError, match=r"may not see all of .*triggers .*procedures") as exc:
        dump(spec)
    assert "GRANT TRIGGER ON" in str(exc.value) and "mysql.proc" in str(exc.value)
    # Told that the database has none, it dumps (without them: what the user can see).
    data = dump(my_spec(my_database, user=backup_user, options={"check_privileges": "false"}))
    assert b"t_bi" not in data and b"PROCEDURE" not in data


def test_grants_through_a_default_role_count(my_database: str, backup_user: str) -> None:
    role = f"{backup_user}_r"
    mariadb(
        f"CREATE ROLE {role}; GRANT TRIGGER ON {my_ident(my_database)}.* TO {role};"
        f"GRANT SELECT ON mysql.proc TO {role}; GRANT {role} TO '{backup_user}'@'%';"
        f"SET DEFAULT ROLE {role} FOR '{backup_user}'@'%';"
    )
    data = dump(my_spec(my_database, user=backup_user))
    assert b"TRIGGER t_bi" in data and b"PROCEDURE `p`" in data


@pytest.mark.parametrize(
    ("grants", "hidden"),
    [
        (["GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION"], []),
        ([f"GRANT {LIMITED} ON `shop`.* TO `bk`@`%`"], ["triggers", "stored"]),
        ([f"GRANT {LIMITED}, TRIGGER, EXECUTE ON `shop`.* TO `bk`@`%`"], []),
        (
            [
                f"GRANT {LIMITED}, TRIGGER ON `sh%`.* TO `bk`@`%`",
                "GRANT SELECT ON `mysql`.`proc` TO `bk`@`%`",
            ],
            [],
        ),  # fmt: skip
        (["GRANT SELECT, TRIGGER ON *.* TO `bk`@`%`"], []),
        (["GRANT ALL PRIVILEGES ON `shop`.* TO `bk`@`%`"], []),
        (["GRANT ALL PRIVILEGES ON `sho_`.* TO `bk`@`%`"], []),  # `_` is a wildcard
        (["GRANT ALL PRIVILEGES ON `sho\\_`.* TO `bk`@`%`"], ["triggers", "stored"]),  # escaped
        (["GRANT ALL PRIVILEGES ON `other`.* TO `bk`@`%`"], ["triggers", "stored"]),
        (
            [
                "GRANT SELECT, TRIGGER ON `shop`.`a` TO `bk`@`%`",
                "GRANT SELECT (`x`), TRIGGER ON `shop`.`b` TO `bk`@`%`",
                "GRANT EXECUTE ON `shop`.* TO `bk`@`%`",
            ],
            [],
        ),  # fmt: skip
        (
            [
                "GRANT SELECT, TRIGGER ON `shop`.`a` TO `bk`@`%`",
                "GRANT EXECUTE ON PROCEDURE `shop`.`p` TO `bk`@`%`",
            ],
            ["triggers", "stored"],
        ),  # fmt: skip
        (["GRANT `bkrole` TO `bk`@`%`", "GRANT TRIGGER, EXECUTE ON `shop`.* TO `bkrole`"], []),
    ],
)
def test_hidden_kinds(grants: list[str], hidden: list[str]) -> None:
    found = hidden_kinds(grants, "shop", ["a", "b"])
    assert [h.split()[0] for h in found] == hidden


def test_check_privileges_option_is_a_boolean() -> None:
    assert check_option("check_privileges", "no") is None
    assert check_option("check_privileges", "sometimes")
