from __future__ import annotations

import os

import pytest

from casbackup.testing.fixtures import PASSWORD, make_repo


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own cache and home; no test sees the user's config or password."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CASBACKUP_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    for var in (
        "CASBACKUP_REPO",
        "CASBACKUP_PASSWORD_FILE",
        "CASBACKUP_PASSWORD_COMMAND",
        "CASBACKUP_CONFIG",
        "CASBACKUP_STATE_DIR",
        "XDG_STATE_HOME",
        "CASBACKUP_KDF_LIMIT",
        "CASBACKUP_KEY_TRIES",
        "CASBACKUP_KEY_FILE",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CASBACKUP_PASSWORD", PASSWORD)


@pytest.fixture
def repo_path(tmp_path):  # type: ignore[no-untyped-def]
    path = str(tmp_path / "repo")
    make_repo(path).close()
    return path


@pytest.fixture
def repo(repo_path):  # type: ignore[no-untyped-def]
    from casbackup.testing.fixtures import open_repo

    r = open_repo(repo_path)
    yield r
    r.close()


def pytest_report_header() -> str:
    return f"CI={os.environ.get('CI', '')}"
