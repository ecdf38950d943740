"""SQL text for MySQL/MariaDB: quoted names and values, row counts, character set clauses.

Names and values reach SQL only through these: an identifier in backquotes (doubled inside),
a value as a hex literal (no escaping to get wrong, whatever the sql_mode), and names read
back from a repository only when they are plain identifiers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from casbackup.errors import DatabaseError


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def hex_literal(value: str) -> str:
    # A hex literal needs no escaping whatever the sql_mode (NO_BACKSLASH_ESCAPES or not).
    return f"CONVERT(X'{value.encode('utf-8').hex()}' USING utf8mb4)"


def count_sql(db: str, tables: list[str]) -> str:
    """One statement: (hex of the table name, COUNT(*)) per table of `db`, UNION ALL."""
    return " UNION ALL ".join(
        f"SELECT HEX({hex_literal(t)}), COUNT(*) FROM {quote_ident(db)}.{quote_ident(t)}"
        for t in tables
    )


def parse_counts(lines: list[str]) -> dict[str, int]:
    """Table name -> rows, from the tab-separated output of `count_sql`."""
    counts: dict[str, int] = {}
    for line in lines:
        hexname, _, count = line.partition("\t")
        counts[bytes.fromhex(hexname).decode("utf-8")] = int(count)
    return counts


_NAME = re.compile(r"[A-Za-z0-9_]{1,64}")


def charset_clause(properties: Mapping[str, object]) -> str:
    """`` CHARACTER SET x COLLATE y`` from recorded properties; names come from a
    repository, so anything but a plain identifier raises instead of reaching SQL."""
    if not isinstance(properties, Mapping):
        raise DatabaseError("the dump's recorded properties are malformed")
    clause = ""
    for key, keyword in (("charset", "CHARACTER SET"), ("collation", "COLLATE")):
        value = properties.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str) or not _NAME.fullmatch(value):
            raise DatabaseError(f"the dump's recorded {key} {value!r} is not a valid name")
        clause += f" {keyword} {value}"
    return clause
