"""Where to put a database when recovering: `--db-into NAME=CONNECTION`.

CONNECTION is one of
- `postgresql://[user@]host[:port]/database[?password_env=VAR&password_file=F&sslmode=...]`
  (also `postgres://`, `mysql://`, `mariadb://`);
- `sqlite:///absolute/path.db`, or for an SQLite database simply a path;
- a bare database name: the server the local config names for that database, another database.

Only the command line and the local config say where a database goes and where its password
comes from; a snapshot's stored definition never does (see `plan.py`).

A password inside the URL is refused: command lines are visible to every user of the machine
(`ps`), and casbackup never takes secrets there. Name a variable or file instead.
"""

from __future__ import annotations

import os
from dataclasses import replace
from urllib.parse import parse_qsl, unquote, urlsplit

from casbackup.engines.base import DatabaseSpec, canonical_engine_name, engine_options
from casbackup.errors import UsageError

_SCHEMES = {"postgresql", "postgres", "mysql", "mariadb", "sqlite", "sqlite3"}


def split_assignment(
    text: str, option: str = "--db-into", form: str = "NAME=CONNECTION"
) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise UsageError(f"{option} {text!r}: use {form} (see --help)")
    return name.strip(), value.strip()


def connection_spec(
    name: str,
    engine: str,
    text: str,
    base: DatabaseSpec | None,
    *,
    option: str = "--db-into",
    need_database: bool = True,
) -> DatabaseSpec:
    """The spec for database `name` (of `engine`) given CONNECTION `text`.

    `base` is the local config's definition of that database, if any (never the snapshot's):
    a bare name keeps its server and password source.
    `need_database=False` is for servers only (verify's scratch databases get their own name).
    """
    engine = canonical_engine_name(engine)
    if "://" not in text:
        if engine == "sqlite":
            return DatabaseSpec(name=name, engine="sqlite", path=text)
        if "/" in text or "@" in text:
            raise UsageError(f"{option} {name}={text}: give a URL such as {engine}://host/db")
        if base is None:
            raise UsageError(
                f"{option} {name}={text}: the config names no server for {name!r}; "
                f"give a full URL such as {engine}://user@host:port/{text}"
            )
        return replace(base, name=name, engine=engine, database=text)
    url = urlsplit(text)
    scheme = canonical_engine_name(url.scheme.lower())
    if url.scheme.lower() not in _SCHEMES:
        raise UsageError(f"{option} {name}: unknown scheme {url.scheme!r}")
    if scheme != engine:
        raise UsageError(
            f"{option} {name}: the dump is a {engine} dump and cannot go into {scheme}"
        )
    if url.password is not None:
        raise UsageError(
            f"{option} {name}: never put a password on the command line; "
            "add ?password_env=VARIABLE (or password_file=FILE) to the URL instead"
        )
    if engine == "sqlite":
        path = unquote(url.path if not url.netloc else url.netloc + url.path)
        if not path:
            raise UsageError(f"{option} {name}: sqlite URL has no path")
        return DatabaseSpec(name=name, engine="sqlite", path=path)
    query = dict(parse_qsl(url.query, keep_blank_values=True))
    if "password" in query:
        raise UsageError(
            f"{option} {name}: never put a password on the command line; "
            "use ?password_env=VARIABLE (or password_file=FILE) instead"
        )
    known = {"password_env", "password_file", *(engine_options(engine) or ())}
    unknown = sorted(k for k in query if k not in known)
    if unknown:
        raise UsageError(f"{option} {name}: unknown parameter {unknown[0]!r} for {engine} "
                         f"(known: {', '.join(sorted(known))})")  # fmt: skip
    database = unquote(url.path.lstrip("/"))
    if not database and need_database:
        raise UsageError(f"{option} {name}: the URL names no database ({engine}://host/DATABASE)")
    try:
        port = url.port
    except ValueError:
        raise UsageError(f"{option} {name}: bad port in {text!r}") from None
    return DatabaseSpec(
        name=name,
        engine=engine,
        host=url.hostname or None,
        port=port,
        user=unquote(url.username) if url.username else None,
        database=database or None,
        password_env=query.pop("password_env", None),
        password_file=query.pop("password_file", None),
        options=query,
    )


def describe(spec: DatabaseSpec) -> str:
    """Where a database is, for plans and reports (never a secret)."""
    if spec.engine == "sqlite":
        return f"sqlite:{spec.path}"
    where = spec.host or "localhost"
    if spec.port:
        where += f":{spec.port}"
    user = f"{spec.user}@" if spec.user else ""
    return f"{spec.engine}://{user}{where}/{spec.database}"


def confined_spec(
    spec: DatabaseSpec, base: DatabaseSpec | None, target: str, in_place: bool
) -> tuple[DatabaseSpec, str | None]:
    """`spec` (from a db_into of the web service) as the service may use it, or why not.

    Whoever asks the service is not the machine's operator: a URL may not name a password
    variable or file (the service would read its own secrets for a server the request
    chose); a bare database name keeps the config's server and password source. An SQLite
    path goes below `target` (a relative one is taken from it; one outside, or any in
    place, is refused): the service writes nowhere else.
    """
    name = spec.name
    if spec.engine == "sqlite":
        path = spec.path or ""
        full = os.path.normpath(os.path.join(target, path))
        if in_place or os.path.commonpath([full, target]) != target or full == target:
            where = "its config path" if in_place else f"a path inside the target {target}"
            return spec, (
                f"database {name!r}: db_into {path} is refused: the service puts an SQLite "
                f"database only at {where}"
            )
        return replace(spec, path=full), None
    # The config's own server, user and password source (a bare name): its secret goes
    # where the config sends it, nowhere else.
    fields = ("host", "port", "user", "password_env", "password_file")
    own = base is not None and all(getattr(spec, f) == getattr(base, f) for f in fields)
    if (spec.password_env or spec.password_file) and not own:
        return spec, (
            f"database {name!r}: db_into may not name password_env or password_file (the "
            "service reads only the password sources its config names): give a database "
            "name on the config's server, or a server that needs no password"
        )
    return spec, None
