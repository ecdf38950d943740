"""Prove that each database dump of a snapshot loads, and holds the rows recorded at backup.

Where a dump is loaded is decided here, never by the snapshot: the snapshot's stored application
definition names the database's original host, port, user and password source, and all of it
is only shown (`stored_location`). Scratch databases go to the server the caller names (the
command line's `--db-server`, else the local config's definition of that database); with
neither, the check fails and says so. A stored dump path is resolved inside the restored tree
without following symlinks (`resolve_in_tree`); one that leaves it is refused, named.

SQLite dumps are database files: the restored copy is opened read-only, must pass
`PRAGMA integrity_check`, and its tables' row counts must equal the recorded ones. PostgreSQL
and MySQL/MariaDB dumps are loaded into a scratch database with a unique name
(`casb_verify_<hex>`) on the server the caller names, counted, and dropped again in a
`finally`, so neither a failed load nor Ctrl-C leaves the scratch database behind.

MySQL's recorded counts are taken in the dump's own snapshot when the engine could hold the
tables still while the dump began (properties "row_counts_consistent", see engines/mysql.py);
older records, and dumps where it could not, have counts taken just before the dump, so for
them a count mismatch is a warning: rows written in between are legitimate. A missing table is
a failure for every engine.

PostgreSQL: the roles a dump's privileges name must be in the globals kept with it
(engines/pg_globals.py); those that are not are flagged, by name: on a rebuilt server those
privileges would be lost (the check loads on a server where the roles may well exist).
"""

from __future__ import annotations

import os
import posixpath
import re
import secrets
import sqlite3
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from casbackup.engines.base import DatabaseSpec, canonical_engine_name, get_engine
from casbackup.errors import CasError, FormatError
from casbackup.repo.snapshot import DatabaseRecord
from casbackup.units import plural
from casbackup.verify.records import DatabaseCheck

SCRATCH_PREFIX = "casb_verify_"
STRICT_COUNT_ENGINES = frozenset({"sqlite", "postgresql"})
_DROP_ATTEMPTS = 5  # a killed loader's session can linger a moment and block DROP DATABASE


@dataclass
class DumpCheckResult:
    check: DatabaseCheck
    warnings: list[str] = field(default_factory=list)


def scratch_name() -> str:
    return SCRATCH_PREFIX + secrets.token_hex(6)


def definition_spec(entry: Mapping[str, Any]) -> DatabaseSpec:
    """A `DatabaseSpec` from one `app_definition["databases"]` entry (unknown keys ignored)."""
    port = entry.get("port")
    options = entry.get("options") or {}
    return DatabaseSpec(
        name=str(entry.get("name", "")),
        engine=canonical_engine_name(str(entry.get("engine", ""))),
        path=entry.get("path"),
        host=entry.get("host"),
        port=int(port) if port not in (None, "") else None,
        user=entry.get("user"),
        database=entry.get("database"),
        password_env=entry.get("password_env"),
        password_file=entry.get("password_file"),
        options={str(k): str(v) for k, v in dict(options).items()},
    )


def definition_specs(app_definition: Mapping[str, Any] | None) -> dict[str, DatabaseSpec]:
    """Database name -> spec, from a snapshot's stored application definition.

    For display only (`stored_location`): a snapshot is data someone with write access to the
    repository may have forged, so nothing in it may choose a connection or a file to read.
    Malformed entries are skipped.
    """
    out: dict[str, DatabaseSpec] = {}
    entries = app_definition.get("databases") if isinstance(app_definition, Mapping) else None
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, Mapping) and entry.get("name"):
            try:
                spec = definition_spec(entry)
            except (TypeError, ValueError):
                continue
            out[spec.name] = spec
    return out


def stored_location(spec: DatabaseSpec | None) -> str:
    """Where a snapshot says a database lived, as text to show (never a secret, never used)."""
    if spec is None:
        return "not recorded"
    if spec.engine == "sqlite":
        return f"sqlite:{spec.path}"
    # Stored values may be of any JSON type: formatted, never concatenated.
    port = f":{spec.port}" if spec.port else ""
    user = f"{spec.user}@" if spec.user else ""
    return f"{spec.engine}://{user}{spec.host or 'localhost'}{port}/{spec.database or ''}"


def record_problem(record: DatabaseRecord) -> str | None:
    """Why a snapshot's database record cannot be used (fields of the wrong type: records
    are data from the repository), or None. Readers skip such a record, naming it."""
    fields_ok = (
        isinstance(record.name, str) and record.name != ""
        and isinstance(record.engine, str) and isinstance(record.path, str)
        and isinstance(record.size, int) and isinstance(record.row_counts, dict)
        and all(isinstance(k, str) and isinstance(v, int) for k, v in record.row_counts.items())
    )  # fmt: skip
    return None if fields_ok else f"database record {record.name!r} is malformed; skipped"


def tree_path_parts(stored: str) -> list[str]:
    """The components of an absolute path stored in a snapshot record (a dump path, a required
    file): each must be a valid tree name (not empty, `.` or `..`; no NUL), so the path can
    only name something inside the snapshot's tree. FormatError otherwise, naming it."""
    if not isinstance(stored, str):
        raise FormatError(f"stored path {stored!r} is not a path; refused")
    parts = stored.split("/")
    if not stored.startswith("/") or any(p in ("", ".", "..") or "\0" in p for p in parts[1:]):
        raise FormatError(f"stored path {stored!r} is not a path inside the snapshot; refused")
    return parts[1:]


def resolve_in_tree(root: str, stored: str) -> str:
    """`stored` (a path in the snapshot) as a path below `root` (where the snapshot was
    restored), reached without passing through a symlink: every component but the last must
    be a real folder when it exists. The last is not followed (the caller lstat()s it).

    FormatError when `stored` is no path inside the tree or a folder on the way is a symlink
    (a restored symlink could point anywhere: following it would read outside the sandbox).
    """
    parts = tree_path_parts(stored)
    path = root
    for i, part in enumerate(parts):
        path = os.path.join(path, part)
        if i == len(parts) - 1:
            break
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return os.path.join(path, *parts[i + 1 :])  # missing: nothing to follow
        if not stat.S_ISDIR(mode):
            raise FormatError(
                f"stored path {stored!r} passes through {'/' + '/'.join(parts[: i + 1])}, "
                "which is not a folder in the snapshot; refused"
            )
    return path


def strict_counts(engine: str, record: DatabaseRecord) -> bool:
    """Whether the recorded counts describe exactly the dump (a mismatch is then damage)."""
    props = record.properties if isinstance(record.properties, dict) else {}
    return engine in STRICT_COUNT_ENGINES or props.get("row_counts_consistent") is True


def compare_counts(
    expected: Mapping[str, int], found: Mapping[str, int]
) -> tuple[list[str], list[str]]:
    """(missing or extra tables, tables whose counts differ), each as readable text."""
    structural = [f"table {t} is missing" for t in sorted(set(expected) - set(found))]
    structural += [f"table {t} was not in the backup" for t in sorted(set(found) - set(expected))]
    counts = [
        f"table {t}: {plural(found[t], 'row')}, {expected[t]} recorded"
        for t in sorted(set(expected) & set(found))
        if expected[t] != found[t]
    ]
    return structural, counts


def check_dump(
    record: DatabaseRecord, files: str, server: DatabaseSpec | None, stored: str = "not recorded"
) -> DumpCheckResult:
    """Load the dump of `record` from the tree restored at `files`; never raises for what
    it finds. `server` is where scratch databases go (chosen by the caller, never by the
    snapshot); `stored` is where the snapshot says the database lived, for the message."""
    engine = canonical_engine_name(record.engine)
    expected = dict(record.row_counts)
    base = DatabaseCheck(
        record.name, engine, False, len(expected), sum(expected.values()), problem=""
    )
    warnings: list[str] = []
    try:
        dump_file = resolve_in_tree(files, record.path)
        if not stat.S_ISREG(os.lstat(dump_file).st_mode):
            raise FormatError(f"dump {record.path} is not a regular file in the snapshot")
        if engine == "sqlite":
            found = _sqlite_counts(dump_file)
        else:
            found = _load_into_scratch(record, engine, dump_file, server, stored, warnings)
            if engine == "postgresql":
                warnings.extend(_role_gaps(record, files, dump_file, server))
    except CasError as exc:
        return DumpCheckResult(replace(base, problem=str(exc)), warnings)
    except (OSError, sqlite3.Error) as exc:
        return DumpCheckResult(replace(base, problem=f"dump does not load: {exc}"), warnings)
    structural, counts = compare_counts(expected, found)
    if counts and not strict_counts(engine, record):
        warnings.extend(
            f"database {record.name}: {c} (counted just before the dump)" for c in counts
        )
        counts = []
    problems = structural + counts
    if problems:
        return DumpCheckResult(replace(base, problem="; ".join(problems)), warnings)
    return DumpCheckResult(replace(base, ok=True), warnings)


def _sqlite_counts(path: str) -> dict[str, int]:
    uri = "file:" + path.replace("%", "%25").replace("?", "%3f").replace("#", "%23") + "?mode=ro"
    conn = sqlite3.connect(uri, uri=True)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchall()
        if [r[0] for r in result] != ["ok"]:
            detail = "; ".join(str(r[0]) for r in result[:5])
            raise sqlite3.DatabaseError(f"integrity_check failed: {detail}")
    finally:
        conn.close()
    return get_engine("sqlite").row_counts(DatabaseSpec(name="verify", engine="sqlite", path=path))


def no_server_message(engine_name: str, name: str, stored: str) -> str:
    return (
        f"no {engine_name} server to load the dump into: give one with --db-server "
        f"{engine_name}=URL or define database {name!r} in the config (the snapshot "
        f"says it lived at {stored}; a snapshot never chooses where casbackup connects)"
    )


def server_problem(record: DatabaseRecord, server: DatabaseSpec | None, stored: str) -> str | None:
    """Why the dump of `record` cannot be loaded here whatever it holds (no scratch server
    named, the engine's tools missing, the server unreachable or refusing this user), or
    None: an SQLite dump needs no server. Asks the server to drop a scratch database that
    cannot exist (a random name), which proves the connection and the right to drop the
    scratch database afterwards, and changes nothing."""
    engine_name = canonical_engine_name(record.engine)
    if engine_name == "sqlite":
        return None
    if server is None:
        return no_server_message(engine_name, record.name, stored)
    try:
        engine = get_engine(engine_name)
        engine.check_available()
        probe = f"{SCRATCH_PREFIX}probe_{secrets.token_hex(6)}"  # never created
        spec = replace(server, name=record.name, engine=engine_name, database=probe)
        engine.drop(spec)
        # PostgreSQL drops a database that does not exist for anyone: the right to create
        # one is asked for, or a role without it failed the load and the snapshot was
        # recorded as failed for this machine's server.
        may_create = getattr(engine, "may_create_databases", None)
        if may_create is not None and not may_create(spec):
            raise CasError(f"role {server.user or 'of the connection'} may not create databases")
    except CasError as exc:
        text = str(exc).removeprefix(f"database {record.name!r}: ")  # the caller names it
        hint = ""
        if re.search(r"access denied|permission denied|may not create", text, re.I):
            # The config's backup account: it may dump, not make databases.
            grant = _SCRATCH_GRANT.get(engine_name, "a grant to create and drop them")
            hint = (
                f" (verify loads each dump into a database {SCRATCH_PREFIX}<hex> there and "
                f"drops it: {grant}, or name another with --db-server {engine_name}=URL)"
            )
        return f"the {engine_name} server for scratch databases cannot be used: {text}{hint}"
    return None


# What an account needs to make, load and drop verify's scratch databases, and nothing more.
_SCRATCH_GRANT = {
    "mysql": f"GRANT ALL ON `{SCRATCH_PREFIX.replace('_', chr(92) + '_')}%`.* TO the account",
    "postgresql": "ALTER ROLE the_account CREATEDB",
}


def _load_into_scratch(
    record: DatabaseRecord,
    engine_name: str,
    dump_file: str,
    server: DatabaseSpec | None,
    stored: str,
    warnings: list[str],
) -> dict[str, int]:
    if server is None:
        raise CasError(no_server_message(engine_name, record.name, stored))
    engine = get_engine(engine_name)
    spec = replace(server, name=record.name, engine=engine_name, database=scratch_name())
    try:
        with open(dump_file, "rb") as stream:
            info = engine.restore(spec, stream, overwrite=False)
        warnings.extend(info.warnings)
        return dict(info.row_counts)
    finally:
        _drop(engine, spec, warnings)


def _role_gaps(
    record: DatabaseRecord, files: str, dump_file: str, server: DatabaseSpec | None
) -> list[str]:
    """A warning naming the roles the dump's privileges need that the snapshot's globals do
    not create (all of them when no globals were kept)."""
    from casbackup.engines.pg_globals import globals_roles, recorded_globals

    engine = get_engine("postgresql")
    spec = server or DatabaseSpec(name=record.name, engine="postgresql")
    needed = engine.dump_roles(replace(spec, name=record.name), dump_file)  # type: ignore[attr-defined]
    if not needed:
        return []
    name = recorded_globals(record.properties)
    held: set[str] = set()
    if name is not None:
        path = resolve_in_tree(files, posixpath.join(posixpath.dirname(record.path), name))
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise FormatError(f"globals file {name} of {record.path} is not a regular file")
        with open(path, "rb") as f:
            held = globals_roles(f, f"globals file {name}")
    missing = sorted(needed - held)
    if not missing:
        return []
    where = f"the globals kept with it ({name})" if name else "the snapshot (no globals kept)"
    return [
        f"database {record.name}: its privileges name {plural(len(missing), 'role')} that "
        f"{where} do not hold: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}; "
        "a restore on a rebuilt server would not grant them (keep options.globals on)"
    ]


def _drop(engine: Any, spec: DatabaseSpec, warnings: list[str]) -> None:
    for attempt in range(_DROP_ATTEMPTS):
        try:
            engine.drop(spec)
            return
        except CasError as exc:
            if attempt == _DROP_ATTEMPTS - 1:
                warnings.append(
                    f"scratch database {spec.database} could not be dropped ({exc}); drop it by hand"
                )
                return
            time.sleep(0.5 * (attempt + 1))
