"""The seed's JSON layout (config_phase3.json) read into the same Config as TOML."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from casbackup.config import describe, load_config
from casbackup.errors import ConfigError

SEED = Path(__file__).parent / "data" / "config_phase3.json"


def write(tmp_path: Path, data: Any, name: str = "config_phase3.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=2))
    return path


def test_seed_example(tmp_path: Path) -> None:
    path = tmp_path / "config_phase3.json"
    shutil.copy(SEED, path)
    cfg = load_config(path)
    assert cfg.layout == "legacy-json" and cfg.repository.location is None
    (app,) = cfg.applications
    assert app.name == "DemoApp" and app.description == "Demo application for backup testing"
    assert app.sources == (str(tmp_path / "demo_app"),)
    assert app.default_backup_type == "full" and app.verification.auto_verify is True
    (db,) = app.databases
    assert db.engine == "sqlite" and db.name == "database"
    assert db.path == str(tmp_path / "demo_app" / "database.sqlite3")
    assert cfg.verification.sandbox_directory == str(tmp_path / "sandbox_restore")
    assert cfg.verification.cleanup_hours == 24
    assert cfg.snapshots.provider == "lvm" and not cfg.snapshots.enabled
    assert cfg.disaster_recovery.recovery_directory == str(tmp_path / "disaster_recovery")
    assert cfg.plugins.directory == str(tmp_path / "plugins") and cfg.plugins.offline_mode
    assert cfg.warnings == ()
    assert describe(cfg)["layout"] == "legacy-json"


def test_databases_attach_to_applications(tmp_path: Path) -> None:
    data = {
        "applications": [
            {"name": "A", "source": "./a"},
            {"name": "B", "source": "./b"},
            {"name": "Nested", "source": "./b/inner"},
        ],
        "databases": [
            {"type": "sqlite", "path": "./b/inner/x.db"},
            {"type": "sqlite", "path": "./a/data.sqlite3"},
            {"type": "mysql", "host": "h", "username": "u", "name": "crm",
             "password_env": "CRM_PW", "application": "B"},
            {"type": "postgres", "db_name": "shared db"},
            {"type": "sqlite", "path": "./a/other/data.sqlite3"},
        ],
        "web": {"port": 8001},
    }  # fmt: skip
    cfg = load_config(write(tmp_path, data))
    dbs = {app.name: [(d.name, d.engine) for d in app.databases] for app in cfg.applications}
    assert dbs == {
        "A": [("data", "sqlite"), ("shared_db", "postgresql"), ("data-2", "sqlite")],
        "B": [("crm", "mysql"), ("shared_db", "postgresql")],
        "Nested": [("x", "sqlite"), ("shared_db", "postgresql")],
    }
    crm = cfg.applications[1].databases[0]
    assert (crm.user, crm.database, crm.password_env) == ("u", "crm", "CRM_PW")
    assert any("databases[3]: not tied to one application" in w for w in cfg.warnings)
    assert "web: ignored (not used by casbackup)" in cfg.warnings


@pytest.mark.parametrize(
    ("data", "key", "fragment"),
    [
        ({"databases": [{"type": "mysql", "name": "x", "password": "pw"}]},
         "databases[0].password", "inline passwords are not accepted"),
        ({"databases": [{"type": "oracle"}]}, "databases[0].type", "unknown engine 'oracle'"),
        ({"applications": [{"name": "A", "source": "/a"}],
          "databases": [{"type": "mysql", "name": "x", "application": "Z"}]},
         "databases[0].application", "no application named 'Z'"),
        ({"applications": [{"name": "A"}]}, "applications[0]", "missing required key 'source'"),
        ({"applications": {"name": "A"}}, "applications", "must be an array of objects"),
        ({"backup": {"default_backup_type": "nightly"}}, "backup.default_backup_type",
         "unknown backup type 'nightly'"),
        ({"snapshots": {"type": "tape"}}, "snapshots.type", "unknown provider 'tape'"),
        ({"verification": {"cleanup_hours": "24"}}, "verification.cleanup_hours",
         "must be an integer, not a string"),
    ],
)  # fmt: skip
def test_malformed_legacy(tmp_path: Path, data: Any, key: str, fragment: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert e.value.key == key and fragment in str(e.value)


def test_bad_json_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('{\n  "applications": [\n    {"name": "A",}\n  ]\n}\n')
    with pytest.raises(ConfigError, match=r"c.json: invalid JSON at line 3, column 18: "):
        load_config(path)


def test_every_legacy_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = {
        "verification": {"enabled": "yes"},
        "applications": [
            {"name": "bad/name", "source": "/srv/a"},
            {"name": "ok", "sources": []},
        ],
        "databases": [{"type": "oracle", "database": "x"}],
    }
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    message = str(info.value)
    assert "3 problems" in message, message
    assert "verification.enabled: must be true or false" in message
    assert "applications[0].name: 'bad/name' is not a valid application name" in message
    assert "applications[1].sources: must list at least one entry" in message
