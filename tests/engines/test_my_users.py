"""MariaDB accounts and grants kept with a dump and created again on a rebuilt server.

Found by helper-64 recovering an application onto a fresh MariaDB: the dump came back, the
application's account did not (a MariaDB dump holds the database, not who may use it), and
recover still said ok; the application could not connect. PostgreSQL's roles were already
kept (pg_globals.py); MariaDB's accounts now are (engines/my_users.py).
"""

from __future__ import annotations

import json
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
        assert "- database 'orders': accounts from the backup: 1 created" in report
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
