"""Every command a user runs, on an S3 repository (SeaweedFS, the integration server):
an application from a config file whose [repository] gives the S3 credentials (no AWS_*
variables), backed up, verified, read through a real FUSE mount, recovered, and served by
the web service (a backup job, the snapshot listing, browsing and a download)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.store.conftest import make_bucket
from tests.store.test_s3_cli import assert_same, make_tree


@pytest.fixture
def s3_app(
    seaweed_endpoint: str, s3_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Path, Path, dict[str, str]]:
    """(config file, the application's source folder, env for run_cli)."""
    bucket = make_bucket(seaweed_endpoint)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    src = tmp_path / "notes"
    make_tree(src, 11, files=10)
    config = tmp_path / "casbackup.toml"
    config.write_text(
        f'[repository]\nlocation = "s3:{seaweed_endpoint}/{bucket}/apps"\n'
        'password_env = "REPO_PW"\ns3_access_key_id = "casbackup-test"\n'
        's3_secret_access_key_env = "S3_SECRET"\n\n'
        f'[verification]\nsandbox_directory = "{tmp_path / "sandbox"}"\n\n'
        f'[disaster_recovery]\nrecovery_directory = "{tmp_path / "recovery"}"\n\n'
        f'[[applications]]\nname = "notes"\nsources = ["{src}"]\n'
    )
    env = {"CASBACKUP_CONFIG": str(config), "REPO_PW": "s3 round trip",
           "S3_SECRET": "casbackup-test-secret", "CASBACKUP_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
    monkeypatch.setenv("REPO_PW", env["REPO_PW"])
    monkeypatch.setenv("S3_SECRET", env["S3_SECRET"])
    monkeypatch.delenv("CASBACKUP_PASSWORD", raising=False)
    return config, src, env


def cli(env: dict[str, str], *args: str) -> str:
    """The real command with the config's password source (run_cli would set
    CASBACKUP_PASSWORD, which comes first)."""
    full = {k: v for k, v in os.environ.items() if k != "CASBACKUP_PASSWORD"} | env
    proc = subprocess.run([sys.executable, "-m", "casbackup.cli.main", *args],
                          capture_output=True, env=full, timeout=300)  # fmt: skip
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, (args, err)
    assert "Traceback" not in err
    return proc.stdout.decode()


def test_verify_mount_recover_on_s3(
    s3_app: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    from tests.cli.test_mount import _fuse_missing, mounted

    config, src, env = s3_app
    cli(env, "init", "--insecure-test-kdf")
    snap = json.loads(cli(env, "--json", "backup", "--app", "notes").splitlines()[-1])
    assert snap["snapshot_id"]
    cli(env, "verify", "--app", "notes", "--latest")
    listed = json.loads(cli(env, "--json", "snapshots"))
    assert listed[0]["id"] == snap["snapshot_id"]
    target = tmp_path / "recovered"
    cli(env, "recover", "--app", "notes", "--target", str(target))
    assert_same(src, target / str(src).lstrip("/"))  # each source at its own path

    reason = _fuse_missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"FUSE is required under CI: {reason}")
        pytest.skip(f"FUSE is not available: {reason}")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    os.environ.update(env)  # the mount runs as a plain subprocess of this test
    try:
        location = config.read_text().split('location = "', 1)[1].split('"', 1)[0]
        with mounted(location, mnt) as _proc:
            inside = mnt / "notes" / "latest" / str(src).lstrip("/")
            deadline = time.monotonic() + 30
            while not inside.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert_same(src, inside)
    finally:
        for key in env:
            os.environ.pop(key, None)


def test_web_service_on_s3(s3_app: tuple[Path, Path, dict[str, str]], tmp_path: Path) -> None:
    """The service's backup job (a worker process given the config's S3 keys), then the
    snapshot listing, a folder listing and a file download, all from the S3 repository."""
    from fastapi.testclient import TestClient

    from casbackup.server.app import create_app
    from casbackup.server.settings import Settings

    config, src, env = s3_app
    cli(env, "init", "--insecure-test-kdf")
    settings = Settings(state_dir=tmp_path / "state", config_path=str(config),
                        cheap_password_hashing=True, run_scheduler=False)  # fmt: skip
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        accounts = client.app.state.service.accounts  # type: ignore[attr-defined]
        accounts.add_user("admin", "password-123", "admin", None)
        token, _ = accounts.create_token("admin", "test")
        h = {"Authorization": f"Bearer {token}"}
        r = client.post("/api/backup", json={"app_name": "notes", "backup_type": "full"}, headers=h)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + 240
        while (doc := client.get(f"/api/jobs/{job_id}", headers=h).json())["state"] in (
            "queued", "running"
        ):  # fmt: skip
            assert time.monotonic() < deadline, doc
            time.sleep(0.2)
        assert doc["state"] == "succeeded", doc
        snap = doc["snapshot_id"]
        listed = client.get("/api/snapshots", headers=h).json()
        assert [s["id"] for s in listed] == [snap]
        folder = str(src / "d1")
        tree = client.get(f"/api/snapshots/{snap}/tree", params={"path": folder}, headers=h)
        assert tree.status_code == 200, tree.text
        names = sorted(e["name"] for e in tree.json()["entries"])
        assert names == sorted(p.name for p in (src / "d1").iterdir())
        wanted = next(p for p in sorted((src / "d1").iterdir()) if p.stat().st_size > 0)
        got = client.get(f"/api/snapshots/{snap}/download", params={"path": str(wanted)},
                         headers=h)  # fmt: skip
        assert got.status_code == 200 and got.content == wanted.read_bytes()
