"""Fixtures for the web service: a repository with two applications' snapshots, a config, and
an app (cheap password hashing, no scheduler thread) with one user per role."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from casbackup.server.app import create_app
from casbackup.server.settings import Settings
from casbackup.testing.fixtures import PASSWORD, make_repo

PW = "password-123"


@dataclass
class Env:
    tmp: Path
    repo: str
    config: str
    settings: Settings
    client: TestClient
    tokens: dict[str, str] = field(default_factory=dict)

    def h(self, who: str) -> dict[str, str]:
        """Authorization header for one of: admin, operator, viewer, scoped (operator on 'shop')."""
        return {"Authorization": f"Bearer {self.tokens[who]}"}

    @property
    def service(self):  # type: ignore[no-untyped-def]
        return self.client.app.state.service  # type: ignore[attr-defined]


def write_tree(root: Path) -> None:
    (root / "sub").mkdir(parents=True, exist_ok=True)
    (root / "a.txt").write_text("hello\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(300_000))


def make_config(tmp: Path, repo: str, extra: str = "") -> str:
    shop, blog = tmp / "shop", tmp / "blog"
    write_tree(shop)
    write_tree(blog)
    cfg = tmp / "casbackup.toml"
    cfg.write_text(
        f"""
[repository]
location = "{repo}"
password_env = "CASBACKUP_TEST_REPO_PASSWORD"

[verification]
sandbox_directory = "{tmp / "sandbox"}"

[disaster_recovery]
recovery_directory = "{tmp / "recovery"}"

[[applications]]
name = "shop"
sources = ["{shop}"]

[applications.retention]
keep_last = 1

[[applications]]
name = "blog"
sources = ["{blog}"]
{extra}
"""
    )
    return str(cfg)


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    monkeypatch.setenv("CASBACKUP_TEST_REPO_PASSWORD", PASSWORD)
    monkeypatch.delenv("CASBACKUP_PASSWORD", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("TZ", "UTC")  # the service's zone (pages show times in it) is fixed
    repo_path = str(tmp_path / "repo")
    make_repo(repo_path).close()
    config = make_config(tmp_path, repo_path)
    settings = Settings(
        state_dir=tmp_path / "state", config_path=config, cheap_password_hashing=True,
        run_scheduler=False,
    )  # fmt: skip
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        e = Env(tmp_path, repo_path, config, settings, client)
        accounts = e.service.accounts
        for name, role, apps in (("admin", "admin", None), ("operator", "operator", None),
                                 ("viewer", "viewer", None), ("scoped", "operator", ["shop"])):  # fmt: skip
            accounts.add_user(name, PW, role, apps)
            e.tokens[name], _ = accounts.create_token(name, "test")
        yield e


def run_job(client: Any, headers: dict[str, str], path: str, body: dict[str, Any],
            timeout: float = 120) -> dict[str, Any]:  # fmt: skip
    """POST ``body`` to the job endpoint ``path`` and wait (at most ``timeout`` seconds) for
    the job it queued to finish; its document."""
    job_id = client.post(path, json=body, headers=headers).json()["job_id"]
    deadline = time.monotonic() + timeout
    while (doc := client.get(f"/api/jobs/{job_id}", headers=headers).json())["state"] in (
        "queued", "running",
    ):  # fmt: skip
        assert time.monotonic() < deadline, f"job {job_id} did not finish: {doc}"
        time.sleep(0.05)
    return doc  # type: ignore[no-any-return]
