"""Every shipped example config works end to end: backup, then verify, with its paths redirected
into a temporary copy (and its database servers pointed at this machine's test servers).

`examples/casbackup.toml` writes `required_files` from the snapshot's root and
`sample_app/casbackup.toml` relative to the source folder: verification accepts both.

And what the docs show runs: every `casbackup ...` line of the README's shell blocks names
commands and options that exist, as does the systemd unit; every `--option` the prose names is
one; every TOML snippet (README, config/model.py's full layout) loads.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tomllib
from pathlib import Path
from typing import Any

import pytest

from casbackup.testing.fixtures import PASSWORD, CliResult, run_cli
from tests.engines.conftest import (  # noqa: F401 - fixtures
    MY_USER,
    PG_USER,
    mariadb,
    mariadb_server,
    pg_server,
    psql,
    unique,
)

ROOT = Path(__file__).parents[2]
SHIPPED = sorted([ROOT / "examples" / "casbackup.toml", ROOT / "sample_app" / "casbackup.toml"])


def test_every_shipped_config_is_covered_here() -> None:
    found = sorted(p for p in [*ROOT.glob("examples/*.toml"), *ROOT.glob("sample_app/*.toml")])
    assert found == SHIPPED


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(value)


def dump_toml(doc: dict[str, Any]) -> str:
    """Enough TOML for the example's shape: scalars, tables, arrays of tables (two deep)."""
    out: list[str] = []

    def table(prefix: str, data: dict[str, Any], header: str | None) -> None:
        if header:
            out.append(header)
        for k, v in data.items():
            if not isinstance(v, dict) and not (
                isinstance(v, list) and v and isinstance(v[0], dict)
            ):
                out.append(f"{k} = {toml_value(v)}")
        for k, v in data.items():
            name = f"{prefix}{k}"
            if isinstance(v, dict):
                table(f"{name}.", v, f"[{name}]")
            elif isinstance(v, list) and v and isinstance(v[0], dict):
                for item in v:
                    table(f"{name}.", item, f"[[{name}]]")

    table("", doc, None)
    return "\n".join(out) + "\n"


def cli(config: Path, *args: str) -> CliResult:
    return run_cli(*args, env={"CASBACKUP_CONFIG": str(config), "SHOP_DB_PASSWORD": "unused"})


@pytest.mark.slow
@pytest.mark.usefixtures("pg_server", "mariadb_server")
def test_examples_casbackup_toml_end_to_end(tmp_path: Path) -> None:
    doc = tomllib.loads((ROOT / "examples" / "casbackup.toml").read_text())
    root = tmp_path / "root"  # stands for "/" of the machine the example describes

    def moved(path: str) -> str:
        return str(root / path.lstrip("/"))

    (tmp_path / "repo.pass").write_text(PASSWORD + "\n")
    doc["repository"] = {
        "location": str(tmp_path / "repo"),
        "password_file": str(tmp_path / "repo.pass"),
    }
    doc["verification"]["sandbox_directory"] = str(tmp_path / "sandbox")
    doc["disaster_recovery"]["recovery_directory"] = str(tmp_path / "recovery")
    made_pg: list[str] = []
    made_my: list[str] = []
    for app in doc["applications"]:
        app["sources"] = [moved(s) for s in app["sources"]]
        for source in app["sources"]:
            Path(source).mkdir(parents=True, exist_ok=True)
            (Path(source) / "README").write_text(f"{app['name']}\n")
        required = app.get("verification", {}).get("required_files", [])
        for name in required:  # written from the snapshot's root, as the example does
            assert not name.startswith("/")
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text("required\n")
        if required:
            app["verification"]["required_files"] = [str(root / n).lstrip("/") for n in required]
        for db in app.get("databases", []):
            if db["engine"] == "sqlite":
                db["path"] = moved(db["path"])
                Path(db["path"]).parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(db["path"])
                conn.execute("CREATE TABLE pages (id INTEGER PRIMARY KEY, body TEXT)")
                conn.executemany("INSERT INTO pages (body) VALUES (?)", [("p",)] * 50)
                conn.commit()
                conn.close()
            elif db["engine"] == "postgresql":
                name = unique("casb_example")
                psql(f"CREATE DATABASE {name};")
                psql("CREATE TABLE orders (id serial PRIMARY KEY, total int);"
                     "INSERT INTO orders (total) SELECT g FROM generate_series(1, 40) g;", name)  # fmt: skip
                made_pg.append(name)
                db.update(user=PG_USER, database=name)
            else:
                name = unique("casb_example")
                mariadb(f"CREATE DATABASE {name};")
                mariadb("CREATE TABLE tickets (id INT PRIMARY KEY, title TEXT);"
                        "INSERT INTO tickets VALUES (1, 'a'), (2, 'b');", name)  # fmt: skip
                made_my.append(name)
                db.update(user=MY_USER, database=name)
                db.pop("password_file", None)  # the test server's root has no password
    config = tmp_path / "casbackup.toml"
    config.write_text(dump_toml(doc))
    try:
        checked = cli(config, "config", "check")
        assert checked.code == 0, checked.err
        init = run_cli("init", "--insecure-test-kdf", repo=str(tmp_path / "repo"))
        assert init.code == 0, init.err
        backup = cli(config, "backup", "--all")
        assert backup.code == 0, backup.out + backup.err
        for app in doc["applications"]:
            verify = cli(config, "verify", "--app", app["name"])
            assert verify.code == 0, (app["name"], verify.out, verify.err)
            assert "verified OK" in verify.out
    finally:
        for name in made_pg:
            psql(f"DROP DATABASE IF EXISTS {name};")
        for name in made_my:
            mariadb(f"DROP DATABASE IF EXISTS {name};")


def test_sample_app_config_end_to_end(tmp_path: Path) -> None:
    site = tmp_path / "sample_app"
    shutil.copytree(
        ROOT / "sample_app", site, ignore=shutil.ignore_patterns("demo-repo", "*.sqlite3*")
    )
    made = run_cli_py(site / "make_db.py")
    assert made == 0
    config = site / "casbackup.toml"
    env = {
        "CASBACKUP_CONFIG": str(config),
        "CASBACKUP_DEMO_PASSWORD": PASSWORD,
    }
    init = run_cli("init", "--insecure-test-kdf", env=env)
    assert init.code == 0, init.err
    assert (site / "demo-repo" / "config").exists()  # the redirected copy, not the real folder
    backup = run_cli("backup", "--app", "notes", env=env)
    assert backup.code == 0, backup.out + backup.err
    verify = run_cli("verify", "--app", "notes", env=env)
    assert verify.code == 0, verify.out + verify.err
    assert "verified OK" in verify.out


def run_cli_py(script: Path) -> int:
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, check=False
    ).returncode


# ------------------------------------------------------------------ the docs' commands and snippets
DOCS = [ROOT / "README.md", ROOT / "sample_app" / "app" / "README.md"]
# Options the docs name that belong to other tools (pg_dumpall, redis-cli, systemd, pytest...).
OTHER_TOOLS = {"--dist", "--globals-only", "--quick", "--reps", "--rdb", "--system", "--help"}


def _all_options() -> set[str]:
    import click

    from casbackup.cli.main import cli

    found: set[str] = set()

    def walk(command: click.Command) -> None:
        for param in command.params:
            found.update(o for o in [*param.opts, *param.secondary_opts] if o.startswith("-"))
        if isinstance(command, click.Group):
            for name in command.list_commands(click.Context(command)):
                sub = command.get_command(click.Context(command), name)
                if sub is not None:
                    walk(sub)

    walk(cli)
    return found


def _doc_commands(text: str) -> list[str]:
    """Every `casbackup ...` invocation in the sh/bash blocks of ``text`` (continuation lines
    joined, comments and pipes cut off), as written after 'casbackup'."""
    import re

    out = []
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.split(r"\s#", line, maxsplit=1)[0]
            for part in re.split(r"\|\s|\$\(|&&", line):
                found = re.search(r"(?:^|\s)casbackup\s+(.*)$", part.strip().rstrip(")"))
                if found:
                    out.append(found.group(1))
    return out


def _check_invocation(words: list[str]) -> list[str]:
    """What is wrong with ``casbackup WORDS``: unknown commands and options, each a string."""
    import click

    from casbackup.cli.main import cli

    command: click.Command = cli
    params = {o: p for p in cli.params for o in [*p.opts, *p.secondary_opts]}
    problems, i = [], 0
    while i < len(words):
        word = words[i]
        if word == "--":
            break
        if word.startswith("-") and len(word) > 1:
            param = params.get(word.split("=")[0])
            if param is None:
                problems.append(f"no option {word} for {command.name}")
            elif not getattr(param, "is_flag", False) and "=" not in word:
                i += 1  # its value
        elif isinstance(command, click.Group) and word not in ("[", "]", "|", "..."):
            sub = command.get_command(click.Context(command), word)
            if sub is None:
                problems.append(f"no command {word!r}")
                break
            command = sub
            params.update({o: p for p in sub.params for o in [*p.opts, *p.secondary_opts]})
        i += 1
    return problems


def test_every_documented_command_and_option_exists() -> None:
    """Each `casbackup ...` line of the docs names commands and options the CLI has, and every
    `--option` the prose names is one of casbackup's (or another tool's, listed above)."""
    import re
    import shlex

    seen = 0
    problems = []
    for doc in DOCS:
        text = doc.read_text()
        for line in _doc_commands(text):
            seen += 1
            problems += [f"{doc.name}: casbackup {line}: {p}" for p in
                         _check_invocation(shlex.split(line))]  # fmt: skip
        known = _all_options() | OTHER_TOOLS
        for option in sorted(set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", text))):
            if option not in known:
                problems.append(f"{doc.name}: names {option}, which no command has")
    assert seen > 60  # the README's blocks were found
    assert not problems, "\n".join(problems)


def test_the_service_unit_runs_a_real_command() -> None:
    unit = (ROOT / "examples" / "casbackup-serve.service").read_text()
    import shlex

    lines = [
        ln.split("/bin/casbackup ", 1)[1] for ln in unit.splitlines() if ln.startswith("ExecStart=")
    ]
    lines += [
        ln.split("-u casbackup casbackup ", 1)[1] for ln in unit.splitlines() if "sudo -u" in ln
    ]
    assert len(lines) == 2
    for line in lines:
        assert not _check_invocation(shlex.split(line)), line


def test_every_toml_snippet_loads(tmp_path: Path) -> None:
    """The README's TOML snippets and the full layout in casbackup/config/model.py's docstring
    (which the README points to for every key) are valid configs."""
    import re
    import textwrap

    import casbackup.config.model as model
    from casbackup.config import load_config

    snippets = [
        textwrap.dedent(s) for s in re.findall(r"```toml\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    ]  # fmt: skip
    assert model.__doc__ is not None
    snippets += re.findall(r"```toml\n(.*?)```", model.__doc__, re.S)
    assert len(snippets) >= 2
    for n, snippet in enumerate(snippets):
        path = tmp_path / f"snippet{n}.toml"
        path.write_text(snippet.replace("    ```", ""))
        load_config(path)


@pytest.mark.slow
@pytest.mark.usefixtures("pg_server", "mariadb_server")
def test_the_readme_backup_accounts_back_up_and_verify(tmp_path: Path) -> None:
    """The README's SQL for a backup account of its own, run as written (names made
    unique): backup keeps the dumps and the MariaDB accounts, and verify passes."""
    import re

    from tests.engines.test_backup_integration import cli as app_cli
    from tests.engines.test_backup_integration import db_entry, write_config

    (block,) = re.findall(r"```sql\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    pg_sql, _, my_sql = block.partition("-- MariaDB\n")
    assert "-- PostgreSQL" in pg_sql and "CREATE USER" in my_sql
    role, db = unique("casb_bk"), unique("casb_shop")

    def named(sql: str) -> str:
        sql = re.sub(r"\bbackup\b", role, sql.replace("'...'", "'bk pw'"))
        return re.sub(r"\bshop\b", db, sql)

    psql(f"CREATE DATABASE {db};")
    psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);", db)
    mariadb(f"CREATE DATABASE {db}; CREATE TABLE {db}.t (id INT PRIMARY KEY); "
            f"INSERT INTO {db}.t VALUES (1);")  # fmt: skip
    try:
        psql(named(pg_sql))
        mariadb(named(my_sql))
        entries = db_entry("pg", "postgresql", host="127.0.0.1", port=5432, user=role,
                           database=db, password_env="BK_PW")  # fmt: skip
        entries += db_entry("my", "mysql", host="127.0.0.1", port=3306, user=role,
                            database=db, password_env="BK_PW")  # fmt: skip
        config = write_config(tmp_path, {"shop": entries})
        backup = app_cli(config, "backup", "--app", "shop", BK_PW="bk pw")
        assert backup.code == 0, backup.err
        accounts = app_cli(config, "dump", "latest:/.databases/my.users.sql", BK_PW="bk pw")
        assert f"CREATE USER `{role}`@`%`" in accounts.out, accounts.out[:300]
        verify = app_cli(config, "verify", "--app", "shop", BK_PW="bk pw")
        assert verify.code == 0, verify.err
        assert "verified OK" in verify.out
    finally:
        psql(f"DROP DATABASE IF EXISTS {db};")
        psql(f"DROP ROLE IF EXISTS {role};")
        mariadb(f"DROP DATABASE IF EXISTS {db}; DROP USER IF EXISTS '{role}'@'%';")
