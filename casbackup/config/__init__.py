"""The configuration file: applications, their sources and databases, and the repository.

`load_config` reads TOML (the layout documented in `model.py`) or the seed's legacy JSON
(`legacy.py`); `describe` renders the result with secrets masked.
"""

from casbackup.config.load import find_config_path, load_config
from casbackup.config.model import (
    AppConfig,
    AppVerification,
    Config,
    DisasterRecoveryConfig,
    PluginsConfig,
    RepositoryConfig,
    RetentionConfig,
    SnapshotsConfig,
    VerificationConfig,
)
from casbackup.config.render import describe

__all__ = [
    "AppConfig",
    "AppVerification",
    "Config",
    "DisasterRecoveryConfig",
    "PluginsConfig",
    "RepositoryConfig",
    "RetentionConfig",
    "SnapshotsConfig",
    "VerificationConfig",
    "describe",
    "find_config_path",
    "load_config",
]
