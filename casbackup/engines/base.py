"""The database engine interface and the engine registry (running tools: `process.py`).

An engine turns one configured database (`DatabaseSpec`) into a byte stream (`DumpStream`) that
the backup pipeline chunks straight into the repository, and loads such a stream back into a
database. The contract that protects users from the worst class of backup bug, a run reported
green with an empty or truncated dump (ANCHORS.md, "Database dumps"), lives here:

- `DumpStream.finish()` is the only way to learn that a dump succeeded. It is called after EOF and
  raises `DatabaseError` when the tool exited non-zero, was killed, left output unread, or produced
  something that does not look like a complete dump (0 bytes, wrong magic, missing trailer, no
  tables). The pipeline must not record a dump whose `finish()` did not return.
- `DumpStream.close()` kills a tool that is still running (the backup was aborted) and always
  reaps it, so no zombie outlives a backup.
- Memory is bounded: stdout is streamed through the caller's buffer; stderr is drained by a thread
  into a ring of its last 64 KiB, so a chatty tool can neither deadlock nor grow memory.
"""

from __future__ import annotations

import importlib
import io
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import BinaryIO, Protocol, runtime_checkable

from casbackup.errors import DatabaseError

#: What to do about a restore target that already holds data, in the words of the two
#: commands that restore databases (an engine is reached from both).
NOT_EMPTY_HINT = "to replace it: db restore --overwrite, recover --overwrite-databases"


@dataclass(frozen=True)
class DatabaseSpec:
    """One configured database of an application.

    `name` is unique within the application and becomes the dump's file name in the snapshot
    (`.databases/<name>.<ext>`). Secrets are never stored here, only where to find them.
    """

    name: str
    engine: str
    path: str | None = None
    host: str | None = None
    port: int | None = None
    user: str | None = None
    database: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    options: Mapping[str, str] = field(default_factory=dict)

    def option_bool(self, key: str, default: bool = False) -> bool:
        value = self.options.get(key)
        if value is None:
            return default
        return value.strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class DumpInfo:
    """What a successful dump was: recorded in the snapshot beside the dump's bytes.

    `row_counts_consistent` says whether the counts were taken in the dump's own snapshot
    (PostgreSQL, SQLite) or just before it (MySQL/MariaDB): a verifier compares strictly only
    in the first case.
    """

    engine: str
    format: str
    server_version: str
    row_counts: dict[str, int]
    file_extension: str
    size: int = 0
    row_counts_consistent: bool = False
    # What a restore needs beyond the bytes to give back what the application had, kept in
    # the snapshot's database record (repo_format.md): SQLite the live file's owner and
    # mode ("uid", "gid", "user", "group", "mode"), MySQL/MariaDB the database's default
    # "charset" and "collation", PostgreSQL its "encoding", "collate" and "ctype". Read back
    # from a repository, so engines validate it.
    properties: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class RestoreInfo:
    engine: str
    target: str
    bytes_read: int
    row_counts: dict[str, int]
    server_version: str = ""
    warnings: tuple[str, ...] = ()  # recorded properties the target refused (owner, ...)


@runtime_checkable
class Engine(Protocol):
    name: str

    def dump(self, spec: DatabaseSpec) -> DumpStream: ...

    def restore(
        self,
        spec: DatabaseSpec,
        stream: BinaryIO,
        *,
        overwrite: bool = False,
        properties: Mapping[str, object] | None = None,  # DumpInfo.properties of the dump
    ) -> RestoreInfo: ...

    def row_counts(self, spec: DatabaseSpec) -> dict[str, int]: ...

    def drop(self, spec: DatabaseSpec) -> None: ...

    def check_available(self) -> None: ...


# --- secrets ------------------------------------------------------------------------------


#: The most a secret source (a password file, a password command's output) may hold: far
#: more than any password, and /dev/zero or a runaway command fails at once, not at OOM.
SECRET_MAX = 64 * 1024


def checked_option(
    spec: DatabaseSpec, key: str, default: str, check: Callable[[str, str], str | None]
) -> str:
    """``spec.options[key]`` (else ``default``) once the engine's ``check(key, value)`` finds
    nothing wrong with it; DatabaseError naming the database and the option otherwise (a
    config written before the option was validated, or a plugin's spec, reaches here)."""
    value = spec.options.get(key, default)
    problem = check(key, value)
    if problem:
        raise DatabaseError(f"database {spec.name!r}: options.{key} {problem}")
    return value


def resolve_password(spec: DatabaseSpec) -> str | None:
    """The password named by the spec, or None when it names none.

    A named source that is missing is an error, never "no password": a silently empty password
    would turn a config mistake into a confusing authentication failure.
    """
    if spec.password_env:
        value = os.environ.get(spec.password_env)
        if value is None:
            raise DatabaseError(
                f"database {spec.name!r}: environment variable {spec.password_env} "
                "(password_env) is not set"
            )
        return value
    if spec.password_file:
        try:
            with open(spec.password_file, "rb") as f:
                raw = f.read(SECRET_MAX + 1)  # /dev/zero or a huge file fails at once
        except OSError as e:
            raise DatabaseError(
                f"database {spec.name!r}: cannot read password_file {spec.password_file}: "
                f"{e.strerror}"
            ) from e
        if len(raw) > SECRET_MAX:
            raise DatabaseError(
                f"database {spec.name!r}: password_file {spec.password_file} holds more than "
                f"{SECRET_MAX // 1024} KiB: not a password"
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DatabaseError(
                f"database {spec.name!r}: password_file {spec.password_file} is not UTF-8 text"
            ) from None
        # Only the line terminator is stripped: spaces may be part of a password.
        return text[:-1] if text.endswith("\n") else text
    return None


# --- the dump stream -------------------------------------------------------------------------


class DumpStream(io.RawIOBase):
    """A dump's bytes, read like a file; `finish()` after EOF says whether they are a dump."""

    def finish(self) -> DumpInfo:  # pragma: no cover - interface
        raise NotImplementedError


# --- registry --------------------------------------------------------------------------------

# Built-ins are imported lazily so that `import casbackup.engines` stays cheap and a broken
# engine module cannot break the others. Plugins register through the `casbackup.engines`
# entry-point group (MISSION: engines are plugins).
_BUILTIN: dict[str, str] = {
    "sqlite": "casbackup.engines.sqlite:SqliteEngine",
    "postgresql": "casbackup.engines.postgresql:PostgresEngine",
    "mysql": "casbackup.engines.mysql:MysqlEngine",
}
ALIASES: dict[str, str] = {"mariadb": "mysql", "postgres": "postgresql", "sqlite3": "sqlite"}
_registered: dict[str, Callable[[], Engine]] = {}


def register_engine(name: str, factory: Callable[[], Engine]) -> None:
    _registered[name] = factory


def canonical_engine_name(name: str) -> str:
    return ALIASES.get(name, name)


#: Engines whose dump is the database's page image (SQLite: the online backup API's copy
#: of the file), where a row rewritten in place stays at its offset. Their dumps are cut
#: at fixed offsets (chunking.FixedChunker), not by content, in a repository that holds
#: aligned deltas (format 6 and later); plugins' dumps never are.
PAGE_IMAGE_ENGINES = frozenset({"sqlite"})


def is_page_image(engine: str) -> bool:
    """Whether ``engine``'s (any alias) dump is a page image (``PAGE_IMAGE_ENGINES``)."""
    return canonical_engine_name(engine) in PAGE_IMAGE_ENGINES


def engine_names() -> tuple[str, ...]:
    return tuple(sorted({*_BUILTIN, *_registered, *_plugin_names()}))


def _plugin_names() -> list[str]:
    from importlib.metadata import entry_points

    return [ep.name for ep in entry_points(group="casbackup.engines")]


def engine_options(engine: str) -> frozenset[str] | None:
    """The option names a built-in engine knows (its module's KNOWN_OPTIONS), or None for a
    plugin, which does not say."""
    module = _BUILTIN.get(canonical_engine_name(engine), "").partition(":")[0]
    if not module:
        return None
    known = getattr(importlib.import_module(module), "KNOWN_OPTIONS", None)
    return known if isinstance(known, frozenset) else None


def get_engine(name: str) -> Engine:
    key = canonical_engine_name(name)
    if key in _registered:
        return _registered[key]()
    if key in _BUILTIN:
        module, _, attr = _BUILTIN[key].partition(":")
        cls = getattr(importlib.import_module(module), attr)
        return cls()  # type: ignore[no-any-return]
    from casbackup import plugins

    if plugins.has("engine", key):
        # Through the plugin registry: plugins.enabled and offline_mode apply.
        try:
            cls = plugins.load("engine", key)
        except plugins.PluginError as exc:
            raise DatabaseError(f"database {exc}") from None
        try:
            inner = cls()
        except Exception as exc:  # a broken plugin: one line, never a traceback
            raise DatabaseError(
                f"database engine plugin {name!r} failed to start: {type(exc).__name__}: {exc}"
            ) from None
        from casbackup.engines.guard import GuardedEngine  # imports this module

        return GuardedEngine(inner, key)  # type: ignore[return-value]
    raise DatabaseError(f"unknown database engine {name!r} (known: {', '.join(engine_names())})")


# --- tool versions ---------------------------------------------------------------------------


def parse_tool_version(text: str) -> tuple[str, str]:
    """(product, version) from a client tool's `--version` line: "pg_restore (PostgreSQL)
    15.20 (Debian ...)" gives ("PostgreSQL", "15.20"); "mariadb-dump  Ver 10.19 Distrib
    10.11.19-MariaDB, ..." gives ("MariaDB", "10.11.19"); MySQL's "mysqldump  Ver 8.0.36 for
    Linux" gives ("MySQL", "8.0.36"). ("", "") when the line says neither."""
    product = "PostgreSQL" if "PostgreSQL" in text else "MariaDB" if "MariaDB" in text else ""
    m = re.search(r"Distrib\s+(\d+(?:\.\d+)+)", text) or re.search(
        r"\(PostgreSQL\)\s+(\d+(?:\.\d+)*)", text) or re.search(r"\bVer\s+(\d+(?:\.\d+)+)", text)  # fmt: skip
    if m and not product and "Ver" in text:
        product = "MySQL"
    return (product, m.group(1)) if m else ("", "")


def tool_record(name: str, version_text: str) -> dict[str, str]:
    """What DumpInfo.properties["dump_tool"] holds: the tool, its product and version."""
    product, version = parse_tool_version(version_text)
    return {"name": name, "product": product, "version": version}


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:4])


def older_tool_warning(
    what: str, properties: Mapping[str, object] | None, tool: str, version_text: str
) -> str | None:
    """One warning line when the restoring `tool` is older than the tool that made the dump
    (recorded in properties["dump_tool"]), else None. Records without the field (made before
    it existed), or naming another product, compare as nothing; malformed ones too (the
    record is untrusted, and this is advice, not a check)."""
    recorded = properties.get("dump_tool") if isinstance(properties, Mapping) else None
    if not isinstance(recorded, Mapping):
        return None
    name, product, version = (recorded.get(k) for k in ("name", "product", "version"))
    if not all(isinstance(v, str) and 0 < len(v) <= 64 for v in (name, product, version)):
        return None
    assert isinstance(version, str)
    here_product, here = parse_tool_version(version_text)
    if here_product != product or not re.fullmatch(r"\d+(\.\d+){0,5}", version) or not here:
        return None
    if _version_key(here) >= _version_key(version):
        return None
    return (
        f"{what}: dumped by {name} {version} ({product}), restoring with the older {tool} "
        f"{here}: objects it does not know may fail to load; a client at least as new is safer"
    )
