"""MySQL/MariaDB: what the dumping user cannot see, which the dump tool leaves out in silence.

`mariadb-dump` dumps what `SHOW TABLES`, `SHOW TRIGGERS` and `SHOW PROCEDURE/FUNCTION STATUS`
show the user, and nothing tells it about the rest: the dump ends with its trailer and exit
status 0, and the backup is recorded as complete (found with a backup user granted `SELECT,
LOCK TABLES, SHOW VIEW, EVENT ON db.*`: a trigger and a procedure missing from the dump, the
backup green). Measured on MariaDB 10.11 (tests/engines/test_my_grants.py), per kind:

- Tables and views are listed when the user holds a table privilege (SELECT, INSERT, ...,
  SHOW VIEW, TRIGGER: `TABLE_LISTING`) on the whole database (or globally); with grants on
  some tables only, the others are not listed and are silently missing. A listed table or
  view the user may not read fails the dump loudly.
- Triggers are listed only with the TRIGGER privilege on their table, whoever defined them
  (a trigger's DEFINER without it does not see it).
- Routines are listed to their DEFINER, to users granted on them one by one, and to all
  holding EXECUTE, ALTER ROUTINE or CREATE ROUTINE on the database (MariaDB 11.3+: SHOW CREATE
  ROUTINE), SELECT on mysql.proc or a global SELECT (MySQL 8.0.20+: SHOW_ROUTINE). A listed
  routine whose body the user may not read (not its definer, no mysql.proc) fails the dump
  loudly: "insufficient privileges to SHOW CREATE PROCEDURE". So a user that sees routines
  only as their definer cannot tell whether others exist (the server hides even their
  existence): that case is refused too, and the message names the grant that settles it.
- Events and views need EVENT and SHOW VIEW on the database, but their absence fails the
  dump loudly ("Couldn't execute 'show events'"): nothing to check.

`hidden_kinds` reads the user's `SHOW GRANTS` (its own grants and its enabled roles') and says
which kinds of objects may be hidden from it, each with the exact GRANT that shows them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_NAME = r"(?:\*|`(?:[^`]|``)*`)"
_GRANT = re.compile(
    rf"^GRANT (.+?) ON ((?:PROCEDURE|FUNCTION|PACKAGE(?: BODY)?) )?({_NAME})\.({_NAME}) TO "
)
_ROUTINE_LISTING = frozenset({"EXECUTE", "ALTER ROUTINE", "CREATE ROUTINE", "SHOW CREATE ROUTINE"})
# mariadb-dump's words for a routine it may list but not read (MySQL's mysqldump says the same).
_UNREADABLE_ROUTINE = re.compile(rb"insufficient privileges to SHOW CREATE (PROCEDURE|FUNCTION)")
#: Privileges that, held on a whole database, list all of its tables and views.
TABLE_LISTING = frozenset(
    {"SELECT", "INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "REFERENCES", "INDEX", "ALTER",
     "CREATE VIEW", "SHOW VIEW", "TRIGGER", "DELETE HISTORY"}
)  # fmt: skip


@dataclass(frozen=True)
class Hidden:
    """Objects of one `kind` the user may not see (`what`, words for a message), and the
    statement an administrator runs so that it does (`grant`)."""

    kind: str  # "tables", "triggers" or "routines"
    what: str
    grant: str


def _unquote(name: str) -> str:
    return "*" if name == "*" else name[1:-1].replace("``", "`")


def _privileges(text: str) -> set[str]:
    """Table/database-wide privileges of a grant's list; column grants (`SELECT (a)`) are
    not, and are left out."""
    out: set[str] = set()
    depth, start = 0, 0
    parts = []
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    for part in (p.strip().upper() for p in parts):
        if "(" in part:
            continue
        if part in ("ALL", "ALL PRIVILEGES"):
            out.add("ALL")
        else:
            out.add(part)
    return out


def _db_matches(pattern: str, db: str) -> bool:
    """A database-level grant's name against `db`: `%` and `_` are wildcards, `\\` escapes."""
    regex = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            regex.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        regex.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
        i += 1
    return re.fullmatch("".join(regex), db, re.S) is not None


def hidden_kinds(
    grant_lines: Iterable[str], db: str, tables: Iterable[str], *, user: str = "",
    server_version: str = "",
) -> list[Hidden]:  # fmt: skip
    """What of database `db` (whose visible base tables are `tables`) the user whose
    `SHOW GRANTS` these are may not see; [] when nothing can be hidden from it.

    `user` is its `CURRENT_USER()` ("name@host"), `server_version` the server's `VERSION()`:
    they make the GRANT statements exact."""
    global_privs: set[str] = set()
    db_privs: set[str] = set()
    proc_select = False
    table_privs: dict[str, set[str]] = {}
    for line in grant_lines:
        m = _GRANT.match(line)
        if not m:
            continue  # role grants ("GRANT `r` TO ..."), proxies
        privs, routine = _privileges(m.group(1)), m.group(2) is not None
        schema, table = _unquote(m.group(3)), _unquote(m.group(4))
        if routine:
            continue  # shows that one routine only: never all of them
        if schema == "*":
            global_privs |= privs
        elif table == "*":
            if _db_matches(schema, db):
                db_privs |= privs
            if _db_matches(schema, "mysql") and privs & {"ALL", "SELECT"}:
                proc_select = True
        elif schema == "mysql" and table == "proc" and privs & {"ALL", "SELECT"}:
            proc_select = True
        elif schema == db:
            table_privs.setdefault(table, set()).update(privs)
    wide = global_privs | db_privs
    to = _account(user)
    hidden = []
    unlisted = "ALL" not in wide and not wide & TABLE_LISTING
    if unlisted:
        hidden.append(Hidden("tables", "tables and views it holds no grant on",
                             f"GRANT SELECT, SHOW VIEW ON {_ident(db)}.* TO {to}"))  # fmt: skip
    if "ALL" not in wide and "TRIGGER" not in wide:
        # An unlisted table's triggers are hidden too, whatever `tables` (the listed ones) say.
        if unlisted or any(not table_privs.get(t, set()) & {"ALL", "TRIGGER"} for t in tables):
            hidden.append(
                Hidden("triggers", "triggers", f"GRANT TRIGGER ON {_ident(db)}.* TO {to}")
            )
    routines_listed = "ALL" in wide or bool(wide & _ROUTINE_LISTING)
    if not (routines_listed or proc_select or global_privs & {"SELECT", "SHOW_ROUTINE"}):
        hidden.append(Hidden("routines", "stored procedures and functions it did not define",
                             routine_grant(db, user, server_version)))  # fmt: skip
    return hidden


def routine_grant(db: str, user: str, server_version: str) -> str:
    """The read-only grant that lists, and lets the dump tool read, every routine of `db`,
    for account `user` ("name@host", CURRENT_USER()) on a server of `server_version`."""
    to = _account(user)
    m = re.match(r"(\d+)\.(\d+)\.(\d+)", server_version)
    version = tuple(int(p) for p in m.groups()) if m else (0, 0, 0)
    if "mariadb" in server_version.lower():
        if version >= (11, 3, 0):
            return f"GRANT SHOW CREATE ROUTINE ON {_ident(db)}.* TO {to}"
        return f"GRANT SELECT ON mysql.proc TO {to}"
    if version >= (8, 0, 20):
        return f"GRANT SHOW_ROUTINE ON *.* TO {to}"
    if version >= (8, 0, 0):
        return f"GRANT SELECT ON *.* TO {to}"  # no mysql.proc in MySQL 8's data dictionary
    return f"GRANT SELECT ON mysql.proc TO {to}"


def _account(user: str) -> str:
    """`CURRENT_USER()` ("name@host"; the name may hold "@", the host may not) as an
    account name for GRANT; CURRENT_USER when it is unknown."""
    name, at, host = user.rpartition("@")
    if not at:
        return "CURRENT_USER"
    return f"{_string(name)}@{_string(host)}"


def _string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def dump_advice(stderr: bytes, db: str, user: str, server_version: str) -> str | None:
    """What to grant when the dump tool failed because it may not read a routine's body
    (it lists routines it may not read when the user holds EXECUTE, ALTER ROUTINE or
    CREATE ROUTINE but is not their definer); None for any other failure."""
    if not _UNREADABLE_ROUTINE.search(stderr):
        return None
    return f"run {routine_grant(db, user, server_version)}"
