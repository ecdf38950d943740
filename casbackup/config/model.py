"""The configuration, as frozen values. The TOML layout it is read from:

```toml
version = 1                                  # optional; the only layout so far
timezone = "Europe/Berlin"                   # optional: the calendar of schedules (serve) and
                                             #   of retention's days and weeks (forget);
                                             #   default: the machine's zone

[repository]
location = "/srv/backups/repo"               # a path (relative to this file's folder) or URL
password_file = "/etc/casbackup/repo.pass"   # at most one of: password_env, password_file,
# password_env = "CASBACKUP_PASSWORD"        #   password_command (split like a shell would,
# password_command = "pass show backup"      #   never run by one)
# s3_access_key_id = "backup-writer"         # s3: locations only, when AWS_ACCESS_KEY_ID /
# s3_secret_access_key_file = "/etc/casbackup/s3.secret"  # AWS_PROFILE are not set; or
# s3_secret_access_key_env = "S3_SECRET"     #   a variable's name (never the key inline)
# s3_region = "us-east-1"
# s3_addressing = "path"                     # or "virtual" (virtual-hosted buckets)

[verification]                               # every section below is optional
enabled = true
sandbox_directory = "/var/tmp/casbackup-sandbox"
auto_verify = true                           # default for each application

[disaster_recovery]
enabled = true
recovery_directory = "/srv/recovery"
auto_verify = true
restore_configs = true
generate_reports = true

[snapshots]                                  # file-system snapshot provider
enabled = false
provider = "lvm"                             # lvm | btrfs | zfs | auto
auto_cleanup = true                          # remove leftovers of crashed runs first
max_snapshots = 5                            # casbackup's snapshots per provider, at most
lvm_snapshot_size = "1G"                     # or "20%ORIGIN"

[plugins]
enabled = false
offline_mode = true

[[applications]]
name = "webshop"                             # letters, digits, . _ -; unique
description = "Shop front and its PostgreSQL database"
sources = ["/srv/webshop"]                   # at least one
excludes = ["*.log", "cache/"]               # patterns, not resolved
exclude_caches = true                        # leave out folders tagged with a CACHEDIR.TAG
exclude_if_present = [".nobackup"]           # leave out folders holding such a file
                                             #   (NAME or NAME:HEADER, its first bytes)
exclude_larger_than = "2G"                   # leave out files bigger than this
default_backup_type = "incremental"          # full | incremental | differential
schedule = "0 2 * * *"                       # cron: 5 fields, @daily and friends, "every 15 minutes"
snapshot = "auto"                            # read sources from a file-system snapshot:
                                             #   btrfs | zfs | lvm | auto | none
delta_files = "64M"                          # a changed file this big or bigger is stored as
                                             #   deltas of its previous version; "0": off
max_run_time = "6h"                          # casbackup serve stops this app's backup, verify
                                             #   or forget job after this long and reports it
                                             #   failed (d/h/m/s; 0: no limit; default: serve's
                                             #   --max-run-time, 24h)

[applications.repository]                    # optional: this app's snapshots go elsewhere
location = "/srv/backups/webshop-repo"       # (casbackup serve; same keys as [repository])

[applications.retention]                     # applied by `casbackup forget --all` or
keep_last = 3                                #   `casbackup serve --forget-schedule CRON`
keep_daily = 7
keep_weekly = 4
keep_monthly = 12
keep_yearly = 3
keep_within = "2d"                           # digits + y/m/w/d/h, e.g. "1y6m", "36h"
keep_within_daily = "30d"                    # one a day for 30 days back from the newest,
                                             # also _hourly, _weekly, _monthly, _yearly
keep_tags = ["release"]

[applications.verification]
required_files = ["config/settings.py"]      # must exist in the snapshot: relative to a source
                                             # folder or to the snapshot root ("srv/app/x"),
                                             # or absolute ("/srv/app/config/settings.py")
auto_verify = true

[[applications.notify]]                      # any number; a failing one never fails a backup
type = "webhook"                             # webhook | healthchecks | email | command | a plugin
url = "http://127.0.0.1:8080/hook"           # webhook, healthchecks (+ /start, /fail)
on = ["warning", "failure", "verify_failure", "overdue"]  # default: all but start (overdue: serve)
# email: host, port (587), starttls (true), cafile, sender, to = [...], username,
#        password_env or password_file;  command: command = "notify-send backup";
# timeout = 10 (seconds); options = {...} for a plugin's own settings

[[applications.databases]]
name = "main"                                # file name in the snapshot: .databases/main.pgdump
engine = "postgresql"                        # sqlite | postgresql | mysql (alias: mariadb)
host = "127.0.0.1"
port = 5432
user = "shop"
database = "shop"
password_env = "SHOP_DB_PASSWORD"            # or password_file; inline passwords are refused
options = { sslmode = "prefer" }             # engine-specific, see casbackup/engines; e.g.
                                             # postgresql: globals = false (roles not kept),
                                             # mysql: consistent_counts = false (no lock)
                                             # mysql: check_privileges = false (see mysql.py)
```

Relative paths (repository location, sources, sqlite paths, password files, sandbox, recovery
and plugin folders) resolve against the folder of the config file, so a config works the same
whatever the current directory. Passwords never appear in the config text: secrets are named
(environment variable, file, command), which keeps them out of the repository and of
`config check` output.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from casbackup.engines.base import DatabaseSpec
from casbackup.units import MAX_SIZE, parse_size

BACKUP_TYPES = ("full", "incremental", "differential")
SNAPSHOT_PROVIDERS = ("lvm", "btrfs", "zfs")
APP_SNAPSHOT_CHOICES = (*SNAPSHOT_PROVIDERS, "auto", "none")


@dataclass(frozen=True)
class RepositoryConfig:
    location: str | None = None
    password_env: str | None = None
    password_file: str | None = None
    password_command: str | None = None
    # S3 (store/s3.py): the AWS_* variables and AWS_PROFILE come first; the secret key
    # only by file or by a variable's name, as for passwords.
    s3_access_key_id: str | None = None
    s3_secret_access_key_file: str | None = None
    s3_secret_access_key_env: str | None = None
    s3_region: str | None = None
    s3_addressing: str | None = None  # "path" (default) or "virtual"

    def s3_settings(self) -> dict[str, str]:
        """The S3 keys that are set, as store/s3.py's ``settings`` (name -> value)."""
        keys = ("s3_access_key_id", "s3_secret_access_key_file", "s3_secret_access_key_env",
                "s3_region", "s3_addressing")  # fmt: skip
        return {k: v for k in keys if (v := getattr(self, k))}


@dataclass(frozen=True)
class RetentionConfig:
    """0 (or None for keep_within) means the rule is not used; all unset means keep all."""

    keep_last: int = 0
    keep_hourly: int = 0
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    keep_yearly: int = 0
    keep_within: str | None = None
    keep_tags: tuple[str, ...] = ()
    keep_within_hourly: str | None = None
    keep_within_daily: str | None = None
    keep_within_weekly: str | None = None
    keep_within_monthly: str | None = None
    keep_within_yearly: str | None = None

    @property
    def is_empty(self) -> bool:
        return self == RetentionConfig()


@dataclass(frozen=True)
class AppVerification:
    required_files: tuple[str, ...] = ()
    auto_verify: bool = False


NOTIFY_EVENTS = ("start", "success", "warning", "failure", "verify_failure", "overdue")
BUILTIN_NOTIFIERS = ("webhook", "healthchecks", "email", "command")


@dataclass(frozen=True)
class NotifierConfig:
    """One ``[[applications.notify]]`` table (casbackup/notify/). ``type`` names a plugin of
    the ``casbackup.notifiers`` group; ``on`` the events it gets (default: all but start,
    which only healthchecks wants by default). Secrets only by env or file."""

    type: str
    on: tuple[str, ...] = ("success", "warning", "failure", "verify_failure", "overdue")
    url: str = ""  # webhook, healthchecks
    timeout: int = 10  # seconds
    host: str = ""  # email: SMTP server
    port: int = 587
    starttls: bool = True
    cafile: str | None = None  # email: CA bundle for STARTTLS (default: the system's)
    sender: str = ""
    to: tuple[str, ...] = ()
    username: str = ""
    password_env: str | None = None
    password_file: str | None = None
    command: str = ""  # command: split like a shell would, never run by one
    options: dict[str, object] = field(default_factory=dict)  # third-party notifiers

    @property
    def label(self) -> str:
        where = self.url or self.host or self.command.split(" ")[0]
        return f"{self.type}({where})" if where else self.type


@dataclass(frozen=True)
class AppConfig:
    name: str
    sources: tuple[str, ...]
    description: str = ""
    excludes: tuple[str, ...] = ()
    # archiver/excludes.py: CACHEDIR.TAG-tagged folders, folders holding one of these files
    # (NAME or NAME:HEADER), files over this many bytes (0: no limit) are left out.
    exclude_caches: bool = False
    exclude_if_present: tuple[str, ...] = ()
    exclude_larger_than: int = 0
    databases: tuple[DatabaseSpec, ...] = ()
    default_backup_type: str = "incremental"
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    schedule: str | None = None
    verification: AppVerification = field(default_factory=AppVerification)
    notify: tuple[NotifierConfig, ...] = ()
    # Its own repository (``[applications.repository]``); None: the top-level one.
    repository: RepositoryConfig | None = None
    snapshot: str | None = None  # file-system snapshot: lvm | btrfs | zfs | auto | none
    # Bytes: a changed file at least this big is stored as deltas (archiver/delta_files.py).
    delta_files: int = 0
    # Seconds a job of this application may run in `casbackup serve` before it is stopped
    # (server/jobs.py); None: the service's --max-run-time; 0: no limit.
    max_run_time: int | None = None


# The smallest delta_files size (--delta-files): below a few chunks a delta saves little,
# and reading many smaller files on the backup's one delta thread would slow it down.
MIN_DELTA_FILE_SIZE = 1 << 20


IF_PRESENT_RULE = "give a file name, optionally NAME:HEADER (the file's first bytes)"


def if_present_ok(spec: str) -> bool:
    """Whether ``spec`` is an ``exclude_if_present`` / ``--exclude-if-present`` value: a file
    name (no ``/``, not ``.`` or ``..``, no NUL), optionally ``:HEADER``."""
    name = spec.partition(":")[0]
    return bool(name) and "/" not in name and name not in (".", "..") and "\0" not in spec


def exclude_size(value: int | str) -> int:
    """An ``exclude_larger_than`` setting or ``--exclude-larger-than`` value in bytes: a size
    as ``units.parse_size`` reads it ("2G") or a whole number of bytes; 0 is no limit.
    Raises ValueError (a one-line message) for anything else."""
    size = value if isinstance(value, int) else parse_size(value)
    if size > MAX_SIZE:
        raise ValueError(f"{value!r} is too large (at most 8E)")
    if size < 0:
        raise ValueError(f"{value!r} is not a size (e.g. 2G, or 0 for no limit)")
    return size


def delta_files_size(value: int | str) -> int:
    """A ``delta_files`` setting or ``--delta-files`` value in bytes: a size as
    ``units.parse_size`` reads it ("64M") or a whole number of bytes; 0 is off. Raises
    ValueError (a one-line message) for anything else and for sizes under 1 MiB."""
    size = value if isinstance(value, int) else parse_size(value)
    if size > MAX_SIZE:
        raise ValueError(f"{value!r} is too large (at most 8E)")
    if size < 0:
        raise ValueError(f"{value!r} is not a size (e.g. 64M, or 0 for off)")
    if 0 < size < MIN_DELTA_FILE_SIZE:
        raise ValueError(f"{value!r} is too small: give 1M or more, or 0 for off")
    return size


@dataclass(frozen=True)
class VerificationConfig:
    enabled: bool = True
    sandbox_directory: str | None = None
    auto_verify: bool = False
    cleanup_hours: int = 24


@dataclass(frozen=True)
class DisasterRecoveryConfig:
    enabled: bool = True
    recovery_directory: str | None = None
    auto_verify: bool = True
    restore_configs: bool = True
    generate_reports: bool = True


@dataclass(frozen=True)
class SnapshotsConfig:
    enabled: bool = False
    provider: str | None = None
    auto_cleanup: bool = True
    max_snapshots: int = 5
    lvm_snapshot_size: str = "1G"  # lvcreate --size, or --extents when it holds '%'


@dataclass(frozen=True)
class PluginsConfig:
    enabled: bool = False
    directory: str | None = None
    offline_mode: bool = True


@dataclass(frozen=True)
class Config:
    repository: RepositoryConfig = field(default_factory=RepositoryConfig)
    applications: tuple[AppConfig, ...] = ()
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    disaster_recovery: DisasterRecoveryConfig = field(default_factory=DisasterRecoveryConfig)
    snapshots: SnapshotsConfig = field(default_factory=SnapshotsConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    source: Path | None = None  # the file this was read from
    layout: str = "toml"  # "toml" or "legacy-json"
    warnings: tuple[str, ...] = ()  # things read but not used (legacy keys), for `config check`
    # IANA name: the calendar of schedules and retention (casbackup/timezones.py); None: the
    # machine's zone. `serve --timezone` overrides it.
    timezone: str | None = None

    def app(self, name: str) -> AppConfig | None:
        for app in self.applications:
            if app.name == name:
                return app
        return None

    def auto_verify(self, app_name: str) -> bool:
        """Verify each new snapshot of ``app_name`` right after its backup? (the application's
        ``verification.auto_verify``, or the top-level one when verification is enabled);
        the CLI's backup and the service's backup job both ask this."""
        app = self.app(app_name)
        if app is not None and app.verification.auto_verify:
            return True
        return bool(self.verification.enabled and self.verification.auto_verify)
