"""The seed's JSON layout (`config_phase3.json`), read into the same `Config` as TOML.

The old layout has no repository section (give it with `-r`/`CASBACKUP_REPO`), one `source`
per application, and one top-level `databases` list not tied to applications. Each database is
attached to applications by these rules, in order:

1. an explicit `"application": "Name"` (or `"app"`) in the entry, an extension of the old layout;
2. a SQLite file inside an application's source belongs to that application (the one with the
   deepest matching source);
3. with a single application, every database belongs to it;
4. otherwise the database is backed up with every application, as the old system did (it put all
   dumps into every archive), and a warning suggests adding `"application"`.

Database entries keep their old key names (`type`, `username`, `name`/`db_name` for the server
database); each gets a snapshot name derived from its file or database name. Keys the old system
had but casbackup does not use are reported as warnings, not errors, so an old file loads as is;
inline passwords are still refused (secrets never come from the config text).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from casbackup.config.fields import Ctx, Section, parse_database
from casbackup.config.load import (
    check_app_name,
    check_app_snapshot,
    check_backup_type,
    check_unique_apps,
    parse_plugins,
    parse_recovery,
    parse_snapshots,
    parse_verification,
    snapshots_section,
)
from casbackup.config.model import (
    AppConfig,
    AppVerification,
    Config,
    DisasterRecoveryConfig,
    PluginsConfig,
    SnapshotsConfig,
    VerificationConfig,
)
from casbackup.engines.base import DatabaseSpec
from casbackup.errors import ConfigError

_DB_RENAME = {
    "type": "engine",
    "username": "user",
    "name": "database",
    "db_name": "database",
    "dbname": "database",
    "app": "application",
}
_APP_RENAME = {"source_path": "source"}


class _DuplicateKey(ValueError):
    """A key given twice in one JSON object (``json.loads`` would keep the last)."""


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _key_line(text: str, key: str) -> int:
    """The line of ``key``'s second appearance as an object key (1-based; 0 if not found)."""
    seen = 0
    for number, line in enumerate(text.splitlines(), 1):
        seen += line.count(json.dumps(key) + ":") + line.count(json.dumps(key) + " :")
        if seen >= 2:
            return number
    return 0


def load_legacy(text: str, ctx: Ctx) -> Config:
    """The seed's JSON layout as a ``Config``. Raises ConfigError (invalid JSON, a key given
    twice in one object, nesting too deep, or what the sections' checks find)."""
    from casbackup.config.load import NESTED_TOO_DEEPLY

    try:
        data = json.loads(text, object_pairs_hook=_refuse_duplicates)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}", path=str(ctx.path)
        ) from None
    except _DuplicateKey as e:
        # TOML refuses the same; JSON parsers differ, and the one we use keeps the last
        # value, dropping the first without a word (an application list, a source).
        key = str(e)
        line = _key_line(text, key)
        where = f" (line {line})" if line else ""
        raise ConfigError(
            f"invalid JSON: key {key!r} given twice in one object{where}", path=str(ctx.path)
        ) from None
    except RecursionError:
        raise ConfigError(NESTED_TOO_DEEPLY, path=str(ctx.path)) from None
    top = Section(ctx, data, "")
    warnings: list[str] = []

    backup = top.table("backup")
    backup_type = check_backup_type(
        backup, "default_backup_type", backup.text("default_backup_type") or "full"
    )
    warnings += _ignored(backup)

    # Each section, application and database is checked even after another failed: the
    # caller reports every problem at once (Ctx.raise_problems).
    verification = ctx.attempt(
        lambda: parse_verification(top.table("verification")), VerificationConfig()
    )
    recovery = ctx.attempt(
        lambda: parse_recovery(top.table("disaster_recovery")), DisasterRecoveryConfig()
    )
    snapshots = ctx.attempt(lambda: parse_snapshots(snapshots_section(top)), SnapshotsConfig())

    def plugins_section() -> PluginsConfig:
        plugins_sec = top.table("plugins")
        plugins_sec.raw("disabled_reason")  # informational in the old system
        return parse_plugins(plugins_sec)

    plugins = ctx.attempt(plugins_section, PluginsConfig())

    raw_apps = top.raw("applications") or []
    if not isinstance(raw_apps, list):
        raise top.error("applications", "must be an array of objects")

    def one_app(i: int, raw: object) -> AppConfig:
        sec = Section(ctx, raw, f"applications[{i}]", _APP_RENAME)
        name = check_app_name(sec, sec.text("name", required=True) or "")
        if sec.has("sources"):
            sources = sec.str_list("sources", required=True)
            if sec.has("source"):  # one of them would be dropped: say which, not guess
                raise sec.error(
                    "source", f"give source or sources, not both (sources = {list(sources)})"
                )
        else:
            sources = (sec.text("source", required=True) or "",)
        app = AppConfig(
            name=name,
            sources=tuple(
                ctx.resolve(s, sec.path("sources" if sec.has("sources") else "source"))
                for s in sources
            ),
            description=sec.text("description", default="") or "",
            excludes=sec.str_list("excludes"),
            default_backup_type=backup_type,
            verification=AppVerification(auto_verify=verification.auto_verify),
            snapshot=check_app_snapshot(sec, sec.text("snapshot")),
        )
        warnings.extend(_ignored(sec))
        return app

    parsed = [ctx.attempt(lambda i=i, raw=raw: one_app(i, raw), None)
              for i, raw in enumerate(raw_apps)]  # fmt: skip
    apps: list[AppConfig] = [a for a in parsed if a is not None]
    ctx.raise_problems()  # databases name their applications: those must be right first
    check_unique_apps([a.name for a in apps], ctx)
    ctx.raise_problems()

    attached = _attach_databases(top, ctx, apps, warnings)
    apps = [replace(app, databases=_unique_names(attached[app.name])) for app in apps]
    warnings += _ignored(top)
    return Config(
        applications=tuple(apps),
        verification=verification,
        disaster_recovery=recovery,
        snapshots=snapshots,
        plugins=plugins,
        source=ctx.path,
        layout="legacy-json",
        warnings=tuple(warnings),
    )


def _ignored(sec: Section) -> list[str]:
    """One warning per key of ``sec`` nobody read: the old layout's keys load as they are."""
    return [f"{key}: ignored (not used by casbackup)" for key in sec.done(ignore_unknown=True)]


def _attach_databases(
    top: Section, ctx: Ctx, apps: list[AppConfig], warnings: list[str]
) -> dict[str, list[DatabaseSpec]]:
    attached: dict[str, list[DatabaseSpec]] = {app.name: [] for app in apps}
    raw_list = top.raw("databases") or []
    if not isinstance(raw_list, list):
        raise top.error("databases", "must be an array of objects")
    for i, raw in enumerate(raw_list):
        sec = Section(ctx, raw, f"databases[{i}]", _DB_RENAME)
        owner = ctx.attempt(lambda s=sec: s.text("application"), None)
        parsed = ctx.attempt(lambda s=sec: parse_database(s, name="db"), None)
        if parsed is None:
            continue
        warnings += _ignored(sec)
        spec = replace(parsed, name=_derive_name(parsed))
        if owner is not None:
            if owner not in attached:
                ctx.problems.append(sec.error("application", f"no application named {owner!r}"))
                continue
            targets = [owner]
        else:
            targets = _owners(spec, apps)
            if len(targets) > 1:
                warnings.append(
                    f"databases[{i}]: not tied to one application, backed up with each of "
                    f'{", ".join(targets)}; add "application": "NAME" to choose'
                )
        for name in targets:
            attached[name].append(spec)
    return attached


def _owners(spec: DatabaseSpec, apps: list[AppConfig]) -> list[str]:
    if spec.path:
        best: tuple[int, str] | None = None
        for app in apps:
            for src in app.sources:
                if Path(spec.path).is_relative_to(src) and (best is None or len(src) > best[0]):
                    best = (len(src), app.name)
        if best is not None:
            return [best[1]]
    return [app.name for app in apps]


def _derive_name(spec: DatabaseSpec) -> str:
    base = Path(spec.path).stem if spec.path else (spec.database or spec.engine)
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip("._-")[:90]
    return clean or spec.engine


def _unique_names(specs: list[DatabaseSpec]) -> tuple[DatabaseSpec, ...]:
    seen: set[str] = set()
    out = []
    for spec in specs:
        name, n = spec.name, 1
        while name in seen:
            n += 1
            name = f"{spec.name}-{n}"
        seen.add(name)
        out.append(replace(spec, name=name))
    return tuple(out)
