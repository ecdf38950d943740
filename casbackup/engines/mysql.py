"""MySQL/MariaDB: `mariadb-dump` (else `mysqldump`) as plain SQL, streamed from its stdout.

Flags, and why:
- `--single-transaction`: one consistent InnoDB snapshot without locking the tables.
- `--skip-dump-date`: unchanged data gives byte-identical dumps, so the second nightly backup of
  a quiet database adds almost nothing (ANCHORS.md measured this; it is tested here too).
- `--order-by-primary`: rows in a stable order, so dumps of the same data do not depend on the
  physical layout (and small changes stay local in the stream).
- `--routines --events --triggers`: the whole database, not only its tables.
- `--hex-blob`: binary columns survive any client character set.
- `--no-tablespaces`: MySQL 8 needs the PROCESS privilege otherwise; tablespaces are not data.
- `--max-allowed-packet=1G` (the most there is): the tool's own default (24 MiB) failed the
  dump of any row larger than that, however much the server allows.
- no `--databases`: the dump has no CREATE DATABASE/USE, so it loads into any database name
  (a scratch database for verification, or `--into` another name).
- `--dump-history` (mariadb-dump 10.11+, a database with system-versioned tables): their
  history too, not only their current rows.

Credentials (user, password, host, port) go in an option file that is an anonymous pipe,
`--defaults-extra-file=/dev/fd/N`: never argv (visible in `ps`), never a file on disk.

Row counts describe exactly the dump's snapshot (option `consistent_counts`, default on): a
client session takes `LOCK TABLES ... READ` on every base table of the database (writers
wait; readers do not), a second session then opens a consistent snapshot, and the lock is
kept until the dump tool's output shows that its `--single-transaction` snapshot exists too
(the tool starts its transaction before it writes any table: the first "Table structure"
comment proves it). No write can commit between the two snapshots, so they hold the same
rows; the second session counts them after the dump, lock long gone. Writers are held for
the tool's start-up only (measured: 71-74 ms with 1.5M rows). `lock_wait_timeout` (seconds,
default 60) bounds how long the lock may wait, and how long a table may stay locked for
writing before the dump fails (the tool itself takes no lock timeout). When the lock cannot
be had (no LOCK TABLES privilege, a timeout, a table dropped meanwhile), with
`consistent_counts = false`, or with a table of an engine without transactions (MyISAM, Aria,
MEMORY: the tool reads it outside its snapshot), the record says the counts are not exact
(properties "row_counts_consistent": false): a verifier then tolerates count drift.

Routines, triggers, events and views round-trip: `--routines --events --triggers`, and the
tool writes views after every table (with placeholder tables first, so views over views load
in any order).
The tool dumps only the tables, views, triggers and routines the user can see, in silence: a
user whose grants (SHOW GRANTS) may hide some is refused before the dump, naming the exact
GRANT (my_grants.py; `check_privileges = false` skips this, for a database known to have none;
`own_routines = true` skips it for routines, when every routine is the backup user's own).

Each dump records the dump tool's version (properties "dump_tool"); a restore with an older
client of the same product (MariaDB or MySQL) warns.

The server's accounts and grants are kept beside the dump (option `globals`, default on) and
created again by `db restore` and `recover` where the server lacks them: my_users.py.
Credentials go through my_client.py's option-file pipe.
"""

from __future__ import annotations

import os
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
    parse_tool_version,
    tool_record,
)
from casbackup.engines.claims import (
    MY_DEAD_SQL,
    TEMP_NAME,
    Claim,
    my_claim_sql,
    my_dead,
    swept_warning,
    temporary_name,
)
from casbackup.engines.my_client import credentials_fd
from casbackup.engines.my_grants import dump_advice, hidden_kinds
from casbackup.engines.my_session import MarkerDumpStream, TableLock
from casbackup.engines.my_sql import (
    charset_clause,
    count_sql,
    hex_literal,
    parse_counts,
    quote_ident,
)
from casbackup.engines.my_users import dump_users, restore_users, users_file_name
from casbackup.engines.process import ProcessDumpStream, feed_tool, find_tool, run_tool
from casbackup.errors import DatabaseError

KNOWN_OPTIONS = frozenset(
    {"allow_empty", "socket", "ssl_mode", "consistent_counts", "lock_wait_timeout",
     "check_privileges", "own_routines", "globals"}
)  # fmt: skip
_BOOLEANS = ("1", "0", "true", "false", "yes", "no", "on", "off")
# The tool writes these only after its consistent snapshot exists (see the module docstring).
SNAPSHOT_MARKERS = (b"-- Table structure for table ", b"-- Temporary table structure for view ")
_TRAILER = b"-- Dump completed"


def _lock_wait(spec: DatabaseSpec) -> int:
    """options.lock_wait_timeout in seconds (default 60); DatabaseError when malformed."""
    return int(checked_option(spec, "lock_wait_timeout", "60", check_option))


def _completed(tail: bytes) -> bool:
    """Whether a dump's last line is the tool's trailer: the words in a row of a dump cut
    short after them (a comment a user typed) are none."""
    return tail.rstrip().rpartition(b"\n")[2].startswith(_TRAILER)


# information_schema.tables.table_type of a MariaDB table WITH SYSTEM VERSIONING: a table
# like any other (its rows are dumped), but not a 'BASE TABLE'.
_VERSIONED = "'SYSTEM VERSIONED'"
DUMP_FLAGS = (
    "--single-transaction", "--quick", "--routines", "--events", "--triggers",
    "--skip-dump-date", "--hex-blob", "--order-by-primary", "--no-tablespaces",
    "--default-character-set=utf8mb4", "--max-allowed-packet=1G",
)  # fmt: skip


def _require_db(spec: DatabaseSpec) -> str:
    if not spec.database:
        raise DatabaseError(f"database {spec.name!r}: mysql needs a database name")
    return spec.database


def check_option(key: str, value: str) -> str | None:
    """Why an option's value is wrong (for config validation), else None."""
    if key in (
        "allow_empty",
        "consistent_counts",
        "check_privileges",
        "own_routines",
        "globals",
    ) and (value.strip().lower() not in _BOOLEANS):
        return f"must be true or false, not {value!r}"
    if key == "lock_wait_timeout" and not (value.isdigit() and 1 <= int(value) <= 86400):
        return f"must be a number of seconds from 1 to 86400, not {value!r}"
    return None


class MysqlEngine:
    name = "mysql"

    def check_available(self) -> None:
        find_tool("mariadb-dump", "mysqldump")
        find_tool("mariadb", "mysql")

    def _client(self, spec: DatabaseSpec, sql: str, database: str | None = None) -> list[str]:
        with credentials_fd(spec) as fd:
            argv = [find_tool("mariadb", "mysql"), f"--defaults-extra-file=/dev/fd/{fd}",
                    "--batch", "--skip-column-names", "--default-character-set=utf8mb4"]  # fmt: skip
            if database is not None:
                argv.append(f"--database={database}")
            out = run_tool(argv, what=f"database {spec.name!r}", input=sql.encode(), pass_fds=[fd])
        return out.decode("utf-8", "replace").splitlines()

    def server_version(self, spec: DatabaseSpec) -> str:
        return self._client(spec, "SELECT VERSION();")[0]

    def _tables(self, spec: DatabaseSpec, db: str, kinds: str = "'BASE TABLE'") -> list[str]:
        sql = (
            "SELECT HEX(table_name) FROM information_schema.tables "
            f"WHERE table_schema = {hex_literal(db)} AND table_type IN ({kinds}) ORDER BY 1;"
        )
        return [bytes.fromhex(h).decode("utf-8") for h in self._client(spec, sql)]

    def row_counts(self, spec: DatabaseSpec) -> dict[str, int]:
        db = _require_db(spec)
        tables = self._tables(spec, db)
        if not tables:
            return {}
        # One statement in one consistent snapshot, so the counts agree with each other.
        sql = f"START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY; {count_sql(db, tables)}; COMMIT;"
        return parse_counts(self._client(spec, sql))

    def version_text(self, *tools: str) -> str:
        """The first line of `tool --version` for the first of `tools` on PATH."""
        out = run_tool([find_tool(*tools), "--version"], what=tools[0])
        return (out.decode("utf-8", "replace").strip().splitlines() or [""])[0]

    def _session(self, spec: DatabaseSpec) -> TableLock:
        with credentials_fd(spec) as fd:
            argv = [find_tool("mariadb", "mysql"), f"--defaults-extra-file=/dev/fd/{fd}",
                    "--batch", "--skip-column-names", "--unbuffered",
                    "--default-character-set=utf8mb4"]  # fmt: skip
            return TableLock(argv, pass_fds=[fd], what=f"database {spec.name!r}")

    def _hold(
        self, spec: DatabaseSpec, db: str, tables: list[str]
    ) -> tuple[TableLock, TableLock] | None:
        """(a session holding READ locks on `tables`, a session whose consistent snapshot
        was taken under them); None when the lock could not be had (the caller then counts
        without it). The counts are taken later in the second session's snapshot, after
        the lock is gone: writers wait only for the dump tool to start, whatever the size."""
        timeout = _lock_wait(spec)
        locks = ", ".join(f"{quote_ident(db)}.{quote_ident(t)} READ" for t in tables)
        lock = self._session(spec)
        try:
            lock.query(f"SET SESSION lock_wait_timeout = {timeout}; LOCK TABLES {locks};")
        except DatabaseError:
            lock.close()
            return None
        try:
            snapshot = self._session(spec)
            snapshot.query("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ; "
                           "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY;")  # fmt: skip
        except BaseException:
            lock.close()
            raise
        return lock, snapshot

    def dump(self, spec: DatabaseSpec) -> DumpStream:
        db = _require_db(spec)
        dump_tool = find_tool("mariadb-dump", "mysqldump")
        version = self.server_version(spec)
        if not self._exists(spec, db):
            raise DatabaseError(f"database {spec.name!r}: database {db!r} does not exist")
        consistent = spec.options.get("consistent_counts", "true")
        if check_option("consistent_counts", consistent):
            raise DatabaseError(f"database {spec.name!r}: options.consistent_counts "
                                f"{check_option('consistent_counts', consistent)}")  # fmt: skip
        properties = self._defaults(spec, db)
        properties["dump_tool"] = tool_record(
            os.path.basename(dump_tool), self.version_text("mariadb-dump", "mysqldump")
        )
        tables = self._tables(spec, db)
        marks = [t for t in tables if TEMP_NAME.fullmatch(t)]
        if marks:  # a restore's marker (claims.py): the data is half loaded, now or for good
            raise DatabaseError(
                f"database {spec.name!r}: {db} is half loaded by a restore (table {marks[0]} "
                "marks it: the restore runs, or was killed and the next restore removes it); "
                "not backed up"
            )
        # Row counts keep to base tables (what every recorded dump counted), but a system-
        # versioned table is data like them: the database is not empty, its triggers count.
        versioned = self._tables(spec, db, _VERSIONED)
        if not tables and not versioned and not spec.option_bool("allow_empty"):
            raise DatabaseError(
                f"database {spec.name!r}: {db} has no tables; refusing to record an empty "
                "dump (set options.allow_empty = true if that is expected)"
            )
        user = self._check_visible(spec, db, tables + versioned, version)
        history = self._history_flags(spec, db, versioned)
        # From here to the tool's first table, writers to these tables wait (see above).
        self._wait_readable(spec, db, tables + versioned)
        held = None
        loose = self._untransacted(spec, db)  # no snapshot holds these: never exact
        if tables and spec.option_bool("consistent_counts", True):
            held = self._hold(spec, db, tables)
        lock, snapshot = held if held is not None else (None, None)

        def validate(head: bytes, tail: bytes, size: int) -> None:
            # The trailer is the last thing the tool writes: without it the dump is cut short.
            if not _completed(tail):
                raise DatabaseError(
                    f"database {spec.name!r}: dump has no '-- Dump completed' trailer (truncated)"
                )

        def make_info(size: int) -> DumpInfo:
            # Exact only when the lock was held until the tool's snapshot existed: the
            # counting session's snapshot then holds the same rows as the dump.
            counts, exact = None, False
            if snapshot is not None:
                try:
                    if stream.released_at_marker:
                        counts = parse_counts(snapshot.query(count_sql(db, tables) + ";"))
                        exact = not loose
                except DatabaseError:
                    pass  # counted below, outside the snapshot, and said so
                finally:
                    snapshot.close()
            if counts is None:
                counts = self.row_counts(spec)
            props = {**properties, "row_counts_consistent": exact}
            return DumpInfo(self.name, "mysql-sql", version, counts, "sql", size, exact, props)

        def release() -> None:
            for session in (lock, snapshot):
                if session is not None:
                    session.close()

        with credentials_fd(spec) as fd:
            # `--` ends option parsing, so a database named "-x" cannot become an option.
            argv = [dump_tool, f"--defaults-extra-file=/dev/fd/{fd}", *DUMP_FLAGS, *history,
                    "--", db]  # fmt: skip
            stream = MarkerDumpStream(
                argv,
                what=f"database {spec.name!r}",
                env=None,
                validate=validate,
                make_info=make_info,
                pass_fds=[fd],
                markers=SNAPSHOT_MARKERS,
                on_marker=lock.close if lock is not None else None,
                on_close=release,
                advise=lambda err: dump_advice(err, db, user, version),
            )
            return stream

    def extra_dumps(
        self, spec: DatabaseSpec
    ) -> tuple[tuple[str, str, Callable[[], DumpStream]], ...]:
        """The server's accounts and grants beside the dump (options.globals, default on;
        my_users.py), named by the dump's record as "globals"."""
        if not spec.option_bool("globals", True):
            return ()
        return (("globals", users_file_name(spec.name), lambda: self._dump_users(spec)),)

    def _dump_users(self, spec: DatabaseSpec) -> DumpStream:
        return dump_users(spec, lambda sql: self._client(spec, sql), self.server_version(spec))

    def restore_globals(self, spec: DatabaseSpec, stream: BinaryIO) -> tuple[str, list[str]]:
        """Create the accounts of the backup that this server lacks, with their grants:
        (a one-line summary, a warning per statement refused). Accounts that exist are left
        as they are (my_users.py)."""
        return restore_users(spec, stream, lambda sql: self._client(spec, sql))

    def _wait_readable(self, spec: DatabaseSpec, db: str, tables: list[str]) -> None:
        """Fail unless every table can be read within options.lock_wait_timeout: the dump
        tool takes no lock timeout, and waits behind a table locked for writing (LOCK
        TABLES ... WRITE, ALTER TABLE) for the server's lock_wait_timeout, a day."""
        if not tables:
            return
        wait = _lock_wait(spec)
        reads = [f"(SELECT 1 FROM {quote_ident(db)}.{quote_ident(t)} WHERE 0)" for t in tables]
        # 100 tables a statement: a statement opens all its tables at once.
        probe = "".join(
            f"{' UNION ALL '.join(reads[i : i + 100])};" for i in range(0, len(reads), 100)
        )
        try:
            self._client(spec, f"SET SESSION lock_wait_timeout = {wait}; {probe}")
        except DatabaseError as exc:
            if "Lock wait timeout exceeded" not in str(exc):
                raise
            raise DatabaseError(
                f"database {spec.name!r}: a table of {db} stayed locked by another session "
                f"(LOCK TABLES ... WRITE, ALTER TABLE) for over options.lock_wait_timeout = "
                f"{wait} s; not backed up"
            ) from None

    def _untransacted(self, spec: DatabaseSpec, db: str) -> bool:
        """Whether a base table of `db` has an engine without transactions (MyISAM, ...)."""
        sql = ("SELECT COUNT(*) FROM information_schema.tables t JOIN information_schema"
               ".engines e ON e.engine = t.engine WHERE t.table_schema = "
               f"{hex_literal(db)} AND t.table_type = 'BASE TABLE' AND e.transactions <> 'YES';")  # fmt: skip
        return self._client(spec, sql) != ["0"]

    def _history_flags(self, spec: DatabaseSpec, db: str, versioned: list[str]) -> list[str]:
        """`--dump-history` when `db` has system-versioned tables and the tool can dump
        their history (without it: their current rows only). It needs mariadb-dump 10.11+,
        and refuses tables versioned by transaction id: those keep current rows only."""
        if not versioned:
            return []
        product, tool = parse_tool_version(self.version_text("mariadb-dump", "mysqldump"))
        parts = tuple(int(p) for p in tool.split(".")[:2]) if tool else ()
        if product != "MariaDB" or parts < (10, 11):
            return []
        sql = ("SELECT COUNT(*) FROM information_schema.columns WHERE table_schema = "
               f"{hex_literal(db)} AND generation_expression = 'ROW START' "
               "AND data_type = 'bigint';")  # fmt: skip
        return ["--dump-history"] if self._client(spec, sql) == ["0"] else []

    def _check_visible(self, spec: DatabaseSpec, db: str, tables: list[str], version: str) -> str:
        """Refuse to dump when the user may not see all of the database's tables, triggers
        or routines (my_grants.py): the dump tool would leave them out without a word. The
        message names the exact GRANT. options.check_privileges = false skips this (the
        database has none the user cannot see); options.own_routines = true skips the
        routines alone (every routine is the user's own: it sees them as their definer,
        and the server hides whether any other exists, so only the user can say).
        Returns the user's CURRENT_USER() ("" when not checked)."""
        for key, default in (("check_privileges", "true"), ("own_routines", "false")):
            problem = check_option(key, spec.options.get(key, default))
            if problem:
                raise DatabaseError(f"database {spec.name!r}: options.{key} {problem}")
        if not spec.option_bool("check_privileges", True):
            return ""
        # One session: CURRENT_USER() is the account SHOW GRANTS describes.
        lines = self._client(spec, "SHOW GRANTS; SELECT CURRENT_USER();")
        user = lines.pop() if lines else ""
        hidden = hidden_kinds(lines, db, tables, user=user, server_version=version)
        if spec.option_bool("own_routines"):
            hidden = [h for h in hidden if h.kind != "routines"]
        if hidden:
            own = (f"if every routine of {db} is its own, set options.own_routines = true; "
                   if any(h.kind == "routines" for h in hidden) else "")  # fmt: skip
            raise DatabaseError(
                f"database {spec.name!r}: user {user} may not see {db}'s "
                f"{' nor its '.join(h.what for h in hidden)}, which the dump would leave out "
                f"without a word: run {'; '.join(h.grant for h in hidden)} (or, {own}if {db} "
                "has none it cannot see, set options.check_privileges = false)"
            )
        return user

    def _defaults(self, spec: DatabaseSpec, db: str) -> dict[str, object]:
        """The database's default character set and collation (the dump has no CREATE
        DATABASE, so they would be lost: a restore applies them, see ``restore``)."""
        sql = (
            "SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM "
            f"information_schema.schemata WHERE schema_name = {hex_literal(db)};"
        )
        rows = self._client(spec, sql)
        charset, _, collation = rows[0].partition("\t") if rows else ("", "", "")
        return {"charset": charset, "collation": collation} if charset else {}

    def _exists(self, spec: DatabaseSpec, db: str) -> bool:
        sql = (
            "SELECT COUNT(*) FROM information_schema.schemata "
            f"WHERE schema_name = {hex_literal(db)};"
        )
        return self._client(spec, sql) == ["1"]

    def holds_content(self, spec: DatabaseSpec) -> bool:
        """Whether spec's database exists and holds what `restore` refuses to replace
        without `overwrite` (tables, views, sequences, routines, events): what a recovery
        plan checks before anything is written. Raises DatabaseError (server unreachable)."""
        db = _require_db(spec)
        return self._exists(spec, db) and self._has_content(spec, db)

    def restore(
        self,
        spec: DatabaseSpec,
        stream: BinaryIO,
        *,
        overwrite: bool = False,
        properties: Mapping[str, object] | None = None,
    ) -> RestoreInfo:
        """Pipe the dump into `mariadb`/`mysql`; create the database if missing, with the
        default character set and collation recorded at dump time (``properties``).

        Unlike pg_restore, a SQL load is not one transaction (DDL commits implicitly), so a
        load never runs where a failure would leave a half-loaded database behind (claims.py):
        a missing database is created, marked as being loaded (a table named after the
        restore's claim) and dropped again when the load fails; an existing one, empty or
        (with `overwrite`; refused otherwise) not, is replaced only once the dump has loaded
        whole into a temporary database: the old one is then dropped and the temporary
        copied into its name (MariaDB cannot rename a database). A restore that was killed
        leaves the marked or temporary database behind; the next restore onto the server
        removes it (a warning names it).
        """
        db = _require_db(spec)
        client = self.version_text("mariadb", "mysql")
        older = older_tool_warning(f"database {spec.name!r}", properties, "client", client)
        defaults = charset_clause(properties or {})
        temp = temporary_name()
        with self._claim(spec, temp):
            warnings = self._sweep(spec)
            exists = self._exists(spec, db)
            if exists and self._has_content(spec, db) and not overwrite:
                raise DatabaseError(
                    f"database {spec.name!r}: {db} already exists and is not empty "
                    f"({NOT_EMPTY_HINT})"
                )
            if not exists:
                fed = self._load_new(spec, stream, defaults, temp)
            else:
                load = replace(spec, database=temp)
                try:
                    fed = self._load(load, stream, defaults)
                except BaseException:
                    self._drop_quietly(load)
                    raise
                self._replace(spec, temp, defaults)
        warnings += [older] if older else []
        return RestoreInfo(self.name, db, fed, self.row_counts(spec), self.server_version(spec),
                           tuple(warnings))  # fmt: skip

    def _claim(self, spec: DatabaseSpec, temp: str) -> Claim:
        """Hold the lock of temporary `temp` (claims.py) in a session of its own."""
        return Claim(temp, lambda: self._session(spec), my_claim_sql(temp),
                     f"database {spec.name!r}")  # fmt: skip

    def _sweep(self, spec: DatabaseSpec) -> list[str]:
        """Drop what restores that were killed left behind (claims.py); a warning each."""
        warnings = []
        for name, kind in my_dead(self._client(spec, MY_DEAD_SQL)):
            try:
                self.drop(replace(spec, database=name))
                warnings.append(swept_warning(f"database {spec.name!r}", name, kind, None))
            except DatabaseError as exc:
                warnings.append(swept_warning(f"database {spec.name!r}", name, kind, exc))
        return warnings

    def _load_new(
        self, spec: DatabaseSpec, stream: BinaryIO, defaults: str, mark: str,
        finish: Callable[[], object] | None = None,
    ) -> int:  # fmt: skip
        """Create spec's database marked by table `mark` while it loads (and `finish()`,
        which checks the stream, runs); drop it when that fails (it did not exist: dropping
        it leaves the server as it was)."""
        db = quote_ident(_require_db(spec))
        self._client(spec, f"CREATE DATABASE {db};")  # fails when another made it meanwhile
        try:
            self._client(spec, f"CREATE TABLE {db}.{quote_ident(mark)} (id INT) "
                               "COMMENT 'casbackup: a restore is loading this database';")  # fmt: skip
            fed = self._load(spec, stream, defaults)
            if finish is not None:
                finish()
            self._client(spec, f"DROP TABLE {db}.{quote_ident(mark)};")
        except BaseException:
            self._drop_quietly(spec)
            raise
        return fed

    def _create(self, spec: DatabaseSpec, defaults: str) -> None:
        db = quote_ident(_require_db(spec))
        self._client(spec, f"CREATE DATABASE IF NOT EXISTS {db};")
        if defaults:
            # Before the load: tables the dump creates without their own take these.
            self._client(spec, f"ALTER DATABASE {db}{defaults};")

    def _load(self, spec: DatabaseSpec, stream: BinaryIO, defaults: str) -> int:
        """Create spec's database (if missing) and feed the dump into it; bytes fed."""
        self._create(spec, defaults)
        with credentials_fd(spec) as fd:
            argv = [find_tool("mariadb", "mysql"), f"--defaults-extra-file=/dev/fd/{fd}",
                    "--binary-mode", "--default-character-set=utf8mb4",
                    "--max-allowed-packet=1G", f"--database={_require_db(spec)}"]  # fmt: skip
            return feed_tool(argv, stream, what=f"restore of database {spec.name!r}",
                             pass_fds=[fd])  # fmt: skip

    def _replace(self, spec: DatabaseSpec, loaded: str, defaults: str) -> None:
        """Drop spec's database and copy database `loaded` (whole) into its name, then drop
        `loaded`. A copy that fails names `loaded`, which still holds the restored data (until
        the next restore onto the server removes it), and leaves no half copy under the
        database's name; one that is killed leaves it marked, for the next restore to remove."""
        db = _require_db(spec)
        try:
            history = self._history_flags(spec, loaded, self._tables(spec, loaded, _VERSIONED))
            self._client(spec, f"DROP DATABASE {quote_ident(db)};")
        except BaseException:
            self._drop_quietly(replace(spec, database=loaded))  # the old one stands
            raise
        try:
            with credentials_fd(spec) as fd:
                argv = [find_tool("mariadb-dump", "mysqldump"),
                        f"--defaults-extra-file=/dev/fd/{fd}", *DUMP_FLAGS, *history, "--",
                        loaded]  # fmt: skip

                def validate(head: bytes, tail: bytes, size: int) -> None:
                    if not _completed(tail):
                        raise DatabaseError(f"the copy of {loaded} has no trailer (truncated)")

                def make_info(size: int) -> DumpInfo:
                    return DumpInfo(self.name, "mysql-sql", "", {}, "sql", size)

                copy = ProcessDumpStream(argv, what=f"copy of database {loaded}", env=None,
                                         validate=validate, make_info=make_info, pass_fds=[fd])  # fmt: skip
            with copy:
                # Marked while it fills, like a new database: never left half copied.
                self._load_new(spec, copy, defaults, loaded, finish=copy.finish)
        except DatabaseError as exc:
            raise DatabaseError(
                f"database {spec.name!r}: the restored data is in database {loaded}, which "
                f"could not be copied into {db}: {exc}"
            ) from None
        self._drop_quietly(replace(spec, database=loaded))

    def _drop_quietly(self, spec: DatabaseSpec) -> None:
        try:
            self.drop(spec)
        except DatabaseError:
            pass  # the restore's own error is what the user needs; a temporary may stay

    def _has_content(self, spec: DatabaseSpec, db: str) -> bool:
        """Whether `db` holds anything a restore would replace: tables (system-versioned
        ones too), views, sequences, and routines and events too (the dump drops those of
        the same name first)."""
        if self._tables(spec, db, f"'BASE TABLE',{_VERSIONED},'VIEW','SEQUENCE'"):
            return True
        sql = (f"SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema = "
               f"{hex_literal(db)} UNION ALL SELECT COUNT(*) FROM information_schema.events "
               f"WHERE event_schema = {hex_literal(db)};")  # fmt: skip
        return any(line.strip() not in ("", "0") for line in self._client(spec, sql))

    def drop(self, spec: DatabaseSpec) -> None:
        db = _require_db(spec)
        self._client(spec, f"DROP DATABASE IF EXISTS {quote_ident(db)};")
