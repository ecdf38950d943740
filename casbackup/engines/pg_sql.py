"""SQL from PostgreSQL's own tools, run statement by statement with each failure named.

Two scripts are applied this way: the cluster globals (`pg_dumpall --globals-only`: roles,
role memberships, tablespaces) and a dump's privileges (its ACL and DEFAULT ACL entries, as
`pg_restore` prints them). Both may legitimately fail in part on another server: a GRANT to a
role that does not exist there, a tablespace whose folder is missing. Run by `psql -f`, the
first error would stop everything or be lost in the output; here every statement runs in its
own sub-transaction and each failure comes back as (statement, error), for a warning that
names it.

The text comes from a repository, so it is untrusted: it is split into statements here (single
quotes, E'' strings, double-quoted identifiers and `--` comments understood), and each statement
reaches the server only as a quoted literal inside a DO block that this module writes. psql
therefore never interprets anything of it (no backslash command, no `:variable`), whatever the
text holds. A line that is a psql command other than the `\\restrict`/`\\unrestrict` pair the
tools themselves emit is refused, as is a statement over `MAX_STATEMENT` bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from casbackup.errors import DatabaseError

MAX_STATEMENT = 1 << 20  # bytes: a GRANT or CREATE ROLE is a few hundred
MAX_SCRIPT = 256 << 20  # bytes of globals or privileges text read into memory at most
_MARK = "casb-failed"
_SKIP_PREFIXES = ("SET ", "SELECT pg_catalog.set_config(")


@dataclass(frozen=True)
class Failure:
    """A statement the server refused: its index in the list run, the statement as it is
    named (`short`) and the server's error."""

    index: int
    statement: str
    error: str

    def describe(self) -> str:
        return f"{self.statement}: {self.error}"


def split_statements(text: str) -> list[str]:
    """The SQL statements of a script, each without its final `;`, comments removed.

    DatabaseError for psql commands (other than \\restrict/\\unrestrict lines), an
    unterminated quote, or a statement over MAX_STATEMENT.
    """
    out: list[str] = []
    buf: list[str] = []
    size = 0
    i, n = 0, len(text)
    while i < n:
        plain = _PLAIN.match(text, i)
        if plain:
            piece, i = plain.group(), plain.end()
        else:
            ch = text[i]
            if ch == "\\":
                line_start = i == 0 or text[i - 1] == "\n"
                end = text.find("\n", i)
                line = text[i : n if end < 0 else end]
                if not (line_start and not "".join(buf).strip() and _TOOL_COMMAND.fullmatch(line)):
                    raise DatabaseError(f"SQL script holds a psql command ({line[:40]!r}); refused")
                i = n if end < 0 else end + 1
                continue
            if ch == "-" and text.startswith("--", i):
                end = text.find("\n", i)
                i = n if end < 0 else end
                continue
            if ch == ";":
                _flush(buf, out)
                size = 0
                i += 1
                continue
            if ch in "'\"":
                escapes = (
                    ch == "'" and i > 0 and text[i - 1] in "eE" and not _ident_char(text, i - 2)
                )
                j = _quote_end(text, i, ch, escapes)
                piece, i = text[i:j], j
            else:
                piece, i = ch, i + 1
        buf.append(piece)
        size += len(piece)
        if size > MAX_STATEMENT:
            raise DatabaseError(f"SQL script holds a statement over {MAX_STATEMENT} bytes; refused")
    _flush(buf, out)
    return out


_PLAIN = re.compile(r"[^'\";\\-]+")
_TOOL_COMMAND = re.compile(r"\\(un)?restrict [A-Za-z0-9]+\s*")


def _ident_char(text: str, i: int) -> bool:
    return i >= 0 and (text[i].isalnum() or text[i] in "_$")


def _quote_end(text: str, start: int, quote: str, escapes: bool) -> int:
    i = start + 1
    while True:
        j = text.find(quote, i)
        if escapes:
            k = text.find("\\", i)
            if 0 <= k < j or (k >= 0 and j < 0):
                i = k + 2
                continue
        if j < 0:
            raise DatabaseError("SQL script ends inside a quoted string; refused")
        if text.startswith(quote * 2, j):
            i = j + 2
            continue
        return j + 1


def _flush(buf: list[str], out: list[str]) -> None:
    statement = "".join(buf).strip()  # never collapsed: quoted strings keep their spaces
    buf.clear()
    if statement:
        out.append(statement)


def literal(value: str) -> str:
    """A standard-conforming string literal (the session sets standard_conforming_strings)."""
    return "'" + value.replace("'", "''") + "'"


def guarded_script(statements: Sequence[str]) -> str:
    """A psql script running each statement in its own sub-transaction; a failure is
    reported as a WARNING carrying the statement's index, and the script goes on.

    Session settings the tools emit (`SET ...`, `set_config`) are left out: the script sets
    what it needs, and every object name in pg_dump's output is schema-qualified."""
    lines = [
        "SET default_transaction_read_only = off;",
        "SET standard_conforming_strings = on;",
        "SET client_min_messages = warning;",
        "SET check_function_bodies = false;",
    ]
    for index, statement in enumerate(statements):
        if statement.startswith(_SKIP_PREFIXES):
            continue
        lines.append(f"DO {literal(_do_body(index, statement))};")
    return "\n".join(lines) + "\n"


def _do_body(index: int, statement: str) -> str:
    return (
        f"BEGIN EXECUTE {literal(statement)}; "
        f"EXCEPTION WHEN OTHERS THEN RAISE WARNING '{_MARK} {index}: %', SQLERRM; END"
    )


_FAILED = re.compile(rf"WARNING:\s+{_MARK} (\d+): (.*)")


def parse_failures(stderr: str, statements: Sequence[str]) -> list[Failure]:
    """The failures a `guarded_script` run reported on stderr, in statement order."""
    out: list[Failure] = []
    for line in stderr.splitlines():
        m = _FAILED.search(line)
        if m and int(m.group(1)) < len(statements):
            index = int(m.group(1))
            out.append(Failure(index, short(statements[index]), m.group(2).strip()))
    return out


def short(statement: str, limit: int = 120) -> str:
    """A statement as it is named in a warning: one line, a password never shown."""
    text = re.sub(r"PASSWORD\s+'(?:[^']|'')*'", "PASSWORD '...'", statement, flags=re.I)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- names in statements ---------------------------------------------------------------------

_TOKEN = re.compile(r'\s*("(?:[^"]|"")*"|[A-Za-z_][A-Za-z0-9_$]*|[^\sA-Za-z_"])')
_NOT_ROLES = frozenset({"public", "current_user", "session_user", "current_role"})


def tokens(statement: str) -> Iterator[tuple[str, bool]]:
    """(token, was_quoted) pairs: identifiers unquoted and case-folded as the server does."""
    pos = 0
    while m := _TOKEN.match(statement, pos):
        tok = m.group(1)
        pos = m.end()
        if tok.startswith('"'):
            yield tok[1:-1].replace('""', '"'), True
        elif tok[0].isalpha() or tok[0] == "_":
            yield tok.lower(), False
        else:
            yield tok, False


def _role_list(toks: list[tuple[str, bool]], start: int) -> Iterator[str]:
    """Role names from toks[start]: `a, "B", c` up to a keyword or the end."""
    i = start
    while i < len(toks):
        name, quoted = toks[i]
        if not quoted and name in ("with", "granted", "cascade", "restrict", "in"):
            return
        if quoted or name not in _NOT_ROLES:
            yield name
        if i + 1 < len(toks) and toks[i + 1] == (",", False):
            i += 2
            continue
        return


def referenced_roles(statements: Iterable[str]) -> set[str]:
    """Roles that GRANT/REVOKE/ALTER DEFAULT PRIVILEGES statements need to exist: grantees,
    revokees, grantors (GRANTED BY) and FOR ROLE targets. PUBLIC and CURRENT_USER are not
    roles; names starting with pg_ are built in on every server and left out too."""
    roles: set[str] = set()
    for statement in statements:
        toks = list(tokens(statement))
        words = [t if not q else "" for t, q in toks]
        if not words or words[0] not in ("grant", "revoke", "alter"):
            continue
        verb = words[0]  # ALTER DEFAULT PRIVILEGES ... GRANT|REVOKE: the later word counts
        for i, word in enumerate(words):
            if word in ("grant", "revoke") and verb == "alter":
                verb = word
            if word == "for" and i + 1 < len(words) and words[i + 1] in ("role", "user"):
                roles.update(_role_list(toks, i + 2))
            elif word == "to" and verb == "grant" or word == "from" and verb == "revoke":
                roles.update(_role_list(toks, i + 1))
            elif word == "granted" and i + 1 < len(words) and words[i + 1] == "by":
                roles.update(_role_list(toks, i + 2))
    return {r for r in roles if not r.startswith("pg_")}


def created_roles(statements: Iterable[str]) -> dict[str, int]:
    """Role name -> index of its `CREATE ROLE` statement, in a globals script."""
    out: dict[str, int] = {}
    for index, statement in enumerate(statements):
        toks = list(tokens(statement))
        if len(toks) >= 3 and [t for t, _ in toks[:2]] == ["create", "role"] and not toks[0][1]:
            out[toks[2][0]] = index
    return out


def role_of(statement: str) -> str | None:
    """The role an `ALTER ROLE x ...`, `COMMENT ON ROLE x`, `SECURITY LABEL ... ON ROLE x`
    statement changes, else None."""
    toks = list(tokens(statement))
    words = [t if not q else "" for t, q in toks]
    if words[:2] == ["alter", "role"] and len(toks) > 2:
        return toks[2][0]
    if "on" in words:
        i = words.index("on")
        if words[0] in ("comment", "security") and words[i + 1 : i + 2] == ["role"]:
            return toks[i + 2][0] if len(toks) > i + 2 else None
    return None
