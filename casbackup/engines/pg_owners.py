"""PostgreSQL: the owners and database-level properties a `--no-owner` restore leaves out.

The data loads with `pg_restore --no-owner` (a role missing on this server must not sink the
restore), so every object came back owned by the restoring user: with a superuser restoring, an
application connecting as its own role could no longer read its own tables. And a dump loaded
without `--create` drops what belongs to the database itself: `ALTER DATABASE ... SET`
(search_path, TimeZone, ...), `ALTER ROLE ... IN DATABASE ... SET`, its comment, its owner and
its GRANT/REVOKE (CONNECT ...), although the custom dump holds them all.

After the load, this pass reads them from the dump's table of contents (the prefix the privileges
pass keeps, pg_globals.AclPass: `pg_restore --create` prints every entry but the data) and
applies them statement by statement, each refusal a warning naming it (pg_sql.py): the
`ALTER ... OWNER TO` that pg_restore writes as the last statement of each object's entry, and,
when the restore created the database, the database-level statements, renamed to the database
restored into. Only statements of those shapes are applied; anything else in the text is
ignored.
"""

from __future__ import annotations

import codecs
import re

from casbackup.engines.pg_sql import split_statements
from casbackup.engines.process import find_tool, run_tool

_HEADER = re.compile(r"^--\n-- Name: (.*); Type: (.*); Schema: .*; Owner: .*\n--\n", re.M)
_OWNER = re.compile(r"ALTER [A-Z][A-Z ]* .+ OWNER TO .+;")
_DATA_ENTRY = re.compile(rb"^\d+; \d+ \d+ (TABLE DATA|BLOBS|LARGE OBJECTS) ")
_IDENT = r'(?:"(?:[^"]|"")*"|[^\s"]+)'
# Where a database-level statement names the database (group 1 ends just before the name).
_DATABASE_FORMS = (
    re.compile(rf"^(ALTER DATABASE )({_IDENT})( (?:SET|RESET|OWNER TO) .*)$", re.S),
    re.compile(rf"^(ALTER ROLE {_IDENT} IN DATABASE )({_IDENT})( (?:SET|RESET) .*)$", re.S),
    re.compile(rf"^(COMMENT ON DATABASE )({_IDENT})( IS .*)$", re.S),
    re.compile(rf"^((?:GRANT|REVOKE) [A-Z ,]+ ON DATABASE )({_IDENT})( (?:TO|FROM) .*)$", re.S),
)
MAX_WARNINGS = 10  # warnings of one pass shown one by one; the rest are counted


def toc_script(pg_restore_env: dict[str, str], prefix_path: str, list_path: str, what: str) -> str:
    """Every entry of the dump but its data, as pg_restore --create prints it (text decoded
    as latin-1: bytes kept 1:1 whatever the dump's encoding)."""
    pg_restore = find_tool("pg_restore")
    listing = run_tool([pg_restore, "--create", "-l", prefix_path], what=what, env=pg_restore_env)
    lines = [ln for ln in listing.splitlines() if ln and not ln.startswith(b";")]
    with open(list_path, "wb") as f:
        f.write(b"\n".join(ln for ln in lines if not _DATA_ENTRY.match(ln)) + b"\n")
    sql = run_tool([pg_restore, "--create", "-L", list_path, "-f", "-", prefix_path],
                   what=what, env=pg_restore_env)  # fmt: skip
    return sql.decode("latin-1")


def _blocks(text: str) -> list[tuple[str, str, str]]:
    """(name, type, body) per entry; a body ends at its first psql command line."""
    heads = list(_HEADER.finditer(text))
    out = []
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        body = text[m.end() : end]
        cut = re.search(r"^\\", body, re.M)
        out.append((m.group(1), m.group(2), body[: cut.start()] if cut else body))
    return out


def owner_statements(text: str) -> list[str]:
    """The `ALTER ... OWNER TO` closing each object's entry (never one inside a function's
    body: only the entry's last statement counts)."""
    out = []
    for _name, kind, body in _blocks(text):
        if kind.startswith("DATABASE"):
            continue
        # Comments too: the dump's last entry ends with "-- PostgreSQL database dump
        # complete", which hid its owner (the last object of every dump kept the owner of
        # whoever restored it, without a warning).
        lines = [ln for ln in body.splitlines() if ln.strip() and not ln.startswith(("SET ", "--"))]
        if lines and _OWNER.fullmatch(lines[-1]):
            out.append(lines[-1][:-1])
    return out


def database_statements(text: str, target: str, encoding: str) -> list[str]:
    """The database's own settings, comment, owner and privileges, renamed to `target`."""
    out = []
    for name, kind, body in _blocks(text):
        if kind == "DATABASE":
            statements = [s for s in split_statements(body) if s.startswith("ALTER DATABASE ")]
        elif kind == "DATABASE PROPERTIES" or (
            kind in ("COMMENT", "ACL") and name.startswith("DATABASE ")
        ):
            statements = split_statements(body)
        else:
            continue
        for statement in statements:
            renamed = _renamed(statement, target, encoding)
            if renamed is not None:
                out.append(renamed)
    return out


def _renamed(statement: str, target: str, encoding: str) -> str | None:
    for form in _DATABASE_FORMS:
        m = form.match(statement)
        if m:
            return m.group(1) + _ident_text(target, encoding) + m.group(3)
    return None


def _ident_text(name: str, encoding: str) -> str:
    """`name` quoted, as the latin-1 text of its bytes in the dump's encoding."""
    quoted = '"' + name.replace('"', '""') + '"'
    try:
        codec = "utf-8" if encoding.upper() in ("UTF8", "UNICODE") else codecs.lookup(encoding).name
        return quoted.encode(codec).decode("latin-1")
    except (LookupError, UnicodeEncodeError):
        return quoted.encode("utf-8").decode("latin-1")


def capped(warnings: list[str], what: str) -> list[str]:
    """At most MAX_WARNINGS warnings, the rest counted in one more line."""
    if len(warnings) <= MAX_WARNINGS:
        return warnings
    rest = len(warnings) - MAX_WARNINGS
    return [*warnings[:MAX_WARNINGS], f"{what}: {rest} more not restored (like the ones above)"]
