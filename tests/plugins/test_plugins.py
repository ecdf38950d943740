"""Plugins through entry points: a third-party package found, listed and used; a broken one
reported while the rest work; offline mode keeps network plugins off."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from casbackup import plugins
from casbackup.testing.fixtures import run_cli

ENTRY_POINTS = """\
[casbackup.backends]
cbfolder = cbplug.store:open_folder
cbbroken = cbplug.broken:Thing

[casbackup.engines]
echo = cbplug.engine:EchoEngine
brokeneng = cbplug.broken:Thing

[casbackup.notifiers]
cloud = cbplug.cloud:CloudNotifier
broken = cbplug.broken:Thing
local-file = cbplug.cloud:FileNotifier
"""


def make_plugin_package(root: Path) -> Path:
    """A tiny installed distribution: a package plus its dist-info, as pip lays them out."""
    pkg = root / "cbplug"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "engine.py").write_text(
        textwrap.dedent(
            """
            from casbackup.engines.sqlite import SqliteEngine

            class EchoEngine(SqliteEngine):
                name = "echo"
            """
        )
    )
    (pkg / "cloud.py").write_text(
        textwrap.dedent(
            """
            class CloudNotifier:
                uses_network = True

            class FileNotifier:
                uses_network = False
            """
        )
    )
    (pkg / "store.py").write_text(
        textwrap.dedent(
            """
            from casbackup.store.local import LocalBackend

            OPENED = []

            def open_folder(location, settings):
                # cbfolder:/some/path is a local folder under another scheme.
                OPENED.append(location)
                backend = LocalBackend(location.removeprefix("cbfolder:"))
                return backend
            """
        )
    )
    (pkg / "broken.py").write_text("import cbplug_missing_dependency\n")
    info = root / "thirdparty_cb-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-cb\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    (info / "RECORD").write_text("")
    return root


@pytest.fixture
def plugin_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = make_plugin_package(tmp_path / "site")
    monkeypatch.syspath_prepend(str(root))
    plugins.configure(enabled=True, offline_mode=True)
    yield root
    plugins.use_config_path(None)  # back to the lazily read policy
    for name in [m for m in sys.modules if m.startswith("cbplug")]:
        del sys.modules[name]


def _by_name(infos: list[plugins.PluginInfo]) -> dict[str, plugins.PluginInfo]:
    return {i.name: i for i in infos}


def test_third_party_discovered_listed_and_used(plugin_path: Path) -> None:
    infos = _by_name(plugins.discover(offline_mode=True))
    echo = infos["echo"]
    assert (echo.kind, echo.package, echo.version, echo.enabled) == (
        "engine",
        "thirdparty-cb",
        "1.2.3",
        True,
    )
    # Built-ins come through the same groups.
    assert infos["sqlite"].package == "casbackup" and infos["sqlite"].builtin
    assert infos["local"].kind == "backend"
    # Used: the engine registry (config validation, backup, restore) finds it by name.
    from casbackup.engines.base import engine_names, get_engine

    assert "echo" in engine_names()
    # Behind casbackup's error contract (engines/guard.py), as every plugin engine is.
    assert type(get_engine("echo").inner).__name__ == "EchoEngine"  # type: ignore[attr-defined]
    assert plugins.load("notifier", "local-file").__name__ == "FileNotifier"


def test_broken_plugin_is_reported_and_the_rest_work(plugin_path: Path) -> None:
    infos = _by_name(plugins.discover(offline_mode=False))
    broken = infos["broken"]
    assert not broken.enabled and "ModuleNotFoundError" in broken.reason
    assert "cbplug_missing_dependency" in broken.reason
    assert infos["echo"].enabled and infos["cloud"].enabled
    with pytest.raises(plugins.PluginError, match="broken.*failed to load"):
        plugins.load("notifier", "broken")
    # The engine registry says the same in one line (exit 27), and still finds the rest.
    from casbackup.engines.base import get_engine
    from casbackup.errors import DatabaseError

    with pytest.raises(DatabaseError, match="'brokeneng'.*failed to load: ModuleNotFoundError"):
        get_engine("brokeneng")
    assert type(get_engine("echo").inner).__name__ == "EchoEngine"  # type: ignore[attr-defined]


def test_offline_mode_keeps_network_plugins_off_said_once(
    plugin_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plugins._said_offline.clear()
    with caplog.at_level("WARNING", logger="casbackup.plugins"):
        infos = _by_name(plugins.discover(offline_mode=True))
        plugins.discover(offline_mode=True)
        with pytest.raises(plugins.PluginError, match="offline_mode"):
            plugins.load("notifier", "cloud", offline_mode=True)
    assert not infos["cloud"].enabled and "offline_mode" in infos["cloud"].reason
    said = [r for r in caplog.records if "'cloud'" in r.getMessage()]
    assert len(said) == 1
    assert plugins.load("notifier", "cloud", offline_mode=False).__name__ == "CloudNotifier"


def test_unknown_plugin_names_the_installed_ones() -> None:
    with pytest.raises(plugins.PluginError, match="installed: .*sqlite"):
        plugins.load("engine", "nosuch")


def test_cli_lists_plugins_with_config_offline_mode(tmp_path: Path) -> None:
    root = make_plugin_package(tmp_path / "site")
    env = {"PYTHONPATH": str(root)}
    on = tmp_path / "on.toml"
    on.write_text("[plugins]\nenabled = true\n")
    r = run_cli("--json", "--config", str(on), "plugins", "list", env=env)
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    listed = {p["name"]: p for p in doc["plugins"]}
    assert doc["offline_mode"] is True
    assert listed["echo"]["package"] == "thirdparty-cb" and listed["echo"]["enabled"]
    assert not listed["cloud"]["enabled"] and "offline_mode" in listed["cloud"]["reason"]
    assert not listed["broken"]["enabled"] and "failed to load" in listed["broken"]["reason"]
    assert listed["sqlite"]["builtin"] and listed["local"]["kind"] == "backend"
    assert listed["s3"]["builtin"] and listed["s3"]["enabled"]  # no network beyond the repo
    config = tmp_path / "casbackup.toml"
    config.write_text("[plugins]\nenabled = true\noffline_mode = false\n")
    r = run_cli("--config", str(config), "plugins", "list", "--kind", "notifier", env=env)
    assert r.code == 0, r.err
    lines = {line.split()[1]: line for line in r.out.splitlines()}
    assert lines["cloud"].endswith("enabled") and "1.2.3" in lines["cloud"]
    assert "disabled: failed to load" in lines["broken"]
    assert "echo" not in lines


def test_builtin_table_matches_pyproject() -> None:
    import tomllib

    declared = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    eps = declared["project"]["entry-points"]
    for kind, group in plugins.GROUPS.items():
        assert eps.get(group, {}) == plugins.BUILTIN[kind], kind


def test_plugins_enabled_false_uses_only_our_own(
    tmp_path: Path, plugin_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plugins.configure(enabled=False, offline_mode=False)
    with caplog.at_level("WARNING", logger="casbackup.plugins"):
        infos = _by_name(plugins.discover())
    assert not infos["echo"].enabled and "plugins.enabled is false" in infos["echo"].reason
    assert "cbplug.engine" not in sys.modules  # listed, never imported
    assert infos["sqlite"].enabled and infos["webhook"].enabled and infos["s3"].enabled
    assert not caplog.records  # the user's own choice: no warning
    from casbackup.engines.base import get_engine
    from casbackup.errors import DatabaseError

    with pytest.raises(DatabaseError, match="plugins.enabled is false"):
        get_engine("echo")
    assert type(get_engine("sqlite")).__name__ == "SqliteEngine"


def test_backend_plugin_by_scheme_is_used_by_the_cli(tmp_path: Path) -> None:
    """A third-party backend serves its scheme for every command; a broken one is listed
    with its error and the rest (local, s3, the fixture's) keep working; with
    plugins.enabled = false its scheme is refused in one line."""
    root = make_plugin_package(tmp_path / "site")
    on = tmp_path / "on.toml"
    on.write_text("[plugins]\nenabled = true\n")
    env = {"PYTHONPATH": str(root), "CASBACKUP_CONFIG": str(on)}
    folder = tmp_path / "plugged"
    repo = f"cbfolder:{folder}"
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("through a plugin\n")
    for args in (("init", "--insecure-test-kdf"), ("backup", str(src)), ("check", "--read-data")):
        res = run_cli(*args, repo=repo, env=env)
        assert res.code == 0, (args, res.err)
    assert (folder / "config").is_file()  # the plugin's store, not a folder named "cbfolder:..."
    listed = json.loads(run_cli("--json", "plugins", "list", "--kind", "backend", env=env).out)
    by_name = {p["name"]: p for p in listed["plugins"]}
    assert "failed to load" in by_name["cbbroken"]["reason"]
    assert by_name["cbfolder"]["enabled"] and by_name["cbfolder"]["package"] == "thirdparty-cb"
    off = tmp_path / "off.toml"
    off.write_text("[plugins]\nenabled = false\n")
    res = run_cli("snapshots", repo=repo, env={**env, "CASBACKUP_CONFIG": str(off)})
    assert res.code == 2 and "plugins.enabled is false" in res.err, res.err
    assert res.err.strip().count("\n") == 0
    local = run_cli("init", "--insecure-test-kdf", repo=str(tmp_path / "plain"), env=env)
    assert local.code == 0, local.err
