"""Typed, path-aware access to a parsed config table, and the checks both layouts share.

Every error names the file and the key path (`applications[1].databases[0].engine`) and says
what was expected, so a user can fix the file without reading code.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from casbackup.config.locate import line_of
from casbackup.engines.base import (
    ALIASES,
    DatabaseSpec,
    canonical_engine_name,
    engine_names,
    engine_options,
)
from casbackup.errors import ConfigError

T = TypeVar("T")

DB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")  # "s3:https://...", "sftp://...", not "C:"
NUL_CHARACTER = "must not contain a NUL character"
INLINE_PASSWORD = (
    "inline passwords are not accepted: put the password in an environment variable "
    "(password_env) or a file (password_file)"
)


def expand_home(value: str) -> str:
    """``value`` with a leading ``~`` or ``~user`` expanded as a shell would. Raises
    ValueError (one line) when that user (or, for ``~``, a home folder) is unknown here:
    ``Path.expanduser`` raises a bare RuntimeError for it."""
    if not value.startswith("~"):
        return value
    expanded = os.path.expanduser(value)
    if expanded.startswith("~"):
        user = value[1:].split("/", 1)[0]
        why = f"no user named {user!r} on this machine" if user else "HOME is not set"
        raise ValueError(f"cannot expand {value!r}: {why}")
    return expanded


def type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a " + type(value).__name__


class Ctx:
    """Where values come from: the file (for messages) and its folder (for relative paths)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent
        # Problems found so far. Validation goes on past one (``attempt``), so a user fixes
        # the whole file in one round instead of one error per run.
        self.problems: list[ConfigError] = []
        # Read but without effect (keys the seed's files carry that casbackup does not use):
        # `config check` prints them, every command still runs.
        self.warnings: list[str] = []
        # {key path: line} of a TOML file (config/locate.py), so that errors name the line.
        self.lines: dict[str, int] = {}

    def error(self, key: str | None, message: str) -> ConfigError:
        line = line_of(self.lines, key) if key else None
        if line is not None:
            message = f"{message} (line {line})"
        return ConfigError(message, path=str(self.path), key=key or None)

    def attempt(self, parse: Callable[[], T], default: T) -> T:
        """``parse()``, or ``default`` after recording the ConfigError it raised."""
        try:
            return parse()
        except ConfigError as exc:
            self.problems.append(exc)
            return default

    def raise_problems(self) -> None:
        """Raise one ConfigError naming every recorded problem (in file order), if any.

        One problem keeps its own message; several become ``N problems: key: what; ...``,
        one line, as every error of the CLI is.
        """
        problems, self.problems = self.problems, []
        if len(problems) == 1:
            raise problems[0]
        if problems:
            prefix = f"{self.path}: "
            details = [str(e)[len(prefix):] if str(e).startswith(prefix) else str(e)
                       for e in problems]  # fmt: skip
            raise ConfigError(
                f"{len(details)} problems: " + "; ".join(details), path=str(self.path)
            )

    def resolve(self, value: str, key: str | None = None) -> str:
        """A path from the file, absolute: ``~`` expanded, relative ones against the file's
        folder. Raises ConfigError at ``key`` for a ``~user`` this machine does not know."""
        try:
            p = Path(expand_home(value))
        except ValueError as exc:
            raise self.error(key, str(exc)) from None
        return str(p if p.is_absolute() else (self.base / p).resolve())

    def resolve_location(self, value: str, key: str | None = None) -> str:
        """A repository location: a URL as it is, else a path as ``resolve`` makes it."""
        return value if _URL_RE.match(value) else self.resolve(value, key)


class Section:
    """One table of the config. `rename` maps legacy key names onto the canonical ones."""

    def __init__(
        self, ctx: Ctx, data: object, key: str, rename: Mapping[str, str] | None = None
    ) -> None:
        self.ctx = ctx
        self.key = key
        if not isinstance(data, dict):
            raise ctx.error(key, f"must be a table, not {type_name(data)}")
        self.data: dict[str, Any] = {}
        self.original: dict[str, str] = {}
        for k, v in data.items():
            canon = (rename or {}).get(k, k)
            if canon in self.data:
                raise ctx.error(self.path(canon), f"given twice (as {self.original[canon]!r} too)")
            self.data[canon] = v
            self.original[canon] = k
        self.used: set[str] = set()

    def path(self, name: str) -> str:
        shown = self.original.get(name, name)
        return f"{self.key}.{shown}" if self.key else shown

    def error(self, name: str | None, message: str) -> ConfigError:
        return self.ctx.error(self.path(name) if name else self.key, message)

    def has(self, name: str) -> bool:
        return name in self.data

    def missing(self, name: str, what: str = "") -> ConfigError:
        """The error for required key ``name`` absent from this table (``what`` says what it
        holds, e.g. " (the SQLite file)"). A key of the table close to ``name`` is named as
        the likely typo: the unknown-key check runs only after every key was read, so
        without it ``pathh = ...`` would only say that ``path`` is missing."""
        close = difflib.get_close_matches(name, [k for k in self.data if k != name], n=1)
        hint = f"; is {close[0]!r} a typo of it?" if close else ""
        return self.error(None, f"missing required key {name!r}{what}{hint}")

    def unused(self, name: str, why: str) -> None:
        """Warn (``Ctx.warnings``) that key ``name``, when the file gives it, has no effect."""
        if name in self.data:
            self.ctx.warnings.append(f"{self.path(name)} has no effect: {why}")

    def raw(self, name: str) -> Any:
        self.used.add(name)
        return self.data.get(name)

    def note(self, name: str | None, message: str) -> None:
        """Record a problem with one key and go on: the caller carries on with a default, so
        the other keys of the same table are checked too (``Ctx.raise_problems`` raises them
        all at the end). For a value the caller cannot do without, raise ``error`` instead."""
        self.ctx.problems.append(self.error(name, message))

    def text(self, name: str, *, required: bool = False, default: str | None = None) -> str | None:
        value = self.raw(name)
        if value is None:
            if required:
                raise self.missing(name)
            return default
        if not isinstance(value, str):
            if not required:
                self.note(name, f"must be a string, not {type_name(value)}")
                return default
            raise self.error(name, f"must be a string, not {type_name(value)}")
        if "\x00" in value:  # no path, command or name holds one: os calls refuse it
            raise self.error(name, NUL_CHARACTER)
        if required and not value.strip():
            raise self.error(name, "must not be empty")
        return value

    def integer(
        self, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
    ) -> int:
        value = self.raw(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.note(name, f"must be an integer, not {type_name(value)}")
            return default
        if value < minimum or (maximum is not None and value > maximum):
            bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
            self.note(name, f"must be {bound}, not {value}")
            return default
        return value

    def flag(self, name: str, default: bool) -> bool:
        value = self.raw(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.note(name, f"must be true or false, not {type_name(value)}")
            return default
        return value

    def str_list(self, name: str, *, required: bool = False) -> tuple[str, ...]:
        value = self.raw(name)
        if value is None:
            if required:
                raise self.missing(name)
            return ()
        if not isinstance(value, list):
            raise self.error(name, f"must be an array of strings, not {type_name(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item:
                raise self.ctx.error(
                    f"{self.path(name)}[{i}]", f"must be a non-empty string, not {item!r}"
                )
            if "\x00" in item:
                raise self.ctx.error(f"{self.path(name)}[{i}]", NUL_CHARACTER)
        if required and not value:
            raise self.error(name, "must list at least one entry")
        return tuple(value)

    def table(self, name: str) -> Section:
        value = self.raw(name)
        return Section(self.ctx, {} if value is None else value, self.path(name))

    def tables(self, name: str) -> list[Section]:
        value = self.raw(name)
        if value is None:
            return []
        if not isinstance(value, list):
            # `[applications.shop]` is the natural first guess in TOML: say which header
            # to write instead (the TOML header drops the array indices of the key path).
            header = re.sub(r"\[\d+\]", "", self.path(name))
            raise self.error(
                name,
                f"must be an array of tables, not {type_name(value)}: start each entry "
                f"with its own [[{header}]] line",
            )
        return [Section(self.ctx, v, f"{self.path(name)}[{i}]") for i, v in enumerate(value)]

    def done(self, *, ignore_unknown: bool = False) -> list[str]:
        """Refuse keys nobody read (typos); with `ignore_unknown`, return them instead."""
        unknown = [k for k in self.data if k not in self.used]
        if unknown and not ignore_unknown:
            errors = []
            for name in unknown:
                close = difflib.get_close_matches(name, sorted(self.used), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                errors.append(self.error(name, f"unknown key{hint}"))
            self.ctx.problems.extend(errors[:-1])  # every typo is reported, not the first
            raise errors[-1]
        return [self.path(k) for k in unknown]


def parse_database(sec: Section, name: str | None = None) -> DatabaseSpec:
    """A database entry; `name` is given when the layout derives it (legacy JSON)."""
    if sec.has("password"):
        raise sec.error("password", INLINE_PASSWORD)
    if name is None:
        name = sec.text("name", required=True)
        assert name is not None
        if not DB_NAME_RE.match(name):
            raise sec.error(
                "name",
                f"{name!r} is not a valid database name: use letters, digits, '.', '_' and '-' "
                "(it becomes a file name in the snapshot)",
            )
    given = sec.text("engine", required=True)
    assert given is not None
    engine = canonical_engine_name(given.lower())
    if engine not in engine_names():
        aliases = ", ".join(f"{a} = {c}" for a, c in sorted(ALIASES.items()))
        raise sec.error(
            "engine",
            f"unknown engine {given!r}: expected one of {', '.join(engine_names())} "
            f"(aliases: {aliases})",
        )
    path = sec.text("path")
    host, user, database = sec.text("host"), sec.text("user"), sec.text("database")
    port = sec.integer("port", 0, minimum=1, maximum=65535) if sec.has("port") else None
    password_env, password_file = sec.text("password_env"), sec.text("password_file")
    if password_env and password_file:
        raise sec.error("password_file", "give password_env or password_file, not both")
    if password_env is not None and not ENV_NAME_RE.match(password_env):
        raise sec.error("password_env", f"{password_env!r} is not an environment variable name")
    if engine == "sqlite":
        for key in ("host", "port", "user", "database", "password_env", "password_file"):
            if sec.has(key):
                raise sec.error(key, "is not used by the sqlite engine")
        if not path:
            raise sec.missing("path", " (the SQLite file)")
        path = sec.ctx.resolve(path, sec.path("path"))
    else:
        if path is not None:
            raise sec.error("path", f"is only for sqlite; {engine} needs host/port/database")
        if not database:
            raise sec.missing("database", f" (the {engine} database name)")
    options = _options(sec, engine)
    return DatabaseSpec(
        name=name,
        engine=engine,
        path=path,
        host=host,
        port=port,
        user=user,
        database=database,
        password_env=password_env,
        password_file=(
            sec.ctx.resolve(password_file, sec.path("password_file")) if password_file else None
        ),
        options=options,
    )


def _options(sec: Section, engine: str) -> dict[str, str]:
    table = sec.table("options")
    known = engine_options(engine)
    out: dict[str, str] = {}
    for key in list(table.data):
        value = table.raw(key)
        if known is not None and key not in known:
            raise table.error(
                key, f"unknown {engine} option (known: {', '.join(sorted(known)) or 'none'})"
            )
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, int | str):
            out[key] = str(value)
        else:
            raise table.error(key, f"must be a string, integer or boolean, not {type_name(value)}")
        if "\x00" in out[key]:
            raise table.error(key, NUL_CHARACTER)
        problem = _option_problem(engine, key, out[key])
        if problem:
            raise table.error(key, problem)
    return out


def _option_problem(engine: str, key: str, value: str) -> str | None:
    """The engine's own check of an option's value (`check_option` in its module), if any."""
    module = {"postgresql": "postgresql", "mysql": "mysql", "sqlite": "sqlite"}.get(engine)
    if module is None:
        return None
    check = getattr(importlib.import_module(f"casbackup.engines.{module}"), "check_option", None)
    return check(key, value) if callable(check) else None
