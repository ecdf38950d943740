"""PostgreSQL: `pg_dump --format=custom --compress=0`, streamed from its stdout.

Why custom format without compression: the custom format restores selectively and in one
transaction with `pg_restore`, and unlike plain SQL (since 15.14/16.10/17.6) it carries no random
`\\restrict` key, so two dumps of unchanged data differ only in the header's creation time and
deduplicate. Its default zlib compression would defeat deduplication (borg #2813; ANCHORS.md
measured a clustered 1% change adding 13-18 MB instead of about 5): the repository compresses
chunks itself, after deduplication.

Consistency of row counts: a `psql` session opens a REPEATABLE READ transaction, exports its
snapshot (`pg_export_snapshot()`), counts every table's rows in it, and stays open while
`pg_dump --snapshot=ID` dumps that very snapshot. The counts therefore describe exactly the data
in the dump, which is what verification compares against after a restore.

Cluster globals and privileges (roles, memberships, tablespaces; GRANTs applied after the
data, each failure a warning): see pg_globals.py. Options, in the config's `options` table:
- `globals` (true/false, default true): keep `pg_dumpall --globals-only` with the dump as
  `/.databases/<name>.globals.sql`; `db restore` and `recover` create the roles it names
  that the server lacks before loading the dump.
- `allow_empty`: record a database without tables instead of refusing it.
- `maintenance_database` (default postgres): where CREATE/DROP DATABASE and globals run.
- `sslmode`, `connect_timeout`: passed to libpq.
- `lock_wait_timeout` (seconds, default 60): how long the row counts and pg_dump may wait
  for a table another session holds locked (a migration's ACCESS EXCLUSIVE, a forgotten
  `LOCK TABLE`) before the dump fails; without it a lock never let go hung the backup.

Each dump records the server's version and the pg_dump that made it (properties
"dump_tool"); a restore with an older pg_restore warns.

Credentials: the password reaches the children only as `PGPASSWORD` in their environment, never
argv (visible in `ps`); `--no-password` makes a missing password fail instead of prompting.
Connection parameters go in a libpq conninfo string whose values are quoted, so a database
named `my-db "x"` or `a=b` is never parsed as anything else.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import BinaryIO

from casbackup.engines.base import (
    NOT_EMPTY_HINT,
    DatabaseSpec,
    DumpInfo,
    DumpStream,
    RestoreInfo,
    checked_option,
    older_tool_warning,
    resolve_password,
    tool_record,
)
from casbackup.engines.claims import (
    PG_CANDIDATES_SQL,
    Claim,
    pg_claim_sql,
    pg_dead,
    swept_warning,
    temporary_name,
)
from casbackup.engines.pg_archive import CustomDumpCheck
from casbackup.engines.pg_globals import (
    AclPass,
    apply_acls,
    apply_globals,
    dump_globals,
    dump_roles,
    globals_file_name,
    utf8_env,
)
from casbackup.engines.pg_owners import (
    capped,
    database_statements,
    owner_statements,
    toc_script,
)
from casbackup.engines.process import (
    ClientSession,
    ProcessDumpStream,
    child_env,
    feed_tool,
    find_tool,
    run_tool,
)
from casbackup.errors import DatabaseError

MAGIC = b"PGDMP"
KNOWN_OPTIONS = frozenset(
    {"allow_empty", "maintenance_database", "sslmode", "connect_timeout", "globals",
     "lock_wait_timeout"}
)  # fmt: skip
_BOOLEANS = ("1", "0", "true", "false", "yes", "no", "on", "off")
# Row counts as (hex of schema.table, count) so that any name survives psql's text output.
_COUNT_SQL = """SELECT encode(convert_to(n.nspname || '.' || c.relname, 'UTF8'), 'hex'),
 (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I',
   n.nspname, c.relname), false, true, '')))[1]::text
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND NOT c.relispartition
ORDER BY 1;"""


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    # standard_conforming_strings is on since 9.1: only the quote needs doubling.
    return "'" + value.replace("'", "''") + "'"


def _conninfo_value(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def conninfo(spec: DatabaseSpec, dbname: str | None = None) -> str:
    parts = {
        "host": spec.host,
        "port": str(spec.port) if spec.port else None,
        "user": spec.user,
        "dbname": dbname if dbname is not None else spec.database,
        "sslmode": spec.options.get("sslmode"),
        "connect_timeout": spec.options.get("connect_timeout", "30"),
        "application_name": "casbackup",
    }
    return " ".join(f"{k}={_conninfo_value(v)}" for k, v in parts.items() if v)


def pg_env(spec: DatabaseSpec) -> dict[str, str]:
    password = resolve_password(spec)
    env = child_env()
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def check_option(key: str, value: str) -> str | None:
    """Why an option's value is wrong (for config validation), else None."""
    if key in ("globals", "allow_empty") and value.strip().lower() not in _BOOLEANS:
        return f"must be true or false, not {value!r}"
    if key == "lock_wait_timeout" and not (value.isdigit() and 1 <= int(value) <= 86400):
        return f"must be a number of seconds from 1 to 86400, not {value!r}"
    return None


def _lock_advice(wait: int) -> Callable[[bytes], str | None]:
    """What to say when a statement gave up waiting for a lock (psql's error is followed by
    its query's context lines, which hide it)."""

    def advise(err: bytes) -> str | None:
        if b"canceling statement due to lock timeout" not in err:
            return None
        return (f"a table stayed locked by another session for over "
                f"options.lock_wait_timeout = {wait} s")  # fmt: skip

    return advise


def _lock_wait(spec: DatabaseSpec) -> int:
    """options.lock_wait_timeout in seconds (default 60); DatabaseError when malformed."""
    return int(checked_option(spec, "lock_wait_timeout", "60", check_option))


def globals_enabled(spec: DatabaseSpec) -> bool:
    """options.globals, default on; a value that is no boolean fails (a typo must not turn
    the roles' backup off silently)."""
    problem = check_option("globals", spec.options.get("globals", "true"))
    if problem:
        raise DatabaseError(f"database {spec.name!r}: options.globals {problem}")
    return spec.option_bool("globals", True)


def _major(version_num: int) -> int:
    # server_version_num: 150020 for 15.20, 90624 for 9.6.24 (major "9.6" compares as 9).
    return version_num // 10000


def _require_db(spec: DatabaseSpec) -> str:
    if not spec.database:
        raise DatabaseError(f"database {spec.name!r}: postgresql needs a database name")
    return spec.database


class _SnapshotSession(ClientSession):
    """A psql session holding an exported snapshot open until `close()` (EOF on its
    stdin ends psql, which rolls the transaction back)."""

    def __init__(
        self,
        psql: str,
        spec: DatabaseSpec,
        env: dict[str, str],
        advise: Callable[[bytes], str | None] | None = None,
    ) -> None:
        argv = [psql, "-X", "-q", "-A", "-t", "--no-password", "-v", "ON_ERROR_STOP=1",
                "-d", conninfo(spec)]  # fmt: skip
        super().__init__(
            argv, what=f"database {spec.name!r}", tool="psql", end_sql="\\echo {end}",
            env=env, keep_blank=False, advise=advise,
        )  # fmt: skip


def _parse_counts(lines: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in lines:
        hexname, _, count = line.partition("|")
        counts[bytes.fromhex(hexname).decode("utf-8")] = int(count)
    return counts


class PostgresEngine:
    name = "postgresql"

    def check_available(self) -> None:
        for tool in ("pg_dump", "pg_restore", "psql"):
            find_tool(tool)

    def _psql_argv(self, spec: DatabaseSpec, dbname: str | None = None) -> list[str]:
        return [find_tool("psql"), "-X", "-q", "-A", "-t", "--no-password",
                "-d", conninfo(spec, dbname)]  # fmt: skip

    def _psql(self, spec: DatabaseSpec, sql: str, dbname: str | None = None) -> list[str]:
        argv = [*self._psql_argv(spec, dbname), "-v", "ON_ERROR_STOP=1"]
        out = run_tool(argv, what=f"database {spec.name!r}", input=sql.encode(), env=pg_env(spec))
        return [ln for ln in out.decode("utf-8", "replace").splitlines() if ln]

    def version_text(self, tool: str) -> str:
        """The first line of `tool --version` ("pg_dump (PostgreSQL) 15.20 ...")."""
        out = run_tool([find_tool(tool), "--version"], what=tool).decode("utf-8", "replace")
        return (out.strip().splitlines() or [""])[0]

    def client_version(self, tool: str = "pg_dump") -> int:
        out = self.version_text(tool)
        m = re.search(r"(\d+)(?:\.(\d+))?", out)
        if not m:
            raise DatabaseError(f"cannot parse the version of {tool}: {out.strip()!r}")
        major = int(m.group(1))
        return major * 10000 + (int(m.group(2) or 0) * 100 if major < 10 else 0)

    def _check_versions(self, spec: DatabaseSpec, server_num: int) -> None:
        client = self.client_version("pg_dump")
        if _major(client) < _major(server_num):
            raise DatabaseError(
                f"database {spec.name!r}: pg_dump {_major(client)} is older than the server "
                f"({_major(server_num)}) and cannot dump it: install postgresql-client-"
                f"{_major(server_num)} and put its pg_dump first on PATH"
            )

    def dump(self, spec: DatabaseSpec) -> DumpStream:
        _require_db(spec)
        pg_dump = find_tool("pg_dump")
        wait = _lock_wait(spec)
        env = pg_env(spec)
        session = _SnapshotSession(find_tool("psql"), spec, env, _lock_advice(wait))
        try:
            server = session.query("SHOW server_version_num; SHOW server_version;")
            server_num, server_version = int(server[0]), server[1]
            self._check_versions(spec, server_num)
            snapshot = session.query(
                f"SET lock_timeout = '{wait}s'; BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; "
                "SELECT pg_export_snapshot();"
            )[0]
            counts = _parse_counts(session.query(_COUNT_SQL))
        except BaseException:
            session.close()
            raise
        if not counts and not spec.option_bool("allow_empty"):
            session.close()
            raise DatabaseError(
                f"database {spec.name!r}: {spec.database} has no tables; refusing to record an "
                "empty dump (set options.allow_empty = true if that is expected)"
            )

        # The dump has no trailer: only its structure says whether it is whole (pg_archive.py).
        check = CustomDumpCheck(f"database {spec.name!r}")

        def validate(head: bytes, tail: bytes, size: int) -> None:
            if not head.startswith(MAGIC):
                raise DatabaseError(f"database {spec.name!r}: pg_dump output is not a custom dump")
            check.finish()

        try:
            properties = self._defaults(spec)
            properties["dump_tool"] = tool_record("pg_dump", self.version_text("pg_dump"))
        except BaseException:
            session.close()
            raise

        def make_info(size: int) -> DumpInfo:
            return DumpInfo(self.name, "pg-custom", server_version, counts, "pgdump", size,
                            True, properties)  # fmt: skip

        argv = [pg_dump, "--format=custom", "--compress=0", "--no-password",
                f"--snapshot={snapshot}", f"--lock-wait-timeout={wait}s", "--dbname",
                conninfo(spec)]  # fmt: skip
        return ProcessDumpStream(
            argv,
            what=f"database {spec.name!r}",
            env=env,
            validate=validate,
            make_info=make_info,
            on_close=session.close,
            observe=check.feed,
            advise=_lock_advice(wait),
        )

    def extra_dumps(self, spec: DatabaseSpec) -> tuple[tuple[str, Callable[[], DumpStream]], ...]:
        """Files stored beside the dump, as (file name, opener): the cluster globals when
        options.globals is on (the dump's record names them, see `dump`)."""
        if not globals_enabled(spec):
            return ()
        return (("globals", globals_file_name(spec.name), lambda: self.dump_globals(spec)),)

    def dump_globals(self, spec: DatabaseSpec) -> DumpStream:
        """`pg_dumpall --globals-only` of the database's server, as a stream."""
        maint = self._maintenance(spec)
        rows = self._psql(spec, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user; "
                                "SHOW server_version;", maint)  # fmt: skip
        superuser, version = rows[0] == "t", rows[-1]
        return dump_globals(spec, conninfo(spec, maint), pg_env(spec), superuser, version)

    def restore_globals(self, spec: DatabaseSpec, stream: BinaryIO) -> tuple[str, list[str]]:
        """Create the roles of a globals file that this server lacks, apply memberships and
        tablespaces: (a one-line summary, a warning per statement the server refused).

        Roles that exist are left untouched: not an error, and never altered."""
        maint = self._maintenance(spec)
        sql = "SELECT encode(convert_to(rolname, 'UTF8'), 'hex') FROM pg_roles;"
        existing = {
            bytes.fromhex(h).decode("utf-8", "replace") for h in self._psql(spec, sql, maint)
        }
        made, kept, warnings = apply_globals(
            spec, stream, self._psql_argv(spec, maint), pg_env(spec), existing
        )
        summary = (f"database {spec.name!r}: roles from the backup: {made} created, {kept} "
                   "already here (left as they are)")  # fmt: skip
        return summary, warnings

    def dump_roles(self, spec: DatabaseSpec, dump_file: str) -> set[str]:
        """The roles a custom dump file's privileges name (verify compares them with the
        roles the snapshot holds)."""
        return dump_roles(find_tool("pg_restore"), dump_file, utf8_env(pg_env(spec)),
                          f"dump of database {spec.name!r}")  # fmt: skip

    def _defaults(self, spec: DatabaseSpec) -> dict[str, object]:
        """The database's encoding and locale: a dump without --create does not carry them,
        and a database created with the server's defaults would sort and compare text
        differently (or refuse the data)."""
        rows = self._psql(spec, "SELECT pg_encoding_to_char(encoding), datcollate, datctype "
                                "FROM pg_database WHERE datname = current_database();")  # fmt: skip
        encoding, collate, ctype = (rows[0].split("|") + ["", "", ""])[:3] if rows else ("",) * 3
        return {"encoding": encoding, "collate": collate, "ctype": ctype} if encoding else {}

    def _create(
        self, spec: DatabaseSpec, db: str, properties: Mapping[str, object]
    ) -> tuple[str, ...]:
        """CREATE DATABASE with the recorded encoding and locale; where this server lacks
        the locale, with the encoding alone, else with its defaults (a warning each)."""
        maint = self._maintenance(spec)
        plain = f"CREATE DATABASE {quote_ident(db)}"
        options = _create_options(properties)
        if not options:
            self._psql(spec, plain + ";", maint)
            return ()
        tries = [options, options[:1]] if len(options) > 1 else [options]
        for clauses in tries:
            try:
                self._psql(spec, f"{plain} TEMPLATE template0 {' '.join(clauses)};", maint)
                break
            except DatabaseError:
                continue
        else:
            self._psql(spec, plain + ";", maint)
            return (f"database {spec.name!r}: created with the server's defaults: it refused "
                    f"the recorded {' '.join(options)}",)  # fmt: skip
        if clauses is not options:
            return (f"database {spec.name!r}: this server lacks the recorded locale; created "
                    f"with {clauses[0]} and the server's locale",)  # fmt: skip
        return ()

    def _maintenance(self, spec: DatabaseSpec) -> str:
        return spec.options.get("maintenance_database", "postgres")

    def _exists(self, spec: DatabaseSpec, db: str) -> bool:
        rows = self._psql(
            spec,
            f"SELECT 1 FROM pg_database WHERE datname = {quote_literal(db)};",
            self._maintenance(spec),
        )
        return bool(rows)

    def _table_count(self, spec: DatabaseSpec) -> int:
        sql = (
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r','p','v','m','S','f') "
            "AND n.nspname NOT IN ('pg_catalog','information_schema') "
            "AND n.nspname NOT LIKE 'pg\\_toast%';"
        )
        return int(self._psql(spec, sql)[0])

    def restore(
        self,
        spec: DatabaseSpec,
        stream: BinaryIO,
        *,
        overwrite: bool = False,
        properties: Mapping[str, object] | None = None,
    ) -> RestoreInfo:
        """Load a custom dump with `pg_restore --single-transaction --exit-on-error
        --no-privileges`, into a database created (when missing) with the recorded encoding
        and locale (``properties``), then apply its privileges statement by statement.

        One transaction means a failed restore into an existing empty database leaves it
        empty, never half-loaded (borgmatic omits it; ANCHORS.md). A database this restore
        makes (a missing one; with `overwrite`, the replacement of one with objects in it,
        which is refused otherwise) is loaded under a temporary name (claims.py) and renamed
        into place once loaded, after the old one is dropped: a failed restore drops the
        temporary and leaves the server as it was; one that was killed leaves the temporary,
        which the next restore onto the server removes (a warning names it).
        Privileges come after the data, in their own pass (pg_globals.AclPass): a GRANT to a
        role this server lacks is a warning naming it, not a failed restore. A pg_restore
        older than the recorded pg_dump is a warning too.
        """
        db = _require_db(spec)
        temp = temporary_name()
        with self._claim(spec, temp):
            warnings = self._sweep(spec)
            exists = self._exists(spec, db)
            if exists and self._table_count(spec) and not overwrite:
                raise DatabaseError(
                    f"database {spec.name!r}: {db} already exists and is not empty "
                    f"({NOT_EMPTY_HINT})"
                )
            older = older_tool_warning(f"database {spec.name!r}", properties, "pg_restore",
                                       self.version_text("pg_restore"))  # fmt: skip
            if older:
                warnings.append(older)
            if exists and not overwrite:  # empty: one transaction, nothing to undo
                fed = self._load(spec, stream, warnings, False)
            else:
                load = replace(spec, database=temp)
                warnings.extend(self._create(load, temp, properties or {}))
                try:
                    fed = self._load(load, stream, warnings, True)
                except BaseException:
                    self._drop_quietly(spec, temp)
                    raise
                self._swap(spec, temp, db, drop_old=exists)
        version = self._psql(spec, "SHOW server_version;")[0]
        return RestoreInfo(self.name, db, fed, self.row_counts(spec), version, tuple(warnings))

    def _claim(self, spec: DatabaseSpec, temp: str) -> Claim:
        """Hold the lock of temporary `temp` (claims.py) in a session of its own."""
        maint = replace(spec, database=self._maintenance(spec))
        return Claim(temp, lambda: _SnapshotSession(find_tool("psql"), maint, pg_env(spec)),
                     pg_claim_sql(temp), f"database {spec.name!r}")  # fmt: skip

    def _sweep(self, spec: DatabaseSpec) -> list[str]:
        """Drop the temporaries of restores that were killed (claims.py); a warning each."""
        what, maint = f"database {spec.name!r}", self._maintenance(spec)
        warnings = []
        for name in pg_dead(self._psql(spec, PG_CANDIDATES_SQL, maint)):
            try:
                self._psql(spec, f"DROP DATABASE IF EXISTS {quote_ident(name)};", maint)
                warnings.append(swept_warning(what, name, "temporary", None))
            except DatabaseError as exc:
                warnings.append(swept_warning(what, name, "temporary", exc))
        return warnings

    def _load(
        self, spec: DatabaseSpec, stream: BinaryIO, warnings: list[str], created: bool
    ) -> int:
        """pg_restore the dump into spec's database, then its owners, privileges and (for a
        database this restore `created`) the database's own properties: pg_owners.py. What
        the server refuses of those is a warning each."""
        argv = [find_tool("pg_restore"), "--exit-on-error", "--single-transaction",
                "--no-owner", "--no-privileges", "--no-password", "--dbname", conninfo(spec)]  # fmt: skip
        env = pg_env(spec)
        what = f"restore of database {spec.name!r}"
        acls = AclPass(what, env)
        try:
            fed = feed_tool(argv, acls.tee(stream), what=what, env=env)
            psql_argv = self._psql_argv(spec)
            try:
                statements, encoding = acls.statements()
                toc = toc_script(env, acls.prefix_path, acls.scratch_path("all.list"), what)
                own = apply_acls(spec, owner_statements(toc), encoding, psql_argv, env, "owner")
                warnings.extend(capped(own, f"database {spec.name!r}"))
                warnings.extend(apply_acls(spec, statements, encoding, psql_argv, env))
                if created:
                    props = database_statements(toc, _require_db(spec), encoding)
                    warnings.extend(apply_acls(spec, props, encoding, psql_argv, env,
                                               "database property"))  # fmt: skip
            except DatabaseError as exc:  # the data is in: say what is missing, keep it
                warnings.append(f"database {spec.name!r}: privileges not restored: {exc}")
        finally:
            acls.close()
        return fed

    def _swap(self, spec: DatabaseSpec, loaded: str, db: str, *, drop_old: bool) -> None:
        """Give `loaded` the name `db`, after dropping `db` when `drop_old`. A `db` that
        cannot be dropped (sessions still connected), or that another restore created
        meanwhile, fails the restore with the server's reason; it is left as it was, and
        `loaded` is dropped. Once the old one is dropped, `loaded` is kept whatever happens:
        it holds the only copy of the data on the server (a later restore removes it)."""
        maint = self._maintenance(spec)
        try:
            if drop_old:
                self._psql(spec, f"DROP DATABASE {quote_ident(db)};", maint)
        except BaseException:
            self._drop_quietly(spec, loaded)
            raise
        try:
            self._psql(spec, f"ALTER DATABASE {quote_ident(loaded)} RENAME TO {quote_ident(db)};",
                       maint)  # fmt: skip
        except DatabaseError as exc:
            if not drop_old:
                self._drop_quietly(spec, loaded)
                raise
            raise DatabaseError(f"database {spec.name!r}: the restored data is in database "
                                f"{loaded}, which could not be renamed to {db}: {exc}") from None  # fmt: skip

    def _drop_quietly(self, spec: DatabaseSpec, db: str) -> None:
        try:
            if self._exists(spec, db):
                self._psql(spec, f"DROP DATABASE {quote_ident(db)};", self._maintenance(spec))
        except DatabaseError:
            pass  # the restore's own error is what the user needs; a temporary may stay

    def row_counts(self, spec: DatabaseSpec) -> dict[str, int]:
        _require_db(spec)
        return _parse_counts(self._psql(spec, _COUNT_SQL))

    def holds_content(self, spec: DatabaseSpec) -> bool:
        """Whether spec's database exists and holds what `restore` refuses to replace
        without `overwrite` (tables, views, sequences, foreign tables): what a recovery plan
        checks before anything is written. Raises DatabaseError (server unreachable, ...)."""
        return self._exists(spec, _require_db(spec)) and self._table_count(spec) > 0

    def may_create_databases(self, spec: DatabaseSpec) -> bool:
        """Whether spec's account may create databases (superuser or CREATEDB): a verify's
        scratch database needs it. Raises DatabaseError (server unreachable, ...)."""
        rows = self._psql(
            spec,
            "SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user;",
            self._maintenance(spec),
        )
        return rows[:1] == ["t"]

    def drop(self, spec: DatabaseSpec) -> None:
        db = _require_db(spec)
        self._psql(spec, f"DROP DATABASE IF EXISTS {quote_ident(db)};", self._maintenance(spec))


_ENCODING = re.compile(r"[A-Za-z0-9_]{1,32}")
_LOCALE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


def _create_options(properties: Mapping[str, object]) -> list[str]:
    """``ENCODING 'x'``, ``LC_COLLATE 'y'``, ``LC_CTYPE 'z'`` from recorded properties
    (encoding first); values come from a repository: anything but a plain name raises."""
    if not isinstance(properties, Mapping):
        raise DatabaseError("the dump's recorded properties are malformed")
    out = []
    for key, keyword, pattern in (("encoding", "ENCODING", _ENCODING),
                                  ("collate", "LC_COLLATE", _LOCALE),
                                  ("ctype", "LC_CTYPE", _LOCALE)):  # fmt: skip
        value = properties.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise DatabaseError(f"the dump's recorded {key} {value!r} is not a valid name")
        out.append(f"{keyword} {quote_literal(value)}")
    return out
