"""The resolved configuration as plain data, for `casbackup config check` (text or --json).

Secrets never appear: the config holds only where secrets live, and even those references are
shown with care. A password command may carry a secret in its arguments (`echo hunter2`), so
only its program is shown; a repository URL's user:password part is masked. Whether each named
secret is actually there (variable set, file readable) is shown, because that is what a user
running `config check` wants to know before the nightly run fails.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from typing import Any

from casbackup.config.model import Config, RepositoryConfig
from casbackup.engines.base import DatabaseSpec

MASK = "***"
_USERINFO_RE = re.compile(r"(://)([^/@]+)@")
# Option names that could carry a secret if a plugin engine accepted one.
_SECRET_WORDS = ("pass", "secret", "token", "key")


def mask_url(location: str) -> str:
    return _USERINFO_RE.sub(lambda m: f"{m.group(1)}{MASK}@", location)


def _secret_source(env: str | None, file: str | None, command: str | None = None) -> Any:
    if env:
        return {"env": env, "present": env in os.environ}
    if file:
        return {"file": file, "present": os.access(file, os.R_OK)}
    if command:
        words = shlex.split(command)
        shown = words[0] + (f" {MASK}" if len(words) > 1 else "")
        return {"command": shown}
    return None


def _repository(repo: RepositoryConfig) -> dict[str, Any]:
    out = {
        "location": mask_url(repo.location) if repo.location else None,
        "password": _secret_source(repo.password_env, repo.password_file, repo.password_command),
    }
    if repo.s3_access_key_id:
        out["s3_credentials"] = {
            "access_key_id": repo.s3_access_key_id,
            "secret_access_key": _secret_source(
                repo.s3_secret_access_key_env, repo.s3_secret_access_key_file
            ),
        }
    for key in ("s3_region", "s3_addressing"):
        if getattr(repo, key):
            out[key] = getattr(repo, key)
    return out


def _database(spec: DatabaseSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"name": spec.name, "engine": spec.engine}
    for key in ("path", "host", "port", "user", "database"):
        value = getattr(spec, key)
        if value is not None:
            out[key] = value
    password = _secret_source(spec.password_env, spec.password_file)
    if password is not None:
        out["password"] = password
    if spec.options:
        out["options"] = {
            k: (MASK if any(w in k.lower() for w in _SECRET_WORDS) else v)
            for k, v in sorted(spec.options.items())
        }
    return out


def describe(config: Config) -> dict[str, Any]:
    """A JSON-ready view of `config` with every secret masked."""
    apps = []
    for app in config.applications:
        entry = dataclasses.asdict(app)
        entry["databases"] = [_database(db) for db in app.databases]
        for key in ("sources", "excludes"):
            entry[key] = list(entry[key])
        entry["retention"]["keep_tags"] = list(app.retention.keep_tags)
        entry["verification"]["required_files"] = list(app.verification.required_files)
        apps.append(entry)
    return {
        "source": str(config.source) if config.source else None,
        "layout": config.layout,
        "timezone": config.timezone,
        "repository": _repository(config.repository),
        "applications": apps,
        "verification": dataclasses.asdict(config.verification),
        "disaster_recovery": dataclasses.asdict(config.disaster_recovery),
        "snapshots": dataclasses.asdict(config.snapshots),
        "plugins": dataclasses.asdict(config.plugins),
        "warnings": list(config.warnings),
    }
