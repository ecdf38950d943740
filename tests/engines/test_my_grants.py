"""MySQL/MariaDB: a backup user that cannot see triggers or routines is refused, not trusted.

Found with a backup user granted `SELECT, LOCK TABLES, SHOW VIEW, EVENT ON db.*`: mariadb-dump
left the database's trigger and procedure out, exited 0, and the backup was recorded as
complete.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from casbackup.engines.my_grants import hidden_kinds, routine_grant
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
    with pytest.raises(
        DatabaseError, match=r"may not see .*triggers nor its stored procedures"
    ) as exc:
        dump(spec)
    # The message names the exact statements; run as they are, they make the dump whole.
    grants = grants_in(str(exc.value))
    assert grants == [f"GRANT TRIGGER ON {my_ident(my_database)}.* TO '{backup_user}'@'%'",
                      f"GRANT SELECT ON mysql.proc TO '{backup_user}'@'%'"]  # fmt: skip
    # Told that the database has none, it dumps (without them: what the user can see).
    data = dump(my_spec(my_database, user=backup_user, options={"check_privileges": "false"}))
    assert b"t_bi" not in data and b"PROCEDURE" not in data
    mariadb("; ".join(grants) + ";")
    data = dump(spec)
    assert b"TRIGGER t_bi" in data and b"PROCEDURE `p`" in data


def grants_in(message: str) -> list[str]:
    """The GRANT statements a refusal tells the user to run."""
    run = message.split(": run ", 1)[1].split(" (or, if", 1)[0]
    return run.split("; ")


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
        (["GRANT ALL PRIVILEGES ON `sho\\_`.* TO `bk`@`%`"], ["tables", "triggers", "stored"]),
        (["GRANT ALL PRIVILEGES ON `other`.* TO `bk`@`%`"], ["tables", "triggers", "stored"]),
        # CREATE ROUTINE lists every routine (one it may not read then fails the dump loudly).
        ([f"GRANT {LIMITED}, TRIGGER, CREATE ROUTINE ON `shop`.* TO `bk`@`%`"], []),
        # A grant on one routine shows that routine only, and is no grant on a table.
        (
            [
                f"GRANT {LIMITED} ON `shop`.* TO `bk`@`%`",
                "GRANT EXECUTE, ALTER ROUTINE ON PROCEDURE `shop`.`a` TO `bk`@`%`",
                "GRANT TRIGGER ON `shop`.`b` TO `bk`@`%`",
            ],
            ["triggers", "stored"],
        ),  # fmt: skip
        # Grants on some tables only: the others are not even listed.
        (
            [
                "GRANT LOCK TABLES, EVENT ON `shop`.* TO `bk`@`%`",
                "GRANT SELECT, SHOW VIEW, TRIGGER ON `shop`.`a` TO `bk`@`%`",
                "GRANT SELECT, SHOW VIEW, TRIGGER ON `shop`.`b` TO `bk`@`%`",
                "GRANT SELECT ON `mysql`.`proc` TO `bk`@`%`",
            ],
            ["tables", "triggers"],  # an unlisted table's triggers are unlisted too
        ),  # fmt: skip
        (
            [
                "GRANT SELECT, TRIGGER ON `shop`.`a` TO `bk`@`%`",
                "GRANT SELECT (`x`), TRIGGER ON `shop`.`b` TO `bk`@`%`",
                "GRANT EXECUTE ON `shop`.* TO `bk`@`%`",
            ],
            ["tables", "triggers"],
        ),  # fmt: skip
        (
            [
                "GRANT SELECT, TRIGGER ON `shop`.`a` TO `bk`@`%`",
                "GRANT EXECUTE ON PROCEDURE `shop`.`p` TO `bk`@`%`",
            ],
            ["tables", "triggers", "stored"],
        ),  # fmt: skip
        (["GRANT `bkrole` TO `bk`@`%`", "GRANT TRIGGER, EXECUTE ON `shop`.* TO `bkrole`"], []),
    ],
)
def test_hidden_kinds(grants: list[str], hidden: list[str]) -> None:
    found = hidden_kinds(grants, "shop", ["a", "b"])
    assert [h.what.split()[0] for h in found] == hidden


@pytest.mark.parametrize(
    ("version", "grant"),
    [
        ("10.11.19-MariaDB-0+deb12u1", "GRANT SELECT ON mysql.proc TO 'bk''s'@'10.0.%'"),
        ("11.4.2-MariaDB", "GRANT SHOW CREATE ROUTINE ON `sh``op`.* TO 'bk''s'@'10.0.%'"),
        ("8.0.36", "GRANT SHOW_ROUTINE ON *.* TO 'bk''s'@'10.0.%'"),
        ("8.0.19", "GRANT SELECT ON *.* TO 'bk''s'@'10.0.%'"),
        ("5.7.44-log", "GRANT SELECT ON mysql.proc TO 'bk''s'@'10.0.%'"),
    ],
)
def test_the_routine_grant_fits_the_server(version: str, grant: str) -> None:
    assert routine_grant("sh`op", "bk's@10.0.%", version) == grant
    assert routine_grant("x", "", version).endswith(" TO CURRENT_USER")


def test_check_privileges_option_is_a_boolean() -> None:
    assert check_option("check_privileges", "no") is None
    assert check_option("check_privileges", "sometimes")


# --- the check against what mariadb-dump really does --------------------------------------

OBJECTS = (b"CREATE TABLE `t`", b"CREATE TABLE `u`", b"VIEW `v`", b"t_bi", b"PROCEDURE `p`",
           b"EVENT `e`")  # fmt: skip
SILENT, LOUD, WHOLE = "misses some, exit 0", "fails", "whole"


def tool_dump(user: str, database: str) -> str:
    """What mariadb-dump itself does for this user: SILENT, LOUD or WHOLE."""
    proc = subprocess.run(
        ["mariadb-dump", "-h", "127.0.0.1", "-P", "3306", "-u", user, "--single-transaction",
         "--routines", "--events", "--triggers", database],
        capture_output=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        return LOUD
    return WHOLE if all(o in proc.stdout for o in OBJECTS) else SILENT


@pytest.mark.parametrize(
    ("grants", "own_routine", "truth"),
    [
        ([f"{LIMITED} ON {{db}}.*"], False, SILENT),
        ([f"{LIMITED}, TRIGGER ON {{db}}.*", "SELECT ON mysql.proc"], False, WHOLE),
        ([f"{LIMITED} ON {{db}}.*", "SELECT ON mysql.proc"], False, SILENT),  # no TRIGGER
        # The routine's definer holding CREATE ROUTINE (as the user that made it did) sees
        # them all: refused before, whole now.
        ([f"{LIMITED}, TRIGGER, CREATE ROUTINE ON {{db}}.*"], True, WHOLE),
        # Listed but not readable: mariadb-dump says so itself.
        ([f"{LIMITED}, TRIGGER, EXECUTE ON {{db}}.*"], False, LOUD),
        # Grants on some tables only: the other table and the view were dumped as missing.
        (
            [
                "LOCK TABLES, EVENT ON {db}.*",
                "SELECT, SHOW VIEW, TRIGGER ON {db}.`t`",
                "SELECT ON mysql.proc",
            ],
            False,
            SILENT,
        ),  # fmt: skip
        (
            ["SELECT, LOCK TABLES, SHOW VIEW, TRIGGER ON {db}.*", "SELECT ON mysql.proc"],
            False,
            LOUD,
        ),  # no EVENT  # fmt: skip
    ],
)
def test_the_check_refuses_exactly_what_the_tool_would_miss(
    my_database: str, grants: list[str], own_routine: bool, truth: str
) -> None:
    user = unique("casb_bk")
    definer = f"'{user}'@'%'" if own_routine else "CURRENT_USER"
    mariadb(f"CREATE USER '{user}'@'%';")
    try:
        mariadb(
            "CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1);"
            "CREATE TABLE u (id INT PRIMARY KEY); INSERT INTO u VALUES (2);"
            "CREATE VIEW v AS SELECT id FROM u;"
            "CREATE TRIGGER t_bi BEFORE INSERT ON t FOR EACH ROW SET NEW.id = NEW.id + 0;"
            f"CREATE DEFINER = {definer} PROCEDURE p() SELECT 1;"
            "CREATE EVENT e ON SCHEDULE EVERY 1 DAY DISABLE DO SELECT 1;",
            my_database,
        )
        for grant in grants:
            mariadb(f"GRANT {grant.format(db=my_ident(my_database))} TO '{user}'@'%';")
        assert tool_dump(user, my_database) == truth
        try:
            data = dump(my_spec(my_database, user=user))
        except DatabaseError as exc:
            refused = "which the dump would leave out without a word" in str(exc)
            assert (SILENT if refused else LOUD) == truth, str(exc)
            if refused:  # the statements it names make the dump whole
                mariadb("; ".join(grants_in(str(exc))) + ";")
                assert all(o in dump(my_spec(my_database, user=user)) for o in OBJECTS)
            elif "insufficient privileges to SHOW CREATE" in str(exc):  # and what to grant
                assert str(exc).endswith(f"; run GRANT SELECT ON mysql.proc TO '{user}'@'%'")
            return
        assert truth == WHOLE and all(o in data for o in OBJECTS)
    finally:
        mariadb(f"DROP USER IF EXISTS '{user}'@'%';")


def test_a_definer_without_a_listing_grant_can_say_its_routines_are_its_own(
    my_database: str,
) -> None:
    """The definer of every routine sees them all, but the server hides whether any other
    exists, so the check cannot know; options.own_routines = true says so, and only the
    routine check is skipped (a missing TRIGGER still refuses)."""
    user = unique("casb_def")
    mariadb(
        f"CREATE USER '{user}'@'%'; GRANT {LIMITED} ON {my_ident(my_database)}.* TO '{user}'@'%';"
    )
    try:
        mariadb("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1);"
                "CREATE TRIGGER t_bi BEFORE INSERT ON t FOR EACH ROW SET NEW.id = NEW.id + 0;"
                f"CREATE DEFINER = '{user}'@'%' PROCEDURE p() SELECT 1;", my_database)  # fmt: skip
        with pytest.raises(DatabaseError, match="set options.own_routines = true") as exc:
            dump(my_spec(my_database, user=user))
        assert "triggers nor its stored procedures" in str(exc.value)
        own = my_spec(my_database, user=user, options={"own_routines": "true"})
        with pytest.raises(DatabaseError, match="may not see .*'s triggers, which") as exc:
            dump(own)
        assert "own_routines" not in str(exc.value)
        mariadb(f"GRANT TRIGGER ON {my_ident(my_database)}.* TO '{user}'@'%';")
        data = dump(own)
        assert b"t_bi" in data and b"PROCEDURE `p`" in data
        with pytest.raises(DatabaseError, match="own_routines must be true or false"):
            dump(my_spec(my_database, user=user, options={"own_routines": "mine"}))
    finally:
        mariadb(f"DROP USER IF EXISTS '{user}'@'%';")
