"""MySQL/MariaDB: what the dumping user cannot see, which the dump tool leaves out in silence.

`mariadb-dump --triggers --routines` dumps the triggers and routines the user can see, and
nothing tells it about the others: without the TRIGGER privilege a table's triggers are not
listed, and without any privilege on a routine (EXECUTE, ALTER ROUTINE, SELECT on mysql.proc,
a global SELECT) the routine is not listed either. The dump then ends with its trailer and
exit status 0, and the backup is recorded as complete (found with a backup user granted
`SELECT, LOCK TABLES, SHOW VIEW, EVENT ON db.*`: a trigger and a procedure missing from the
dump, the backup green).

`hidden_kinds` reads the user's `SHOW GRANTS` (its own grants and its enabled roles') and says
which kinds of objects may be hidden from it. (A routine that is listed but whose body the user
may not read is not silent: mariadb-dump 10.11 exits 2, "insufficient privileges to SHOW
CREATE PROCEDURE".)
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_NAME = r"(?:\*|`(?:[^`]|``)*`)"
_GRANT = re.compile(
    rf"^GRANT (.+?) ON (?:(?:PROCEDURE|FUNCTION|PACKAGE(?: BODY)?) )?({_NAME})\.({_NAME}) TO "
)
_ROUTINE_LISTING = frozenset({"EXECUTE", "ALTER ROUTINE", "SHOW CREATE ROUTINE"})


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


def hidden_kinds(grant_lines: Iterable[str], db: str, tables: Iterable[str]) -> list[str]:
    """What of database `db` the user whose `SHOW GRANTS` these are may not see, each as
    "<objects> (<the grant that shows them>)"; [] when nothing is hidden."""
    global_privs: set[str] = set()
    db_privs: set[str] = set()
    proc_select = False
    table_privs: dict[str, set[str]] = {}
    for line in grant_lines:
        m = _GRANT.match(line)
        if not m:
            continue  # role grants ("GRANT `r` TO ..."), proxies
        privs, schema, table = _privileges(m.group(1)), _unquote(m.group(2)), _unquote(m.group(3))
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
    hidden = []
    if "ALL" not in wide and "TRIGGER" not in wide:
        if any(not table_privs.get(t, set()) & {"ALL", "TRIGGER"} for t in tables):
            hidden.append(f"triggers (GRANT TRIGGER ON {_ident(db)}.*)")
    routines_listed = "ALL" in wide or bool(wide & _ROUTINE_LISTING)
    if not (routines_listed or proc_select or global_privs & {"SELECT", "SHOW_ROUTINE"}):
        hidden.append("stored procedures and functions (MariaDB: GRANT SELECT ON mysql.proc; "
                      "MySQL 8: GRANT SHOW_ROUTINE ON *.*)")  # fmt: skip
    return hidden


def _ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"
