"""The configuration file as the CLI uses it: found once, loaded once, applied as defaults.

Where it is looked for: `--config`, then `CASBACKUP_CONFIG`, then `./casbackup.toml`, then the
user's config folder (`config.find_config_path`). The repository location and the password
source in it are defaults only: `-r`/`CASBACKUP_REPO` and the password options/variables given
on the command line or in the environment always win, so a one-off command never needs a
config edit.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from casbackup.cli.context import GlobalOptions
from casbackup.errors import ConfigError

if TYPE_CHECKING:
    from casbackup.config import AppConfig, Config

_loaded: dict[Path, Config] = {}  # one process runs one command: read each file once
WHERE_CONFIG = (
    "give --config FILE, set CASBACKUP_CONFIG, or create ./casbackup.toml or "
    "~/.config/casbackup/config.toml"
)


def load_cli_config(opts: GlobalOptions, *, required: bool = False, why: str = "") -> Config | None:
    """The config for this command, or None when there is none and it is optional."""
    # Imported here: a command given its repository and passphrase never reads the config,
    # and the config package cost every such command about 20 ms of start-up.
    from casbackup.config import find_config_path, load_config

    path = find_config_path(opts.config)
    if path is None:
        if required:
            raise ConfigError(
                f"no config file found{' (' + why + ')' if why else ''}: {WHERE_CONFIG}"
            )
        return None
    key = path.absolute()
    if key not in _loaded:
        _loaded[key] = load_config(key)
        from casbackup import plugins

        settings = _loaded[key].plugins
        plugins.configure(enabled=settings.enabled, offline_mode=settings.offline_mode)
    return _loaded[key]


def require_app(config: Config, name: str) -> AppConfig:
    app = config.app(name)
    if app is None:
        known = ", ".join(a.name for a in config.applications) or "none"
        raise ConfigError(
            f"no application {name!r} in the config (known: {known})", path=str(config.source)
        )
    return app


def apply_config_defaults(opts: GlobalOptions, app: str | None = None) -> None:
    """Fill the repository location and password source from the config when not given.

    The config is read only when something is missing, so `-r REPO` with a password in the
    environment never depends on (or fails because of) a config file. With ``app``, an
    application that names its own ``[applications.repository]`` uses that one.
    """
    need_repo = not opts.repo
    need_password = not (
        opts.password_file or opts.password_command or opts.password_env
        or os.environ.get("CASBACKUP_PASSWORD")
    )  # fmt: skip
    # An s3: location without the AWS variables may find its credentials in the config.
    need_s3 = (need_repo or (opts.repo or "").startswith("s3:")) and not (
        os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")
    )
    if not (need_repo or need_password or need_s3):
        return
    config = load_cli_config(opts)
    if config is None:
        return
    repo = config.repository
    app_config = config.app(app) if app else None
    own = app_config.repository if app_config is not None else None
    if need_repo and own is not None:
        opts.repo = own.location
        if own.password_file or own.password_command or own.password_env:
            repo = own
    if need_repo and repo.location and not opts.repo:
        opts.repo = repo.location
    if need_s3:
        # The S3 keys of the section the location came from (an application's own
        # repository when it has them, else the top [repository]).
        opts.s3_settings = (own.s3_settings() if own is not None else {}) or (
            config.repository.s3_settings()
        )
    if need_password:
        opts.password_file = repo.password_file
        opts.password_command = repo.password_command
        opts.password_env = repo.password_env


def require_repository(opts: GlobalOptions) -> None:
    """Raise UsageError when no repository location was given (after apply_config_defaults),
    saying which config file was read, or that none was found where one is looked for."""
    if opts.repo:
        return
    from casbackup.config import find_config_path
    from casbackup.errors import UsageError

    path = find_config_path(opts.config)
    if path is None:
        raise UsageError(
            "no repository given: use -r/--repo or CASBACKUP_REPO, or name it in a config "
            f"file's [repository] location (none found: {WHERE_CONFIG})"
        )
    raise UsageError(
        "no repository given: use -r/--repo or CASBACKUP_REPO, or set [repository] location "
        f"in {path}"
    )
