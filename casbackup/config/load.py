"""Finding and reading the configuration file (TOML, or the seed's legacy JSON)."""

from __future__ import annotations

import datetime as dt
import difflib
import os
import re
import shlex
import tomllib
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

from casbackup.config.fields import (
    DB_NAME_RE,
    ENV_NAME_RE,
    INLINE_PASSWORD,
    Ctx,
    Section,
    expand_home,
    parse_database,
    type_name,
)
from casbackup.config.locate import key_lines
from casbackup.config.model import (
    APP_SNAPSHOT_CHOICES,
    BACKUP_TYPES,
    BUILTIN_NOTIFIERS,
    IF_PRESENT_RULE,
    NOTIFY_EVENTS,
    SNAPSHOT_PROVIDERS,
    AppConfig,
    AppVerification,
    Config,
    DisasterRecoveryConfig,
    NotifierConfig,
    PluginsConfig,
    RepositoryConfig,
    RetentionConfig,
    SnapshotsConfig,
    VerificationConfig,
    delta_files_size,
    exclude_size,
    if_present_ok,
)
from casbackup.engines.base import DatabaseSpec
from casbackup.errors import ConfigError, UsageError
from casbackup.timezones import check_zone
from casbackup.units import parse_duration, parse_run_time

ENV_VAR = "CASBACKUP_CONFIG"
# A config with a thousand applications is well under 1 MiB.
MAX_CONFIG_BYTES = 16 << 20
NESTED_TOO_DEEPLY = "invalid config: arrays or tables nested too deeply"
LOCAL_NAME = "casbackup.toml"
# App names become tags and appear in `--app NAME`: no separators, no control characters.
# No lone surrogates either (`backup --app` with a byte that is not UTF-8): not text.
APP_NAME_RE = re.compile(r"^[A-Za-z0-9_][^\x00-\x1f\x7f/,:\ud800-\udfff]{0,99}$")
KEEP_WITHIN_RE = re.compile(r"^(\d+[ymwdh])+$")
LVM_SIZE_RE = re.compile(r"^(\d+(\.\d+)?[bBsSkKmMgGtTpPeE]?|\d{1,3}%(ORIGIN|FREE|VG|PVS))$")
# An interval past a year is what @yearly says; a huge one (999999999999 minutes) made the
# service's scheduler overflow its dates.
MAX_EVERY_MINUTES = 366 * 24 * 60
EVERY_TOO_LONG = "the interval must be at most 366 days (use @yearly or a cron expression)"
_CRON_FIELD_RE = re.compile(r"^[0-9A-Za-z*/,\-?LW#]+$")
_CRON_MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# The seed's "every N minutes" (and hours), kept as "@every Nm" / "@every Nh".
_EVERY_RE = re.compile(
    r"^(?:@every\s*(\d+)\s*([mh])|every\s+(\d+)\s+(minute|minutes|hour|hours))$", re.I
)


def find_config_path(explicit: str | None = None) -> Path | None:
    """--config, then $CASBACKUP_CONFIG, then ./casbackup.toml, then the user's config folder.

    A file named explicitly (flag or variable) must exist: silently falling back to another
    file would back up the wrong things.
    """
    for given, origin in ((explicit, "--config"), (os.environ.get(ENV_VAR), ENV_VAR)):
        if given:
            try:
                path = Path(expand_home(given))
            except ValueError as exc:
                raise ConfigError(f"config file named by {origin}: {exc}") from None
            if not path.is_file():
                what = "is not a file" if path.exists() else "does not exist"
                raise ConfigError(f"config file named by {origin} {what}", path=str(path))
            return path
    local = Path.cwd() / LOCAL_NAME
    if local.is_file():
        return local
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    user = base / "casbackup" / "config.toml"
    return user if user.is_file() else None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; JSON (by suffix or content) is the seed's layout."""
    try:
        file = Path(expand_home(os.fspath(path))).absolute()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        with file.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError("config file does not exist", path=str(file)) from None
    except OSError as e:
        raise ConfigError(f"cannot read config file: {e.strerror}", path=str(file)) from None
    if len(raw) > MAX_CONFIG_BYTES:
        # Parsing is not streamed: a file this big (a log written over it, /dev/zero
        # linked in its place) would cost many times its size in memory to be refused.
        raise ConfigError(
            f"larger than {MAX_CONFIG_BYTES >> 20} MiB: not a casbackup config", path=str(file)
        )
    try:
        text = raw.decode("utf-8-sig")  # a BOM (Windows editors write one) is not text
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start})", path=str(file)) from None
    ctx = Ctx(file)
    try:
        if file.suffix.lower() == ".json" or text.lstrip().startswith("{"):
            from casbackup.config.legacy import load_legacy

            config = load_legacy(text, ctx)
        else:
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                raise ConfigError(f"invalid TOML: {e}", path=str(file)) from None
            except RecursionError:  # tomllib's parser recurses once per nested array/table
                raise ConfigError(NESTED_TOO_DEEPLY, path=str(file)) from None
            ctx.lines = key_lines(text)
            config = parse_toml(data, ctx)
    except ConfigError as exc:  # one that stopped the parse: reported with those before it
        ctx.problems.append(exc)
        ctx.raise_problems()
    ctx.raise_problems()
    return config


def parse_toml(data: dict[str, object], ctx: Ctx) -> Config:
    """Validate a parsed TOML config. Each section, application and database is checked even
    after another failed (``Ctx.attempt``); the caller raises them all (``Ctx.raise_problems``).
    """
    top = Section(ctx, data, "")
    version = top.integer("version", 1, minimum=1)
    if version != 1:
        raise top.error("version", f"unsupported config version {version} (this casbackup: 1)")
    verification = ctx.attempt(
        lambda: parse_verification(top.table("verification")), VerificationConfig()
    )
    sections = ctx.attempt(lambda: top.tables("applications"), [])
    parsed = [ctx.attempt(lambda s=sec: parse_app(s, verification.auto_verify), None)
              for sec in sections]  # fmt: skip
    apps = tuple(a for a in parsed if a is not None)
    check_unique_apps([sec.data.get("name") for sec in sections], ctx)
    config = Config(
        repository=ctx.attempt(
            lambda: parse_repository(top.table("repository")), RepositoryConfig()
        ),
        applications=apps,
        verification=verification,
        disaster_recovery=ctx.attempt(
            lambda: parse_recovery(top.table("disaster_recovery")), DisasterRecoveryConfig()
        ),
        snapshots=ctx.attempt(lambda: parse_snapshots(snapshots_section(top)), SnapshotsConfig()),
        plugins=ctx.attempt(lambda: parse_plugins(top.table("plugins")), PluginsConfig()),
        source=ctx.path,
        layout="toml",
        timezone=ctx.attempt(lambda: _timezone(top), None),
    )
    ctx.attempt(top.done, [])
    ctx.raise_problems()
    return replace(config, warnings=tuple(ctx.warnings))


def _timezone(top: Section) -> str | None:
    name = top.text("timezone")
    if name is None:
        return None
    try:
        return check_zone(name)
    except UsageError as exc:
        raise top.error("timezone", str(exc)) from None


def parse_repository(sec: Section) -> RepositoryConfig:
    if sec.has("password"):
        raise sec.error("password", INLINE_PASSWORD + " or password_command")
    location = sec.text("location")
    env, file, command = (
        sec.text("password_env"),
        sec.text("password_file"),
        sec.text("password_command"),
    )
    given = [k for k, v in (("password_env", env), ("password_file", file),
                            ("password_command", command)) if v]  # fmt: skip
    if len(given) > 1:
        raise sec.error(given[1], f"give only one of password_env, password_file, "
                        f"password_command (also {given[0]})")  # fmt: skip
    _check_env_name(sec, env)
    if command is not None:
        try:
            if not shlex.split(command):
                raise sec.error("password_command", "must not be empty")
        except ValueError as e:
            raise sec.error("password_command", f"cannot be split into words: {e}") from None
    s3 = _s3_settings(sec)
    sec.done()
    return RepositoryConfig(
        location=sec.ctx.resolve_location(location, sec.path("location")) if location else None,
        password_env=env,
        password_file=sec.ctx.resolve(file, sec.path("password_file")) if file else None,
        password_command=command,
        **s3,
    )


def _check_env_name(sec: Section, name: str | None) -> None:
    """``password_env`` names a variable (``$HOME`` or ``MY VAR`` is never set: the
    password would be "missing" at every run, with the config reported fine)."""
    if name is not None and not ENV_NAME_RE.match(name):
        raise sec.error("password_env", f"{name!r} is not an environment variable name")


def _s3_settings(sec: Section) -> dict[str, str | None]:
    """The [repository] section's S3 keys, checked: a secret only by file or variable."""
    if sec.has("s3_secret_access_key"):
        raise sec.error(
            "s3_secret_access_key",
            "secrets are not kept in the config: use s3_secret_access_key_file or "
            "s3_secret_access_key_env (or AWS_SECRET_ACCESS_KEY)",
        )
    key_id = sec.text("s3_access_key_id")
    secret_file, secret_env = (
        sec.text("s3_secret_access_key_file"),
        sec.text("s3_secret_access_key_env"),
    )
    if secret_file and secret_env:
        raise sec.error("s3_secret_access_key_env",
                        "give s3_secret_access_key_file or s3_secret_access_key_env, not both")  # fmt: skip
    if secret_env is not None and not ENV_NAME_RE.match(secret_env):
        raise sec.error(
            "s3_secret_access_key_env", f"{secret_env!r} is not an environment variable name"
        )
    if bool(key_id) != bool(secret_file or secret_env):
        missing = "s3_secret_access_key_file" if key_id else "s3_access_key_id"
        raise sec.error(missing, "S3 credentials need both s3_access_key_id and a secret key "
                        "(s3_secret_access_key_file or s3_secret_access_key_env)")  # fmt: skip
    addressing = sec.text("s3_addressing")
    if addressing is not None and addressing not in ("path", "virtual"):
        raise sec.error("s3_addressing", f"must be 'path' or 'virtual', not {addressing!r}")
    return {
        "s3_access_key_id": key_id,
        "s3_secret_access_key_file": (
            sec.ctx.resolve(secret_file, sec.path("s3_secret_access_key_file"))
            if secret_file
            else None
        ),
        "s3_secret_access_key_env": secret_env,
        "s3_region": sec.text("s3_region"),
        "s3_addressing": addressing,
    }


def parse_verification(sec: Section) -> VerificationConfig:
    sandbox = sec.text("sandbox_directory")
    result = VerificationConfig(
        enabled=sec.flag("enabled", True),
        sandbox_directory=(
            sec.ctx.resolve(sandbox, sec.path("sandbox_directory")) if sandbox else None
        ),
        auto_verify=sec.flag("auto_verify", False),
        cleanup_hours=sec.integer("cleanup_hours", 24),
    )
    sec.unused("cleanup_hours", "each verification removes its sandbox when it ends, and the "
               "next one sweeps what a killed one left")  # fmt: skip
    sec.done()
    return result


def parse_recovery(sec: Section) -> DisasterRecoveryConfig:
    folder = sec.text("recovery_directory")
    result = DisasterRecoveryConfig(
        enabled=sec.flag("enabled", True),
        recovery_directory=(
            sec.ctx.resolve(folder, sec.path("recovery_directory")) if folder else None
        ),
        auto_verify=sec.flag("auto_verify", True),
        restore_configs=sec.flag("restore_configs", True),
        generate_reports=sec.flag("generate_reports", True),
    )
    # The seed's switches for what recover always does: turned off, they would mislead.
    for key, off, why in (
        ("enabled", not result.enabled, "recover is always available; who may run it is "
         "the service's roles (admin)"),
        ("restore_configs", not result.restore_configs, "recover restores every source of "
         "the application, its configuration files included"),
        ("generate_reports", not result.generate_reports, "recover always writes its report "
         "beside the recovered files"),
    ):  # fmt: skip
        if off:
            sec.unused(key, why)
    sec.done()
    return result


def snapshots_section(top: Section) -> Section:
    """`[snapshots]`, where the seed's `type` is another name for `provider` (in the legacy
    JSON and in TOML alike: a section copied from the seed's config keeps working)."""
    value = top.raw("snapshots")
    return Section(top.ctx, {} if value is None else value, "snapshots", {"type": "provider"})


def parse_snapshots(sec: Section) -> SnapshotsConfig:
    provider = sec.text("provider")
    if provider is not None and provider not in (*SNAPSHOT_PROVIDERS, "auto"):
        raise sec.error(
            "provider", f"unknown provider {provider!r}: expected one of "
            f"{', '.join(SNAPSHOT_PROVIDERS)}, auto"
        )  # fmt: skip
    size = sec.text("lvm_snapshot_size") or "1G"
    if not LVM_SIZE_RE.match(size):
        raise sec.error(
            "lvm_snapshot_size",
            f"{size!r} is not an LVM size: use e.g. '1G', '500M' or '20%ORIGIN'",
        )
    result = SnapshotsConfig(
        enabled=sec.flag("enabled", False),
        provider=provider,
        auto_cleanup=sec.flag("auto_cleanup", True),
        max_snapshots=sec.integer("max_snapshots", 5, minimum=1),
        lvm_snapshot_size=size,
    )
    if result.enabled and provider is None:
        raise sec.error(None, "snapshots are enabled but no 'provider' is given")
    sec.done()
    return result


def parse_plugins(sec: Section) -> PluginsConfig:
    folder = sec.text("directory")
    result = PluginsConfig(
        enabled=sec.flag("enabled", False),
        directory=sec.ctx.resolve(folder, sec.path("directory")) if folder else None,
        offline_mode=sec.flag("offline_mode", True),
    )
    sec.unused("directory", "plugins are Python packages installed beside casbackup, found by "
               "their entry points ('casbackup plugins list')")  # fmt: skip
    sec.done()
    return result


def _retention_duration(sec: Section, key: str) -> str | None:
    """A keep_within* value as `forget` reads it, or None (noted) when it is not one."""
    within = sec.text(key)
    if within is not None and not KEEP_WITHIN_RE.match(within):
        sec.note(
            key,
            f"{within!r} is not a duration: use digits followed by y, m, w, d or h (e.g. '1y6m')",
        )
        return None
    if within is not None:
        try:  # as `forget` reads it: a unit given twice, a duration past timedelta's range
            parse_duration(within)
        except UsageError as exc:
            sec.note(key, str(exc))
            return None
    return within


def parse_retention(sec: Section) -> RetentionConfig:
    within_keys = ("keep_within", "keep_within_hourly", "keep_within_daily",
                   "keep_within_weekly", "keep_within_monthly", "keep_within_yearly")  # fmt: skip
    result = RetentionConfig(
        **{k: sec.integer(k, 0) for k in ("keep_last", "keep_hourly", "keep_daily",
                                          "keep_weekly", "keep_monthly", "keep_yearly")},
        **{k: _retention_duration(sec, k) for k in within_keys},
        keep_tags=sec.str_list("keep_tags"),
    )  # fmt: skip
    sec.done()
    return result


def check_schedule(sec: Section, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return normalize_schedule(value)
    except ValueError as exc:
        raise sec.error("schedule", str(exc)) from None


def normalize_schedule(value: str) -> str:
    """A schedule as the scheduler reads it (``@every 15m``, a macro, 5 cron fields) from
    what a user writes ("every 15 minutes", "@daily", "0 2 * * *"). ValueError with the
    message to show (which forms there are) for anything else."""
    text = " ".join(value.split())
    if text in _CRON_MACROS:
        return text
    every = _EVERY_RE.match(text)
    if every is not None:
        count = int(every.group(1) or every.group(3))
        unit = (every.group(2) or every.group(4))[0].lower()
        if count == 0:
            raise ValueError(f"{value!r}: the interval must be at least 1")
        if count * (60 if unit == "h" else 1) > MAX_EVERY_MINUTES:
            raise ValueError(f"{value!r}: {EVERY_TOO_LONG}")
        return f"@every {count}{unit}"
    fields = text.split(" ")
    if len(fields) != 5 or not all(_CRON_FIELD_RE.match(f) for f in fields):
        raise ValueError(
            f"{value!r} is not a cron expression: give 5 fields (minute hour day month "
            "weekday), 'every N minutes', or one of " + ", ".join(_CRON_MACROS),
        )
    from cronsim import CronSim, CronSimError

    try:  # the scheduler's own parser: a field out of range is found here, not at `serve`
        CronSim(text, dt.datetime(2000, 1, 1))
    except CronSimError as e:
        raise ValueError(f"{value!r} is not a cron expression: {e}") from None
    return text


def check_backup_type(sec: Section, key: str, value: str) -> str:
    if value not in BACKUP_TYPES:
        raise sec.error(
            key, f"unknown backup type {value!r}: expected one of {', '.join(BACKUP_TYPES)}"
        )
    return value


def check_app_name(sec: Section, name: str) -> str:
    if not APP_NAME_RE.match(name) or name != name.strip():
        raise sec.error(
            "name",
            f"{name!r} is not a valid application name: start with a letter, digit or '_', "
            "at most 100 characters, no '/', ',', ':' or control characters",
        )
    return name


def parse_app(sec: Section, auto_verify_default: bool) -> AppConfig | None:
    """One application; None (with its problems recorded in ``sec.ctx``) when it is invalid."""
    ctx = sec.ctx
    before = len(ctx.problems)
    name = ctx.attempt(lambda: check_app_name(sec, sec.text("name", required=True) or ""), "")
    sources = ctx.attempt(
        lambda: tuple(
            ctx.resolve(s, f"{sec.path('sources')}[{i}]")
            for i, s in enumerate(sec.str_list("sources", required=True))
        ),
        (),
    )
    parsed = [ctx.attempt(lambda d=d: _database(d), None)
              for d in ctx.attempt(lambda: sec.tables("databases"), [])]  # fmt: skip
    databases = tuple(d for d in parsed if d is not None)
    seen: dict[str, int] = {}
    for i, db in enumerate(databases if len(databases) == len(parsed) else ()):
        if db.name in seen:
            ctx.problems.append(ctx.error(
                f"{sec.key}.databases[{i}].name",
                f"duplicate database name {db.name!r} (also databases[{seen[db.name]}])",
            ))  # fmt: skip
        seen[db.name] = i
    verification = ctx.attempt(
        lambda: _app_verification(sec, auto_verify_default), AppVerification()
    )
    description = ctx.attempt(lambda: sec.text("description", default="") or "", "")
    excludes = ctx.attempt(lambda: sec.str_list("excludes"), ())
    exclude_caches = ctx.attempt(lambda: sec.flag("exclude_caches", False), False)
    if_present = ctx.attempt(lambda: _if_present(sec), ())
    larger_than = ctx.attempt(lambda: _larger_than(sec), 0)
    backup_type = ctx.attempt(lambda: check_backup_type(
        sec, "default_backup_type", sec.text("default_backup_type") or "incremental"
    ), "incremental")  # fmt: skip
    retention = ctx.attempt(lambda: parse_retention(sec.table("retention")), RetentionConfig())
    schedule = ctx.attempt(lambda: check_schedule(sec, sec.text("schedule")), None)
    repository = ctx.attempt(lambda: _app_repository(sec), None)
    notify = ctx.attempt(lambda: tuple(parse_notifier(n) for n in sec.tables("notify")), ())
    snapshot = ctx.attempt(lambda: check_app_snapshot(sec, sec.text("snapshot")), None)
    delta_files = ctx.attempt(lambda: _delta_files(sec), 0)
    max_run_time = ctx.attempt(lambda: _max_run_time(sec), None)
    ctx.attempt(sec.done, [])
    if len(ctx.problems) > before:
        return None
    return AppConfig(
        name=name, description=description, sources=sources, excludes=excludes,
        databases=databases, default_backup_type=backup_type, retention=retention,
        schedule=schedule, verification=verification, repository=repository, notify=notify,
        snapshot=snapshot, delta_files=delta_files, max_run_time=max_run_time,
        exclude_caches=exclude_caches, exclude_if_present=if_present,
        exclude_larger_than=larger_than,
    )  # fmt: skip


def _if_present(sec: Section) -> tuple[str, ...]:
    """``exclude_if_present``: file names (NAME or NAME:HEADER) that tag a folder to leave out."""
    specs = sec.str_list("exclude_if_present")
    for spec in specs:
        if not if_present_ok(spec):
            raise sec.error("exclude_if_present", f"{spec!r}: {IF_PRESENT_RULE}")
    return specs


def _larger_than(sec: Section) -> int:
    """``exclude_larger_than``: a size ("2G", or bytes as an integer); 0 or "0": no limit."""
    value = sec.raw("exclude_larger_than")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise sec.error(
            "exclude_larger_than", f'must be a size such as "2G", not {type_name(value)}'
        )
    try:
        return exclude_size(value)
    except ValueError as exc:
        raise sec.error("exclude_larger_than", str(exc)) from None


def _delta_files(sec: Section) -> int:
    """``delta_files``: a size ("64M", or bytes as an integer); 0 or "0" is off."""
    value = sec.raw("delta_files")
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise sec.error("delta_files", f'must be a size such as "64M", not {type_name(value)}')
    try:
        return delta_files_size(value)
    except ValueError as exc:
        raise sec.error("delta_files", str(exc)) from None


def _max_run_time(sec: Section) -> int | None:
    """``max_run_time``: a run time ("6h", "90min", or seconds as an integer); 0 is no limit."""
    value = sec.raw("max_run_time")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise sec.error("max_run_time", f'must be a run time such as "6h", not {type_name(value)}')
    try:
        return parse_run_time(value)
    except ValueError as exc:
        raise sec.error("max_run_time", str(exc)) from None


def _app_verification(sec: Section, auto_verify_default: bool) -> AppVerification:
    ver = sec.table("verification")
    verification = AppVerification(
        required_files=ver.str_list("required_files"),
        auto_verify=ver.flag("auto_verify", auto_verify_default),
    )
    ver.done()
    return verification


def parse_notifier(sec: Section) -> NotifierConfig:
    """One ``[[applications.notify]]`` table; unknown keys are refused (typos)."""
    kind = sec.text("type", required=True) or ""
    _check_notifier_type(sec, kind)
    on = sec.str_list("on") or (
        ("start", "success", "warning", "failure", "verify_failure")
        if kind == "healthchecks"
        else NotifierConfig(type=kind).on
    )
    for event in on:
        if event not in NOTIFY_EVENTS:
            raise sec.error("on", f"unknown event {event!r} (expected: {', '.join(NOTIFY_EVENTS)})")
    options = sec.raw("options") or {}
    if not isinstance(options, dict):
        raise sec.error("options", "must be a table")
    password_env, password_file = sec.text("password_env"), sec.text("password_file")
    if password_env and password_file:
        raise sec.error("password_file", "give password_env or password_file, not both")
    _check_env_name(sec, password_env)
    result = NotifierConfig(
        type=kind,
        on=on,
        url=sec.text("url", default="") or "",
        timeout=sec.integer("timeout", 10, minimum=1, maximum=600),
        host=sec.text("host", default="") or "",
        port=sec.integer("port", 587, minimum=1, maximum=65535),
        starttls=sec.flag("starttls", True),
        cafile=sec.ctx.resolve(c, sec.path("cafile")) if (c := sec.text("cafile")) else None,
        sender=sec.text("sender", default="") or "",
        to=sec.str_list("to"),
        username=sec.text("username", default="") or "",
        password_env=password_env,
        password_file=(
            sec.ctx.resolve(password_file, sec.path("password_file")) if password_file else None
        ),
        command=sec.text("command", default="") or "",
        options=dict(options),
    )
    needs = {"webhook": ("url",), "healthchecks": ("url",), "email": ("host", "sender", "to"),
             "command": ("command",)}.get(kind, ())  # fmt: skip
    for key in needs:
        if not getattr(result, key):
            raise sec.error(None, f"a {kind} notifier needs {key!r}")
    if kind in ("webhook", "healthchecks"):
        parts = urlsplit(result.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise sec.error("url", f"{result.url!r} is not an http(s) URL with a host")
    if kind == "command":  # split at every event: a bad one failed each of them, as a warning
        try:
            if not shlex.split(result.command):
                raise sec.error("command", "must not be empty")
        except ValueError as e:
            raise sec.error("command", f"cannot be split into words: {e}") from None
    sec.done()
    return result


def _check_notifier_type(sec: Section, kind: str) -> None:
    """``type`` names a built-in notifier or an installed plugin's (a typo was a warning at
    every backup, and no notification ever went out)."""
    if kind in BUILTIN_NOTIFIERS:
        return
    from casbackup import plugins

    if plugins.has("notifier", kind):
        return
    known = sorted({*BUILTIN_NOTIFIERS, *plugins.names("notifier")})
    close = difflib.get_close_matches(kind, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise sec.error("type", f"unknown notifier {kind!r}{hint}: expected one of {', '.join(known)}")


def _app_repository(sec: Section) -> RepositoryConfig | None:
    """An application's own ``[applications.repository]`` (used by ``casbackup serve``)."""
    if not sec.has("repository"):
        return None
    repo = parse_repository(sec.table("repository"))
    if not repo.location:
        raise sec.error("repository", "an application's own repository needs a location")
    return repo


def check_app_snapshot(sec: Section, value: str | None) -> str | None:
    """An application's `snapshot` setting: a provider, "auto" or "none" (or unset)."""
    if value is not None and value not in APP_SNAPSHOT_CHOICES:
        raise sec.error(
            "snapshot",
            f"unknown snapshot {value!r}: expected one of {', '.join(APP_SNAPSHOT_CHOICES)}",
        )
    return value


def _database(sec: Section) -> DatabaseSpec:
    spec = parse_database(sec)
    sec.done()
    return spec


def check_unique_apps(names: list[object], ctx: Ctx) -> None:
    """Two applications of one name. ``names`` are as written, one per entry in file order
    (so a duplicate is found also beside an application with other problems)."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if not isinstance(name, str):
            continue
        if name in seen:
            ctx.problems.append(ctx.error(
                f"applications[{i}].name",
                f"duplicate application name {name!r} (also applications[{seen[name]}])",
            ))  # fmt: skip
        seen[name] = i


__all__ = ["DB_NAME_RE", "find_config_path", "load_config", "parse_toml"]
