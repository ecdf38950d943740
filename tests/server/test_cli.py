"""`casbackup serve`, `user` and `token` on the command line (real subprocesses)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from casbackup.errors import LockError
from casbackup.server.app import create_app
from casbackup.testing.fixtures import run_cli
from tests.cli.conftest import assert_one_error
from tests.server.conftest import Env


def test_serve_refuses_an_empty_state_dir_and_says_how_to_add_an_admin(tmp_path: Path) -> None:
    res = run_cli("serve", "--state-dir", str(tmp_path / "st"))
    assert_one_error(res, 2, "no users", "casbackup user add NAME --role admin")


def test_serve_refuses_plain_http_on_a_public_address(tmp_path: Path) -> None:
    res = run_cli("serve", "--listen", "0.0.0.0:8001", "--state-dir", str(tmp_path))
    assert_one_error(res, 2, "not a loopback address", "--insecure-http")
    res = run_cli("serve", "--listen", "nonsense", "--state-dir", str(tmp_path))
    assert_one_error(res, 2, "HOST:PORT")
    res = run_cli("serve", "--tls-cert", "x.pem", "--state-dir", str(tmp_path))
    assert_one_error(res, 2, "both --tls-cert and --tls-key")


@pytest.mark.slow
def test_user_and_token_lifecycle(tmp_path: Path) -> None:
    st = str(tmp_path / "st")
    res = run_cli("user", "add", "alice", "--role", "operator", "--app", "shop", "--password-stdin",
                  "--state-dir", st, input=b"long-enough\n")  # fmt: skip
    assert res.code == 0, res.err
    res = run_cli("user", "add", "alice", "--role", "operator", "--password-stdin", "--state-dir", st,
                  input=b"long-enough\n")  # fmt: skip
    assert_one_error(res, 2, "already exists")
    res = run_cli(
        "user",
        "add",
        "bob",
        "--role",
        "admin",
        "--password-stdin",
        "--state-dir",
        st,
        input=b"short\n",
    )
    assert_one_error(res, 2, "at least 8")
    res = run_cli("--json", "user", "list", "--state-dir", st)
    assert json.loads(res.out) == [{"name": "alice", "role": "operator", "apps": ["shop"]}]
    res = run_cli(
        "--json", "token", "create", "--user", "alice", "--expires", "90d", "--state-dir", st
    )
    doc = json.loads(res.out)
    assert doc["token"].startswith("cbt_") and doc["expires_at"]
    res = run_cli("token", "list", "--state-dir", st)
    assert doc["id"] in res.out and doc["token"] not in res.out
    assert run_cli("token", "revoke", doc["id"], "--state-dir", st).code == 0
    assert "revoked" in run_cli("token", "list", "--state-dir", st).out
    res = run_cli("token", "create", "--user", "alice", "--expires", "soon", "--state-dir", st)
    assert_one_error(res, 2, "not a duration")
    res = run_cli("token", "revoke", "nope", "--state-dir", st)
    assert_one_error(res, 23, "no token")
    res = run_cli(
        "user", "passwd", "alice", "--password-stdin", "--state-dir", st, input=b"another-one\n"
    )
    assert res.code == 0, res.err
    assert run_cli("user", "remove", "alice", "--state-dir", st).code == 0
    assert_one_error(run_cli("user", "remove", "alice", "--state-dir", st), 23, "no user")


def test_serve_refuses_a_bad_timezone_and_subset(tmp_path: Path) -> None:
    st = str(tmp_path / "st")
    run_cli(
        "user",
        "add",
        "root",
        "--role",
        "admin",
        "--password-stdin",
        "--state-dir",
        st,
        input=b"long-enough\n",
    )
    res = run_cli("serve", "--state-dir", st, "--timezone", "Mars/Olympus")
    assert_one_error(res, 2, "not a known time zone")
    res = run_cli("serve", "--state-dir", st, "--check-subset", "lots")
    assert_one_error(res, 2)
    res = run_cli("serve", "--state-dir", st, "--trusted-user-header", "Remote-User")
    assert_one_error(res, 2, "--trusted-proxy")
    res = run_cli("serve", "--state-dir", st, "--trusted-proxy", "not-an-ip")
    assert_one_error(res, 2, "not an address")


@pytest.mark.slow
def test_cli_uses_an_applications_own_repository_like_the_service(tmp_path: Path) -> None:
    from tests.cli.conftest import init_repo

    main, own = init_repo(str(tmp_path / "main")), init_repo(str(tmp_path / "own"))
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f.txt").write_text("x")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[repository]\nlocation = "{main}"\n'
                   f'[[applications]]\nname = "blog"\nsources = ["{tmp_path / "src"}"]\n'
                   f'[applications.repository]\nlocation = "{own}"\n'
                   f'[[applications]]\nname = "shop"\nsources = ["{tmp_path / "src"}"]\n')  # fmt: skip
    assert run_cli("--config", str(cfg), "backup", "--app", "blog", "-q").code == 0
    assert run_cli("--config", str(cfg), "backup", "--app", "shop", "-q").code == 0
    in_own = json.loads(run_cli("--json", "-r", own, "snapshots").out)
    in_main = json.loads(run_cli("--json", "-r", main, "snapshots").out)
    assert [s["app"] for s in in_own] == ["blog"] and [s["app"] for s in in_main] == ["shop"]
    listed = json.loads(run_cli("--config", str(cfg), "--json", "snapshots", "--app", "blog").out)
    assert [s["app"] for s in listed] == ["blog"]
    res = run_cli("--config", str(cfg), "backup", "--all")
    assert_one_error(res, 2, "blog has its own repository", "--app NAME")


def test_a_second_serve_on_one_state_folder_is_refused_before_it_touches_anything(
    env: Env,
) -> None:
    """A service runs (env's app holds the folder); a second `serve` on the same state folder
    must not start: at start-up it would take the first one's running and queued jobs for
    interrupted, then run the queued ones and the schedules a second time."""
    service = env.service
    service.db.execute(
        "INSERT INTO jobs (kind, app, repo, state, params, created_at) "
        "VALUES ('backup', 'shop', 'default', 'running', '{}', 0)"
    )
    before = [tuple(r) for r in service.db.query("SELECT id, state, error FROM jobs")]
    res = run_cli("--config", env.config, "serve", "--listen", "127.0.0.1:1",
                  "--state-dir", str(env.settings.state_dir))  # fmt: skip
    assert_one_error(res, 11, "another casbackup serve", f"(pid {os.getpid()})")
    assert [tuple(r) for r in service.db.query("SELECT id, state, error FROM jobs")] == before
    with pytest.raises(LockError):  # an app in this process is refused the same way
        with TestClient(create_app(env.settings)):
            pass


def test_serve_on_an_address_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    st = str(tmp_path / "st")
    res = run_cli("user", "add", "root", "--role", "admin", "--password-stdin", "--state-dir", st,
                  input=b"root-password\n")  # fmt: skip
    assert res.code == 0, res.err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = run_cli("serve", "--listen", f"127.0.0.1:{port}", "--state-dir", st, "--no-scheduler")
    assert_one_error(res, 1, f"cannot listen on 127.0.0.1:{port}", "in use")
    assert "Application startup" not in res.err  # refused before anything started


def test_serve_without_a_config_or_a_repository_says_it_has_nothing_to_serve(
    tmp_path: Path,
) -> None:
    # A newcomer who forgot --config got a service that started fine, ran no schedule and
    # showed an empty dashboard ("No applications in the config") without a word of why.
    import subprocess
    import sys
    import time
    import urllib.request

    st = str(tmp_path / "st")
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    env_all = {k: v for k, v in os.environ.items() if not k.startswith("CASBACKUP_")} | env
    res = run_cli("user", "add", "root", "--role", "admin", "--password-stdin", "--state-dir", st,
                  input=b"root-password\n", env=env)  # fmt: skip
    assert res.code == 0, res.err
    token = run_cli("token", "create", "--user", "root", "--name", "t", "--state-dir", st, env=env)
    assert token.code == 0, token.err
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "casbackup.cli.main", "serve", "--listen", f"127.0.0.1:{port}",
         "--no-scheduler", "--state-dir", st],
        stderr=subprocess.PIPE, env=env_all, cwd=tmp_path,
    )  # fmt: skip
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/applications",
        headers={"Authorization": f"Bearer {token.out.strip()}"},
    )
    try:
        assert proc.stderr is not None
        first, second = proc.stderr.readline().decode(), proc.stderr.readline().decode()
        for _ in range(300):  # the API says so too, for the dashboard (up within seconds)
            try:
                with urllib.request.urlopen(request, timeout=5) as answer:
                    body = answer.read()
                break
            except OSError:
                time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert first.startswith("warning: no config file was found and no repository was given")
    assert "--config FILE" in first and second.startswith("casbackup serving on")
    (warning,) = json.loads(body)["warnings"]
    assert warning.startswith("no config file was found")


def test_serve_refuses_a_schedule_it_cannot_read(tmp_path: Path) -> None:
    # A typo in --check-schedule was a warning in the log after start-up, and the drill
    # never ran; 'every 2 minutes' (as a config's schedule reads) was refused the same way.
    st = str(tmp_path / "st")
    for option, value, fragment in (
        ("--check-schedule", "every 2 minuts", "is not a cron expression"),
        ("--verify-schedule", "61 * * * *", "Bad minute"),
        ("--forget-schedule", "@nightly", "is not a cron expression"),
    ):
        res = run_cli("serve", option, value, "--state-dir", st)
        assert_one_error(res, 2, f"{option} {value!r}", fragment)
    # Read as the config reads it: then only the missing admin stops this one.
    res = run_cli("serve", "--forget-schedule", "every 2 minutes", "--state-dir", st)
    assert_one_error(res, 2, "no users")
