"""Prove that each database dump of a snapshot loads, and holds the rows recorded at backup.

SQLite dumps are database files: the restored copy is opened read-only, must pass
`PRAGMA integrity_check`, and its tables' row counts must equal the recorded ones. PostgreSQL
and MySQL/MariaDB dumps are loaded into a scratch database with a unique name
(`casb_verify_<hex>`) on a server the caller names (by default the one the application's
definition names), counted, and dropped again in a `finally`, so neither a failed load nor
Ctrl-C leaves the scratch database behind.

MySQL's recorded counts are taken just before the dump, not in its snapshot (`DumpInfo.
row_counts_consistent`), so for it a count mismatch is a warning: rows written in between are
legitimate. A missing table is a failure for every engine.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from casbackup.engines.base import DatabaseSpec, canonical_engine_name, get_engine
from casbackup.errors import CasError
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
    """Database name -> spec, from a snapshot's stored application definition."""
    out: dict[str, DatabaseSpec] = {}
    for entry in (app_definition or {}).get("databases") or ():
        if isinstance(entry, Mapping) and entry.get("name"):
            spec = definition_spec(entry)
            out[spec.name] = spec
    return out


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
    record: DatabaseRecord, dump_file: str, server: DatabaseSpec | None
) -> DumpCheckResult:
    """Load the restored dump file `dump_file`; never raises for what it finds."""
    engine = canonical_engine_name(record.engine)
    expected = dict(record.row_counts)
    base = DatabaseCheck(
        record.name, engine, False, len(expected), sum(expected.values()), problem=""
    )
    warnings: list[str] = []
    try:
        if engine == "sqlite":
            found = _sqlite_counts(dump_file)
        else:
            found = _load_into_scratch(record, engine, dump_file, server, warnings)
    except CasError as exc:
        return DumpCheckResult(replace(base, problem=str(exc)), warnings)
    except (OSError, sqlite3.Error) as exc:
        return DumpCheckResult(replace(base, problem=f"dump does not load: {exc}"), warnings)
    structural, counts = compare_counts(expected, found)
    if counts and engine not in STRICT_COUNT_ENGINES:
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


def _load_into_scratch(
    record: DatabaseRecord,
    engine_name: str,
    dump_file: str,
    server: DatabaseSpec | None,
    warnings: list[str],
) -> dict[str, int]:
    if server is None:
        raise CasError(
            f"no {engine_name} server to load the dump into: the snapshot's application "
            "definition names none; give one with --db-server"
        )
    engine = get_engine(engine_name)
    spec = replace(server, name=record.name, engine=engine_name, database=scratch_name())
    try:
        with open(dump_file, "rb") as stream:
            info = engine.restore(spec, stream, overwrite=False)
        return dict(info.row_counts)
    finally:
        _drop(engine, spec, warnings)


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
