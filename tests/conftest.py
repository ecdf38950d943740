from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from casbackup.testing.fixtures import PASSWORD, make_repo

# The user's real cache, taken before any fixture moves HOME: tests/cli/test_hygiene.py proves
# that the suite creates nothing there.
REAL_HOME = os.path.expanduser("~")
REAL_CACHE = os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(REAL_HOME, ".cache"), "casbackup"
)
REAL_STATE = os.environ.get("CASBACKUP_STATE_DIR") or os.path.join(
    os.environ.get("XDG_STATE_HOME") or os.path.join(REAL_HOME, ".local", "state"), "casbackup"
)


@pytest.fixture(scope="session", autouse=True)
def _isolate_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A cache and home for the whole session, set before any module- or session-scoped
    fixture runs (those run before the per-test ``_isolate`` below and used to write the
    repository caches they made into the real ~/.cache/casbackup)."""
    home = tmp_path_factory.mktemp("session-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        mp.setenv("CASBACKUP_CACHE_DIR", str(home / "cache"))
        mp.setenv("XDG_CACHE_HOME", str(home / "xdg-cache"))
        mp.setenv("XDG_CONFIG_HOME", str(home / "config"))
        for var in ("CASBACKUP_STATE_DIR", "XDG_STATE_HOME"):  # local state: under the home
            mp.delenv(var, raising=False)
        yield


@pytest.fixture(autouse=True)
def _isolate(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own cache and home; no test sees the user's config or password."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("CASBACKUP_CACHE_DIR", str(home / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "xdg-cache"))
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


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove this run's temp folders with a remover that has no depth limit.

    Depth tests leave trees 1,000+ levels deep; pytest removes old runs' folders with
    Python 3.11's recursive ``shutil.rmtree``, which raises RecursionError on them at
    exit and leaves ``garbage-*`` folders behind in /tmp on every later run.
    """
    from casbackup.verify.sandbox import remove_tree

    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None)
    if basetemp is not None and not os.environ.get("CASBACKUP_KEEP_TEST_TMP"):
        try:
            remove_tree(str(basetemp))
        except OSError:
            pass  # a folder still in use: pytest's own cleanup tries again later


#: The page-image chunk size of ``small_page_chunks``: a multiple of SQLite's default 4 KiB page.
SMALL_PAGE_CHUNK = 64 * 1024


@pytest.fixture
def small_page_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite dumps cut every 64 KiB instead of every 1 MiB (in this process): the delta
    tests' databases of a few hundred kB then span several chunks, as a large one does."""
    from casbackup.archiver import backup

    monkeypatch.setattr(backup, "PAGE_IMAGE_CHUNK", SMALL_PAGE_CHUNK)
