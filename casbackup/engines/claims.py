"""Databases a restore is still loading, and the sweep of those a killed restore left behind.

A restore never loads into a database it has not made whole yet under a name a user relies
on. It loads into a temporary database, `casbackup_restore_<12 hex>`, renamed (PostgreSQL) or
copied (MariaDB/MySQL, which cannot rename a database) into place once loaded; a MariaDB
restore into a database it creates loads there directly, marked by a table of that name. A
restore that fails drops what it made; one that is SIGKILLed (or whose machine dies) cannot,
and its database stays behind: a temporary holding a full copy of the data, or a half-loaded
new database. The next restore onto the same server removes them, and only them:

- Ours: the name (or, for a new MariaDB database, a table in it) is exactly
  `casbackup_restore_` and 12 lowercase hex digits (`TEMP_NAME`).
- Surely dead: a restore holds a server-side lock named after its temporary from before it
  creates anything until it has dropped or renamed it (`Claim`): a PostgreSQL advisory lock
  (`pg_advisory_lock(CLASS_ID, objid)`, visible to every session in `pg_locks`, whatever
  database it was taken in), a MariaDB/MySQL `GET_LOCK(name)` (server-wide,
  `IS_USED_LOCK(name)`). The server drops the lock with the holder's connection, so a
  database whose lock nobody holds belongs to a restore that ended without cleaning up; one
  whose lock is held belongs to a live restore, on this machine or any other sharing the
  server, and is left alone. A holder whose machine lost power keeps its lock until the
  server notices the dead connection (TCP keepalive): its leftovers are swept later, never
  too early.

A database some session is connected to (`pg_stat_activity`, MariaDB's processlist as far
as the user may see it) is left alone too: a load is running there, perhaps by a casbackup
from before these locks, or a just-killed restore's session has not ended yet; a later restore
removes it. (PostgreSQL would refuse to drop it anyway; the sweep never forces that.)
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

from casbackup.engines.process import ClientSession
from casbackup.errors import DatabaseError

TEMP_PREFIX = "casbackup_restore_"
TEMP_NAME = re.compile(r"casbackup_restore_[0-9a-f]{12}")
#: PostgreSQL advisory lock class of restore claims ("casb"): pg_locks.classid.
CLASS_ID = 0x63617362


def temporary_name() -> str:
    """A fresh temporary name (48 random bits: two restores never pick the same)."""
    return TEMP_PREFIX + secrets.token_hex(6)


def pg_lock_ids(name: str) -> tuple[int, int]:
    """(class id, object id) of a temporary's PostgreSQL advisory lock, as int4 arguments
    of pg_advisory_lock(int4, int4): the object id is the name's first 32 random bits."""
    objid = int(name[len(TEMP_PREFIX) : len(TEMP_PREFIX) + 8], 16)
    return CLASS_ID, objid - (1 << 32) if objid >= 1 << 31 else objid


class Claim:
    """A client session holding the lock of temporary `name` until `close()`.

    `open_session()` starts the engine's client (psql or mariadb) in batch mode; `lock_sql`
    takes the lock and prints one line, `t`/`1` when it was taken. DatabaseError when the
    client cannot start or the lock is taken already (a 48-bit collision, or a hostile
    holder): the restore then does not start."""

    def __init__(
        self, name: str, open_session: Callable[[], ClientSession], lock_sql: str, what: str
    ) -> None:
        self.name = name
        self._session = open_session()
        try:
            answer = self._session.query(lock_sql)
        except BaseException:
            self._session.close()
            raise
        if [a.strip() for a in answer if a.strip()] not in (["t"], ["1"]):
            self._session.close()
            raise DatabaseError(f"{what}: the lock of temporary database {name} is taken")

    def close(self) -> None:
        """Release the lock (ending the session releases it; idempotent)."""
        self._session.close()

    def __enter__(self) -> Claim:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pg_claim_sql(name: str) -> str:
    cls, obj = pg_lock_ids(name)
    return f"SELECT pg_try_advisory_lock({cls}, {obj});"


# Databases named like a temporary, and the object ids of the claims held now (objsubid 2:
# the (int4, int4) form). One statement: both answers come from one moment's catalog.
PG_CANDIDATES_SQL = (
    "SELECT 'd', datname FROM pg_database d WHERE datname ~ '^casbackup_restore_[0-9a-f]{12}$' "
    "AND NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = d.datname) "
    "UNION ALL SELECT 'l', objid::text FROM pg_locks WHERE locktype = 'advisory' "
    f"AND objsubid = 2 AND classid = {CLASS_ID} AND granted;"
)


def pg_dead(lines: list[str]) -> list[str]:
    """The temporaries of a `PG_CANDIDATES_SQL` answer (psql -A -t lines) that no live
    restore claims."""
    names, held = [], set()
    for line in lines:
        kind, _, value = line.partition("|")
        if kind == "d" and TEMP_NAME.fullmatch(value):
            names.append(value)
        elif kind == "l" and value.isdigit():
            held.add(int(value))
    return sorted(n for n in names if pg_lock_ids(n)[1] % (1 << 32) not in held)


def my_claim_sql(name: str) -> str:
    return f"SELECT GET_LOCK('{name}', 0);"  # the name is TEMP_NAME: nothing to quote


# Schemas that are a temporary, and schemas holding a marker table (a new database being
# loaded), whose lock nobody holds: (HEX(schema), kind) rows.
MY_DEAD_SQL = (
    "SELECT HEX(schema_name), 'temporary' FROM information_schema.schemata "
    "WHERE schema_name REGEXP '^casbackup_restore_[0-9a-f]{12}$' "
    "AND IS_USED_LOCK(schema_name) IS NULL AND schema_name NOT IN (SELECT db FROM "
    "information_schema.processlist WHERE db IS NOT NULL) "
    "UNION ALL SELECT HEX(table_schema), 'new' FROM information_schema.tables "
    "WHERE table_name REGEXP '^casbackup_restore_[0-9a-f]{12}$' "
    "AND IS_USED_LOCK(table_name) IS NULL AND table_schema NOT IN (SELECT db FROM "
    "information_schema.processlist WHERE db IS NOT NULL);"
)


def my_dead(lines: list[str]) -> list[tuple[str, str]]:
    """(database, "temporary" or "new") of a `MY_DEAD_SQL` answer."""
    out = set()
    for line in lines:
        hexname, _, kind = line.partition("\t")
        try:
            name = bytes.fromhex(hexname).decode("utf-8")
        except ValueError:
            continue
        if kind in ("temporary", "new"):
            out.add((name, kind))
    return sorted(out)


def swept_warning(what: str, name: str, kind: str, error: DatabaseError | None) -> str:
    """The line a user sees for each leftover: removed, or why not."""
    left = (
        f"database {name}, half loaded by a restore that was killed"
        if kind == "new"
        else f"temporary database {name} of a restore that was killed"
    )
    if error is None:
        return f"{what}: removed {left}"
    return f"{what}: could not remove {left}: {error}; drop it by hand"
