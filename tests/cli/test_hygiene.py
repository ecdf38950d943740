"""The test suite keeps to itself: no repository cache in the user's real ~/.cache/casbackup
(module-scoped fixtures run before the per-test isolation and used to write there), and the
package metadata installs without setuptools' deprecation warning."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from casbackup.repo.indexcache import cache_root
from casbackup.repo.localstate import state_root
from tests.conftest import REAL_CACHE, REAL_HOME, REAL_STATE

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def module_cache_root() -> str:
    """Where a module-scoped fixture (test_crash's big_tree, test_mount's repository) caches."""
    return cache_root()


@pytest.fixture(scope="module")
def module_state_root() -> str:
    """Where a module-scoped fixture keeps the local state (snapshots this client has seen)."""
    return state_root()


def test_module_fixtures_do_not_use_the_real_cache(module_cache_root: str) -> None:
    real = os.path.realpath(REAL_CACHE)
    for where in (module_cache_root, cache_root()):
        assert not os.path.realpath(where).startswith(real), where
        assert not os.path.realpath(where).startswith(os.path.realpath(REAL_HOME) + os.sep), where


def test_module_fixtures_do_not_use_the_real_state_folder(module_state_root: str) -> None:
    real = os.path.realpath(REAL_STATE)
    for where in (module_state_root, state_root()):
        assert not os.path.realpath(where).startswith(real), where
        assert not os.path.realpath(where).startswith(os.path.realpath(REAL_HOME) + os.sep), where


def test_nothing_was_created_under_the_real_cache(module_cache_root: str) -> None:
    from tests.cli.conftest import init_repo

    before = sorted(os.listdir(REAL_CACHE)) if os.path.isdir(REAL_CACHE) else []
    init_repo(os.path.join(module_cache_root, "..", "hygiene-repo"))
    after = sorted(os.listdir(REAL_CACHE)) if os.path.isdir(REAL_CACHE) else []
    assert after == before


def test_license_is_an_spdx_string_with_a_setuptools_that_reads_it() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "Apache-2.0"  # not {text = ...}: deprecated
    requires = meta["build-system"]["requires"]
    version = next(r for r in requires if r.startswith("setuptools")).split(">=")[1]
    assert tuple(int(x) for x in version.split(".")) >= (77,)  # SPDX strings from 77.0


def test_readme_says_make_test_installs_system_packages() -> None:
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "apt-get install" in makefile and "fuse3" in makefile
    assert "installs system packages" in readme and "fuse3" in readme
