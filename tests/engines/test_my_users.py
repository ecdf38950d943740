"""MariaDB accounts and grants kept with a dump and created again on a rebuilt server.

Found by helper-64 recovering an application onto a fresh MariaDB: the dump came back, the
application's account did not (a MariaDB dump holds the database, not who may use it), and
recover still said ok; the application could not connect. PostgreSQL's roles were already
kept (pg_globals.py); MariaDB's accounts now are (engines/my_users.py).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from casbackup.engines.my_users import select_statements
from tests.engines.conftest import MY_HOST, MY_PORT, MY_USER, mariadb, unique


def _can_log_in(user: str, password: str, database: str) -> bool:
    done = subprocess.run(
        ["mariadb", "-h", MY_HOST, "-P", str(MY_PORT), "-u", user, f"-p{password}",
         f"--database={database}", "--batch", "--skip-column-names", "-e", "SELECT COUNT(*) FROM t"],
        capture_output=True,
    )  # fmt: skip
    return done.returncode == 0 and done.stdout.strip() == b"3"


def test_db_restore_on_a_rebuilt_server_brings_the_accounts_back(my_database: str, tmp_path: Path) -> None:  # fmt: skip
    from tests.engines.test_backup_integration import cli, db_entry, write_config

    app_user, other = unique("casb_app"), unique("casb_other")
    mariadb("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1), (2), (3);", my_database)
    mariadb(f"CREATE USER '{app_user}'@'%' IDENTIFIED BY 'app pw'; "
            f"GRANT SELECT, INSERT ON `{my_database}`.* TO '{app_user}'@'%'; "
            f"CREATE USER '{other}'@'%' IDENTIFIED BY 'old pw';")  # fmt: skip
    try:
        entry = db_entry("orders", "mysql", host=MY_HOST, port=MY_PORT, user=MY_USER,
                         database=my_database)  # fmt: skip
        config = write_config(tmp_path, {"shop": entry})
        backup = cli(config, "--json", "backup", "--app", "shop")
        assert backup.code == 0, backup.err
        assert "/.databases/orders.users.sql" in cli(config, "ls", "latest").out
        (record,) = json.loads(backup.out.strip().splitlines()[-1])["databases"]
        assert record["properties"]["globals"] == "orders.users.sql"

        # The server is rebuilt: the database and the application's account are gone; an
        # account of the same name as another one exists there with its own password.
        mariadb(f"DROP DATABASE `{my_database}`; DROP USER '{app_user}'@'%'; "
                f"ALTER USER '{other}'@'%' IDENTIFIED BY 'new pw';")  # fmt: skip
        out = cli(config, "db", "restore", "latest", "--app", "shop", "--database", "orders")
        assert out.code == 0, out.err
        assert "accounts from the backup: " in out.err and "already here" in out.err
        assert _can_log_in(app_user, "app pw", my_database)  # back, with its password and grant
        grants = mariadb(f"SHOW GRANTS FOR '{app_user}'@'%';")
        assert f"GRANT SELECT, INSERT ON `{my_database}`.*" in grants
        assert _can_log_in(other, "new pw", my_database) is False  # no grant there: untouched
        assert "old pw" not in mariadb(f"SHOW GRANTS FOR '{other}'@'%';")
        done = subprocess.run(["mariadb", "-h", MY_HOST, "-P", str(MY_PORT), "-u", other,
                               "-pnew pw", "-e", "SELECT 1"], capture_output=True)  # fmt: skip
        assert done.returncode == 0  # its password is still the new server's
        # --no-globals leaves the accounts to the operator.
        mariadb(f"DROP DATABASE `{my_database}`; DROP USER '{app_user}'@'%';")
        out = cli(config, "db", "restore", "latest", "--app", "shop", "--database", "orders",
                  "--no-globals")  # fmt: skip
        assert out.code == 0, out.err
        assert mariadb(f"SELECT COUNT(*) FROM mysql.user WHERE User = '{app_user}';").strip() == "0"
        # recover onto the "rebuilt" server: the account is back, and the report says so.
        mariadb(f"DROP DATABASE `{my_database}`;")
        target = tmp_path / "target"
        out = cli(config, "recover", "--app", "shop", "--target", str(target), "--allow-unverified")
        assert out.code == 0, out.err
        assert _can_log_in(app_user, "app pw", my_database)
        report = (target / "recovery-report.md").read_text()
        # At least the application's: the file holds every account of the server, and
        # tests on other workers (or sessions) create and drop theirs meanwhile.
        assert re.search(r"- database 'orders': accounts from the backup: [1-9]\d* created", report)
    finally:
        mariadb(f"DROP USER IF EXISTS '{app_user}'@'%'; DROP USER IF EXISTS '{other}'@'%';")


def test_an_accounts_file_runs_only_account_statements() -> None:
    """The file comes from the repository: untrusted. Anything but account statements and
    session settings is left out, with a warning, and existing accounts are never touched."""
    script = "\n".join([
        "/*M!999999\\- enable the sandbox mode */ ",
        "/*!40101 SET NAMES utf8mb4 */;",
        "CREATE USER `app`@`%` IDENTIFIED BY PASSWORD '*ABC';",
        "GRANT SELECT ON `shop`.* TO `app`@`%`;",
        "GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` IDENTIFIED VIA unix_socket WITH GRANT OPTION;",
        "DROP DATABASE shop;",
        "SET GLOBAL read_only = 1;",
        "CREATE ROLE `reader`;",
        "GRANT `reader` TO `app`@`%`;",
        "/*M!100005 SET DEFAULT ROLE `reader` FOR 'app'@'%' */;",
        "-- Dump completed",
    ])  # fmt: skip
    run, made, kept, warnings = select_statements(script, {("root", "localhost")})
    assert made == 2 and kept == 1  # app and the role made; root left as it is
    assert not any("root" in s for s in run)
    assert not any("DROP" in s or "GLOBAL" in s for s in run)
    assert len(warnings) == 2 and "DROP DATABASE" in warnings[0] and "GLOBAL" in warnings[1]
    assert "GRANT `reader` TO `app`@`%`;" in run and "SET NAMES" in run[0]


def test_a_backup_user_that_may_read_only_part_of_the_accounts_still_backs_up(
    my_database: str, tmp_path: Path
) -> None:
    """A newcomer's backup user with its database's grants, then `GRANT SELECT ON
    mysql.global_priv` (the table the "accounts not kept" note names): the probe passed,
    mariadb-dump --system=users then failed on mysql.user, and so did every backup (exit
    27): a backup that worked stopped working. Now the probe reads what the tool reads."""
    from tests.engines.test_backup_integration import cli, db_entry, write_config

    user = unique("casb_bk")
    mariadb("CREATE TABLE t (id INT PRIMARY KEY); INSERT INTO t VALUES (1);", my_database)
    mariadb(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'bk pw'; "
            f"GRANT SELECT, LOCK TABLES, SHOW VIEW, EVENT, TRIGGER ON `{my_database}`.* "
            f"TO '{user}'@'%'; GRANT SELECT ON mysql.proc TO '{user}'@'%'; "
            f"GRANT SELECT ON mysql.global_priv TO '{user}'@'%';")  # fmt: skip
    try:
        entry = db_entry("orders", "mysql", host=MY_HOST, port=MY_PORT, user=user,
                         database=my_database, password_env="BK_PW")  # fmt: skip
        config = write_config(tmp_path, {"shop": entry})
        backup = cli(config, "backup", "--app", "shop", BK_PW="bk pw")
        assert backup.code == 0, backup.err
        # Said at backup time (helper-68: only the file in the snapshot said it, and then a
        # restore on a rebuilt server, years later).
        assert (
            "warning: database orders: the server's accounts are not kept: the backup's "
            "account may not read the accounts (GRANT SELECT ON mysql.* TO it)"
        ) in backup.err, backup.err
        kept = cli(config, "dump", "latest:/.databases/orders.users.sql", BK_PW="bk pw")
        assert kept.out == (
            "-- casbackup: accounts not kept: the backup's account may not read the accounts "
            "(GRANT SELECT ON mysql.* TO it)\n"
        )
        mariadb(f"GRANT SELECT ON mysql.* TO '{user}'@'%';")  # what the note says
        again = cli(config, "backup", "--app", "shop", BK_PW="bk pw")
        assert again.code == 0 and "accounts are not kept" not in again.err, again.err
        kept = cli(config, "dump", "latest:/.databases/orders.users.sql", BK_PW="bk pw")
        assert f"CREATE USER `{user}`@`%`" in kept.out, kept.out[:300]
    finally:
        mariadb(f"DROP USER IF EXISTS '{user}'@'%';")
