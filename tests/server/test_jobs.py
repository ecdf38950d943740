"""Jobs through the API: backups run in worker processes, one writer per repository."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tests.server.conftest import Env


def wait_job(env: Env, job_id: int, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        doc = env.client.get(f"/api/jobs/{job_id}", headers=env.h("admin")).json()
        if doc["state"] not in ("queued", "running"):
            return doc
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {doc}")


def test_backup_via_the_seed_endpoint(env: Env) -> None:
    r = env.client.post(
        "/api/backup", json={"app_name": "shop", "backup_type": "full"}, headers=env.h("operator")
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] in ("queued", "running") and body["job"]["kind"] == "backup"
    doc = wait_job(env, body["job_id"])
    assert doc["state"] == "succeeded", doc
    assert doc["snapshot_id"] and doc["result"]["summary"]["files_total"] == 2
    assert doc["progress"] is None or "files_done" in doc["progress"]
    apps = env.client.get("/api/applications", headers=env.h("viewer")).json()["applications"]
    shop = next(a for a in apps if a["name"] == "shop")
    assert shop["last_snapshot"]["id"] == doc["snapshot_id"] and shop["snapshots"] == 1


def test_seed_defaults_and_unknown_application(env: Env) -> None:
    r = env.client.post("/api/backup", json={}, headers=env.h("operator"))
    assert r.status_code == 404 and "default" in r.json()["detail"]  # the seed's default app name
    r = env.client.post("/api/backup", json={"app_name": "nope"}, headers=env.h("operator"))
    assert r.status_code == 404
    r = env.client.post(
        "/api/backup", json={"app_name": "shop", "backup_type": "weekly"}, headers=env.h("operator")
    )
    assert r.status_code == 422


def test_scoped_user_gets_404_for_other_apps_and_their_jobs(env: Env) -> None:
    r = env.client.post("/api/backup", json={"app_name": "blog"}, headers=env.h("scoped"))
    assert r.status_code == 404
    job = env.client.post(
        "/api/backup", json={"app_name": "blog"}, headers=env.h("operator")
    ).json()
    assert env.client.get(f"/api/jobs/{job['job_id']}", headers=env.h("scoped")).status_code == 404
    assert all(
        j["app"] == "shop" for j in env.client.get("/api/jobs", headers=env.h("scoped")).json()
    )
    wait_job(env, job["job_id"])


def test_writers_on_one_repository_run_one_after_the_other(env: Env) -> None:
    # (the second shop backup asks for another type: an identical one still waiting to run
    # would be that job, not a third)
    ids = [
        env.client.post("/api/backup", json=body, headers=env.h("operator")).json()["job_id"]
        for body in ({"app_name": "shop"}, {"app_name": "blog"},
                     {"app_name": "shop", "backup_type": "incremental"})
    ]  # fmt: skip
    states = [
        env.client.get(f"/api/jobs/{i}", headers=env.h("viewer")).json()["state"] for i in ids
    ]
    assert states.count("running") <= 1 and "queued" in states
    docs = [wait_job(env, i) for i in ids]
    assert all(d["state"] == "succeeded" for d in docs), docs
    spans = sorted((d["started_at"], d["finished_at"]) for d in docs)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end <= start  # never overlapping


def test_cancel_queued_job_and_permissions(env: Env) -> None:
    first = env.client.post(
        "/api/backup", json={"app_name": "shop"}, headers=env.h("admin")
    ).json()["job_id"]
    second = env.client.post(
        "/api/backup", json={"app_name": "blog"}, headers=env.h("admin")
    ).json()["job_id"]
    assert (
        env.client.post(f"/api/jobs/{second}/cancel", headers=env.h("operator")).status_code == 403
    )
    assert env.client.post(f"/api/jobs/{second}/cancel", headers=env.h("viewer")).status_code == 403
    r = env.client.post(f"/api/jobs/{second}/cancel", headers=env.h("admin"))
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert wait_job(env, first)["state"] == "succeeded"
    r = env.client.post(f"/api/jobs/{second}/cancel", headers=env.h("admin"))
    assert r.status_code == 400 and "already finished" in r.json()["detail"]
    assert env.client.get("/api/jobs/999999", headers=env.h("admin")).status_code == 404


def test_backups_in_two_repositories_overlap(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import os

    from fastapi.testclient import TestClient

    from casbackup.server.app import create_app
    from casbackup.server.settings import Settings
    from casbackup.testing.fixtures import PASSWORD, make_repo
    from tests.server.conftest import make_config

    monkeypatch.setenv("CASBACKUP_TEST_REPO_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_repo(str(tmp_path / "repo")).close()
    make_repo(str(tmp_path / "blog-repo")).close()
    config = make_config(tmp_path, str(tmp_path / "repo"),
                         extra=f'[applications.repository]\nlocation = "{tmp_path / "blog-repo"}"\n')  # fmt: skip
    for app in ("shop", "blog"):
        for i in range(3):
            (tmp_path / app / f"big{i}.bin").write_bytes(os.urandom(8 << 20))
    settings = Settings(state_dir=tmp_path / "st", config_path=config, cheap_password_hashing=True,
                        run_scheduler=False)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        service.accounts.add_user("op", "password-123", "operator")
        token, _ = service.accounts.create_token("op")
        h = {"Authorization": f"Bearer {token}"}
        ids = [
            client.post("/api/backup", json={"app_name": a}, headers=h).json()["job_id"]
            for a in ("shop", "blog")
        ]
        docs = []
        for job_id in ids:
            while (doc := client.get(f"/api/jobs/{job_id}", headers=h).json())["state"] in (
                "queued",
                "running",
            ):
                time.sleep(0.05)
            docs.append(doc)
        assert [d["state"] for d in docs] == ["succeeded", "succeeded"], docs
        assert [d["repository"] for d in docs] == ["default", "app:blog"]
        (a0, a1), (b0, b1) = ((d["started_at"], d["finished_at"]) for d in docs)
        assert a0 < b1 and b0 < a1  # the two ran at the same time
        snaps = client.get("/api/snapshots", headers=h).json()
        assert {(s["app"], s["repository"]) for s in snaps} == {
            ("shop", "default"),
            ("blog", "app:blog"),
        }


def test_webhook_with_an_app_scoped_token(env: Env) -> None:
    accounts = env.service.accounts
    accounts.add_user("ci", "password-123", "operator")
    token, _ = accounts.create_token("ci", "shop-hook", apps=["shop"])
    h = {"Authorization": f"Bearer {token}"}
    r = env.client.post("/api/hooks/backup/shop?backup_type=full", headers=h)
    assert r.status_code == 202, r.text
    doc = wait_job(env, r.json()["job_id"])
    assert (
        doc["state"] == "succeeded"
        and doc["trigger"] == "webhook"
        and doc["params"]["backup_type"] == "full"
    )
    assert env.client.post("/api/hooks/backup/blog", headers=h).status_code == 404
    assert env.client.post("/api/backup", json={"app_name": "blog"}, headers=h).status_code == 404
    viewer_token, _ = accounts.create_token("viewer", "no-hooks")
    r = env.client.post(
        "/api/hooks/backup/shop", headers={"Authorization": f"Bearer {viewer_token}"}
    )
    assert r.status_code == 403


def test_event_stream_shows_a_scoped_caller_only_its_applications(env: Env) -> None:
    import json

    blog = env.client.post("/api/backup", json={"app_name": "blog"}, headers=env.h("admin")).json()[
        "job_id"
    ]
    shop = env.client.post("/api/backup", json={"app_name": "shop"}, headers=env.h("admin")).json()[
        "job_id"
    ]
    wait_job(env, blog)
    wait_job(env, shop)
    seen: set[int] = set()
    with env.client.stream(
        "GET", "/api/events", headers={**env.h("scoped"), "Last-Event-ID": "0"}
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: "):
                seen.add(json.loads(line[6:])["id"])
                if shop in seen:
                    break
    assert shop in seen and blog not in seen


def test_config_reload_picks_up_a_new_application(env: Env) -> None:
    from pathlib import Path

    cfg = Path(env.config)
    cfg.write_text(
        cfg.read_text() + f'\n[[applications]]\nname = "wiki"\nsources = ["{env.tmp / "shop"}"]\n'
    )

    def names() -> list[str]:
        apps = env.client.get("/api/applications", headers=env.h("viewer")).json()["applications"]
        return [a["name"] for a in apps]

    assert "wiki" not in names()
    assert env.client.post("/api/config/reload", headers=env.h("operator")).status_code == 403
    assert env.client.post("/api/config/reload", headers=env.h("admin")).status_code == 204
    assert "wiki" in names()
    doc = wait_job(
        env,
        env.client.post("/api/backup", json={"app_name": "wiki"}, headers=env.h("admin")).json()[
            "job_id"
        ],
    )
    assert doc["state"] == "succeeded", doc
    cfg.write_text("this is not toml [")
    r = env.client.post("/api/config/reload", headers=env.h("admin"))
    assert r.status_code == 400 and "wiki" in names()  # a broken file changes nothing
    assert r.json()["detail"].startswith(f"{cfg}: invalid TOML")  # and says so
    assert r.json()["detail"].endswith("; the running configuration is kept")
    cfg.write_text("a = " + "[" * 5000 + "]" * 5000)  # a parser's RecursionError: a 500 before
    r = env.client.post("/api/config/reload", headers=env.h("admin"))
    assert r.status_code == 400 and "nested too deeply" in r.json()["detail"] and "wiki" in names()
    cfg.unlink()
    r = env.client.post("/api/config/reload", headers=env.h("admin"))
    assert r.status_code == 400 and "running configuration is kept" in r.json()["detail"]


def test_cancel_a_running_backup_keeps_the_repository_consistent(env: Env) -> None:
    import os

    from casbackup.testing.fixtures import run_cli

    for i in range(40):
        (env.tmp / "shop" / f"big{i}.bin").write_bytes(os.urandom(4 << 20))
    job = env.client.post(
        "/api/backup", json={"app_name": "shop"}, headers=env.h("operator")
    ).json()["job_id"]
    deadline = time.monotonic() + 60
    while not env.client.get(f"/api/jobs/{job}", headers=env.h("viewer")).json()["progress"]:
        assert time.monotonic() < deadline  # the worker is up and backing up
        time.sleep(0.02)
    assert env.client.post(f"/api/jobs/{job}/cancel", headers=env.h("viewer")).status_code == 403
    r = env.client.post(f"/api/jobs/{job}/cancel", headers=env.h("operator"))  # its own job
    assert r.status_code == 200
    doc = wait_job(env, job)
    assert doc["state"] == "cancelled" and doc["exit_code"] == 130 and doc["snapshot_id"] is None, (
        doc
    )
    log = env.client.get(f"/api/jobs/{job}/log", headers=env.h("viewer")).json()
    assert any("cancel requested" in line["message"] for line in log)
    res = run_cli(
        "check",
        "--read-data",
        repo=env.repo,
        env={"CASBACKUP_PASSWORD": os.environ["CASBACKUP_TEST_REPO_PASSWORD"]},
    )
    assert res.code == 0, res.err + res.out


def test_job_log_and_audit_name_the_application(env: Env) -> None:
    r = env.client.post(
        "/api/backup",
        json={"app_name": "blog", "backup_type": "incremental"},
        headers=env.h("operator"),
    )
    job = r.json()["job_id"]
    wait_job(env, job)
    doc = env.client.get(f"/api/jobs/{job}", headers=env.h("viewer")).json()
    log = env.client.get(f"/api/jobs/{job}/log", headers=env.h("viewer")).json()
    assert any("no parent snapshot" in line["message"] for line in log), log
    # The log tells the whole run, as the CLI prints it (it held only the note above).
    said = [line["message"] for line in log]
    assert said[0] == "backing up blog (incremental)", said
    assert said[-1] == f"snapshot {doc['snapshot_id'][:8]} of blog saved (full)", said
    assert any(m.startswith("Files: ") and " new, " in m for m in said), said
    assert any(m.startswith("Added to the repository: ") for m in said), said
    assert (
        env.client.get(
            f"/api/jobs/{job}/log?after_id={log[-1]['id']}", headers=env.h("viewer")
        ).json()
        == []
    )
    audit = env.client.get("/api/audit?app=blog", headers=env.h("admin")).json()
    assert [(a["action"], a["actor"].split(" ")[0], a["outcome"]) for a in audit] == [
        ("backup", "operator", "success")
    ]


def test_schedules_and_next_runs_in_the_api(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from casbackup.server.app import create_app
    from casbackup.server.settings import Settings
    from casbackup.testing.fixtures import PASSWORD, make_repo
    from tests.server.conftest import make_config

    monkeypatch.setenv("CASBACKUP_TEST_REPO_PASSWORD", PASSWORD)
    make_repo(str(tmp_path / "repo")).close()
    config = make_config(tmp_path, str(tmp_path / "repo"))
    text = open(config).read().replace('name = "shop"\n', 'name = "shop"\nschedule = "0 3 * * *"\n')
    open(config, "w").write(text)
    settings = Settings(state_dir=tmp_path / "st", config_path=config, cheap_password_hashing=True,
                        timezone="UTC")  # fmt: skip
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        service.accounts.add_user("v", "password-123", "viewer")
        token, _ = service.accounts.create_token("v")
        h = {"Authorization": f"Bearer {token}"}
        schedules = client.get("/api/schedules", headers=h).json()
        assert [(s["key"], s["schedule"]) for s in schedules] == [("backup:shop", "0 3 * * *")]
        assert schedules[0]["next_run"].endswith("03:00:00+00:00")
        apps = {
            a["name"]: a for a in client.get("/api/applications", headers=h).json()["applications"]
        }
        assert (
            apps["shop"]["next_run"] == schedules[0]["next_run"]
            and apps["blog"]["next_run"] is None
        )


def fake_worker_app(tmp_path, monkeypatch, script: str):  # type: ignore[no-untyped-def]
    """An app whose "interpreter" for workers is a script that ignores its arguments: it lets
    the tests speak the worker protocol badly or oddly on purpose."""
    import sys

    from fastapi.testclient import TestClient

    from casbackup.server.app import create_app
    from casbackup.server.settings import Settings
    from casbackup.testing.fixtures import PASSWORD, make_repo
    from tests.server.conftest import make_config

    monkeypatch.setenv("CASBACKUP_TEST_REPO_PASSWORD", PASSWORD)
    make_repo(str(tmp_path / "repo")).close()
    fake = tmp_path / "fake-python"
    fake.write_text(
        f"#!{sys.executable}\nimport sys, json\nspec = json.loads(sys.stdin.readline())\n{script}\n"
    )
    fake.chmod(0o755)
    settings = Settings(state_dir=tmp_path / "st", config_path=make_config(tmp_path, str(tmp_path / "repo")),
                        cheap_password_hashing=True, run_scheduler=False, job_python=str(fake))  # fmt: skip
    return TestClient(create_app(settings))


def _run_one(client) -> dict:  # type: ignore[no-untyped-def]
    service = client.app.state.service
    service.accounts.add_user("op", "password-123", "admin")
    token, _ = service.accounts.create_token("op")
    h = {"Authorization": f"Bearer {token}"}
    job = client.post("/api/backup", json={"app_name": "shop"}, headers=h).json()["job_id"]
    while (doc := client.get(f"/api/jobs/{job}", headers=h).json())["state"] in (
        "queued",
        "running",
    ):
        time.sleep(0.05)
    doc["log"] = client.get(f"/api/jobs/{job}/log", headers=h).json()
    return doc


def test_partial_backup_is_succeeded_with_exit_code_3(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    script = (
        'print("not json at all")\n'
        'print(json.dumps({"t": "warning", "message": "/srv/x: permission denied"}))\n'
        'print(json.dumps({"t": "result", "result": {"snapshot_id": "ab" * 32, "partial": True,'
        ' "warnings": ["/srv/x: permission denied"]}}))'
    )
    with fake_worker_app(tmp_path, monkeypatch, script) as client:
        doc = _run_one(client)
    assert (
        doc["state"] == "succeeded" and doc["exit_code"] == 3 and doc["snapshot_id"] == "ab" * 32
    ), doc
    assert "1 file or folder could not be read" in doc["error"]
    assert [(line["level"], line["message"]) for line in doc["log"]] == [
        ("warning", "/srv/x: permission denied")
    ]


def test_a_worker_that_dies_without_a_result_fails_the_job(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    script = 'sys.stderr.write("Segmentation fault\\n"); sys.exit(139)'
    with fake_worker_app(tmp_path, monkeypatch, script) as client:
        doc = _run_one(client)
    assert doc["state"] == "failed" and doc["exit_code"] == 139, doc
    assert "ended without a result: Segmentation fault" in doc["error"]


def test_a_worker_killed_by_the_kernel_says_so(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # An OOM-killed worker's job read "the job's process ended without a result: exit
    # status -9" (a real serve, its worker killed with SIGKILL during a backup).
    script = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    with fake_worker_app(tmp_path, monkeypatch, script) as client:
        doc = _run_one(client)
    assert doc["state"] == "failed", doc
    assert "killed by SIGKILL (out of memory?" in doc["error"], doc


def test_the_password_reaches_the_worker_only_through_its_stdin(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from casbackup.testing.fixtures import PASSWORD

    script = (
        "import os\n"
        'ok = base64.b64decode(spec["password_b64"]).decode() == os.environ["EXPECTED"]\n'
        'leak = any(os.environ["EXPECTED"] in a for a in sys.argv)\n'
        'print(json.dumps({"t": "result", "result": {"ok": ok, "leak": leak, "spec_keys": sorted(spec)}}))'
    ).replace("import os", "import os, base64")
    monkeypatch.setenv("EXPECTED", PASSWORD)
    with fake_worker_app(tmp_path, monkeypatch, script) as client:
        doc = _run_one(client)
        row = client.app.state.service.db.one(
            "SELECT params, result FROM jobs WHERE id=?", (doc["id"],)
        )
    assert doc["result"]["ok"] is True and doc["result"]["leak"] is False, doc
    assert PASSWORD not in row[0] and PASSWORD not in row[1]


def test_the_seeds_json_config_and_bodyless_backup(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A seed operator's setup as it is: config_phase3.json (no repository in it: -r /
    CASBACKUP_REPO gives one) and a client that POSTs /api/backup with no body."""
    import shutil
    import sqlite3
    from pathlib import Path

    from fastapi.testclient import TestClient

    from casbackup.server.app import create_app
    from casbackup.server.settings import Settings
    from casbackup.testing.fixtures import PASSWORD, make_repo

    monkeypatch.setenv("CASBACKUP_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_repo(str(tmp_path / "repo")).close()
    seed = Path(__file__).parents[1] / "config" / "data" / "config_phase3.json"
    shutil.copy(seed, tmp_path / "config_phase3.json")
    (tmp_path / "demo_app").mkdir()
    (tmp_path / "demo_app" / "app.py").write_text("print('demo')\n")
    db = sqlite3.connect(tmp_path / "demo_app" / "database.sqlite3")
    db.execute("CREATE TABLE t (x)")
    db.execute("INSERT INTO t VALUES (1)")
    db.commit()
    db.close()
    settings = Settings(state_dir=tmp_path / "st", config_path=str(tmp_path / "config_phase3.json"),
                        repo=str(tmp_path / "repo"), cheap_password_hashing=True,
                        run_scheduler=False)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        service.accounts.add_user("op", "password-123", "operator")
        token, _ = service.accounts.create_token("op")
        h = {"Authorization": f"Bearer {token}"}
        apps = client.get("/api/applications", headers=h).json()["applications"]
        assert [(a["name"], a["databases"]) for a in apps] == [("DemoApp", ["database"])]
        r = client.post("/api/backup", headers=h)  # the seed's clients send no body
        assert r.status_code == 202, r.text
        job = r.json()["job"]
        assert job["app"] == "DemoApp" and job["params"]["backup_type"] == "full"
        while (doc := client.get(f"/api/jobs/{job['id']}", headers=h).json())["state"] in (
            "queued",
            "running",
        ):
            time.sleep(0.05)
        assert doc["state"] == "succeeded", doc
        detail = client.get(f"/api/snapshots/{doc['snapshot_id']}", headers=h).json()
        assert detail["app"] == "DemoApp" and detail["databases"][0]["name"] == "database"
        status = client.get("/api/system/status", headers=h).json()
        assert status["repositories"][0]["location"] == str(tmp_path / "repo")


def test_stopping_the_service_cancels_a_job_whose_worker_is_still_starting(
    tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The service stops (SIGTERM) while a job's worker is still importing: the worker dies of
    the SIGINT it is sent before it can answer. That is the cancel the service asked for, not a
    failure: recorded cancelled, with the CLI's interruption code (test_e2e's SIGTERM test
    failed under load on exactly this, when the signal came within the worker's start-up)."""
    from casbackup.server.statedb import StateDB

    started = tmp_path / "started"
    script = f"open({str(started)!r}, 'w').close()\nimport time\ntime.sleep(60)"
    with fake_worker_app(tmp_path, monkeypatch, script) as client:
        service = client.app.state.service
        service.accounts.add_user("op", "password-123", "admin")
        token, _ = service.accounts.create_token("op")
        h = {"Authorization": f"Bearer {token}"}
        job = client.post("/api/backup", json={"app_name": "shop"}, headers=h).json()["job_id"]
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.02)
    # Leaving the client ran the service's shutdown: SIGINT to the worker, which dies at once.
    db = StateDB(tmp_path / "st")
    try:
        row = db.one("SELECT state, exit_code, error FROM jobs WHERE id=?", (job,))
    finally:
        db.close()
    assert row is not None and (row[0], row[1]) == ("cancelled", 130), tuple(row or ())
    # The service's stop, not a user, cancelled it: the scheduler reruns such a backup.
    assert row[2].startswith("the service stopped during this job"), row[2]


def test_auto_verify_in_the_config_verifies_the_services_backups_too(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The seed's config has auto_verify: a backup through the API is verified at once, as with
    `casbackup backup`, so that recover (verified snapshots only, by default) can use it."""
    from fastapi.testclient import TestClient

    from casbackup.server.app import create_app
    from casbackup.server.settings import Settings
    from casbackup.testing.fixtures import PASSWORD, make_repo
    from tests.server.conftest import make_config, run_job

    monkeypatch.setenv("CASBACKUP_TEST_REPO_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_repo(str(tmp_path / "repo")).close()
    config = make_config(tmp_path, str(tmp_path / "repo"),
                         extra="\n[applications.verification]\nauto_verify = true\n")  # fmt: skip
    settings = Settings(state_dir=tmp_path / "st", config_path=config, cheap_password_hashing=True,
                        run_scheduler=False)  # fmt: skip
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        service.accounts.add_user("root", "password-123", "admin")
        h = {"Authorization": f"Bearer {service.accounts.create_token('root')[0]}"}

        def run(path: str, body: dict[str, Any]) -> dict[str, Any]:
            return run_job(client, h, path, body)

        blog = run("/api/backup", {"app_name": "blog"})  # auto_verify = true
        assert blog["state"] == "succeeded" and blog["result"]["verification"]["ok"], blog
        shop = run("/api/backup", {"app_name": "shop"})  # not asked
        assert shop["state"] == "succeeded" and "verification" not in shop["result"], shop
        detail = client.get(f"/api/snapshots/{blog['snapshot_id']}", headers=h).json()
        assert detail["verification"] is not None
        plan = run("/api/disaster-recovery", {"app_name": "blog"})  # no allow_unverified
        assert plan["state"] == "succeeded", plan
        assert plan["result"]["plan"]["snapshot"] == blog["snapshot_id"]


def test_a_finished_job_shows_its_last_progress(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Progress reaches the database at most once a second; the last report of a job that
    ends within that second was dropped, and a finished backup showed "1/5256 files" for
    good (seen in the dashboard). The last report is written with the job's end."""
    script = (
        "import time\n"
        "for done in (1, 2, 3):\n"
        '    print(json.dumps({"t": "progress", "phase": "backup", "files_done": done,'
        ' "files_total": 3, "bytes_done": done, "bytes_total": 3, "current": "", "errors": 0}),'
        " flush=True)\n"
        "    time.sleep(0.05)\n"
        'print(json.dumps({"t": "result", "result": {"snapshot_id": "ab" * 32}}))'
    )
    with fake_worker_app(tmp_path, monkeypatch, script) as client:
        doc = _run_one(client)
    assert doc["state"] == "succeeded", doc
    assert doc["progress"]["files_done"] == 3 and doc["progress"]["bytes_done"] == 3, doc


def _notified_app(tmp_path, monkeypatch, repo: str):  # type: ignore[no-untyped-def]
    """An app whose 'shop' tells a command notifier about failures (the events land, one JSON
    document a line, in tmp_path/events), as the config's own example subscribes."""
    from fastapi.testclient import TestClient

    from casbackup.server.app import create_app
    from casbackup.server.settings import Settings
    from casbackup.testing.fixtures import PASSWORD
    from tests.server.conftest import make_config

    monkeypatch.setenv("CASBACKUP_TEST_REPO_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    events = tmp_path / "events"
    events.mkdir()
    config = make_config(tmp_path, repo)
    text = (
        open(config)
        .read()
        .replace(
            "[applications.retention]",
            # one file per event: notifications of two jobs may be sent at the same time
            f'[[applications.notify]]\ntype = "command"\ncommand = "sh -c \'cat > '
            f'$(mktemp -p {events})\'"\non = ["warning", "failure", "verify_failure"]\n\n'
            "[applications.retention]",
        )
    )
    open(config, "w").write(text)
    settings = Settings(state_dir=tmp_path / "st", config_path=config, cheap_password_hashing=True,
                        run_scheduler=False)  # fmt: skip
    return settings, lambda: TestClient(create_app(settings)), events


def _events(client, path) -> list[dict]:  # type: ignore[no-untyped-def]
    import json

    for t in getattr(client.app.state.service.jobs, "notify_threads", ()):
        t.join(30)
    got = [json.loads(f.read_text()) for f in path.iterdir()]
    return sorted(got, key=lambda e: e["time"])


def test_a_backup_that_cannot_open_its_repository_notifies_a_failure(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The nightly backup's disk is not mounted: the job fails before the backup begins, where
    # the worker's notifications did not reach; nobody was told (a real serve: the command
    # notifier's file stayed empty while every scheduled run failed).
    settings, app, events = _notified_app(tmp_path, monkeypatch, str(tmp_path / "unmounted"))
    with app() as client:
        doc = _run_one(client)
        assert doc["state"] == "failed" and "no repository" in doc["error"], doc
        got = _events(client, events)
    assert [(e["event"], e["app"]) for e in got] == [("failure", "shop")]
    assert "no repository" in got[0]["message"]


def test_a_failure_the_worker_reported_is_notified_once(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import shutil

    from casbackup.testing.fixtures import make_repo

    make_repo(str(tmp_path / "repo")).close()
    settings, app, events = _notified_app(tmp_path, monkeypatch, str(tmp_path / "repo"))
    shutil.rmtree(tmp_path / "shop")  # the application's only source is gone: no snapshot
    with app() as client:
        doc = _run_one(client)
        assert doc["state"] == "failed", doc
        got = _events(client, events)
    assert [(e["event"], e["app"]) for e in got] == [("failure", "shop")]


def test_a_backup_lost_to_a_crashed_service_is_notified_at_start_up(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json

    from casbackup.server.statedb import StateDB
    from casbackup.testing.fixtures import make_repo

    make_repo(str(tmp_path / "repo")).close()
    settings, app, events = _notified_app(tmp_path, monkeypatch, str(tmp_path / "repo"))
    db = StateDB(settings.state_dir)  # what a service killed during the nightly run leaves
    for state in ("running", "queued"):
        db.execute(
            "INSERT INTO jobs (kind, app, repo, params, state, created_by, created_at, trigger)"
            " VALUES ('backup', 'shop', 'default', ?, ?, 'scheduler', 1, 'scheduler')",
            (json.dumps({}), state),
        )
    db.close()
    with app() as client:
        got = _events(client, events)
        states = [j["state"] for j in client.app.state.service.jobs.list()]
    assert states == ["interrupted", "interrupted"]
    assert [(e["event"], e["app"]) for e in got] == [("failure", "shop")] * 2
    assert "the service stopped before this backup finished" in got[0]["message"]


def test_a_job_end_the_state_database_could_not_record_blocks_nothing(
    tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    # The state folder's disk is full (the repository on the same disk filled it): recording
    # a job's end failed inside the job's thread, which died before it freed its repository.
    # Every later job of that repository stayed queued and every scheduled backup of the
    # application was skipped as 'still running', until the service was restarted.
    import sqlite3

    script = 'print(json.dumps({"t": "result", "result": {"snapshot_id": None}}))'
    with fake_worker_app(tmp_path, monkeypatch, script) as client:
        service = client.app.state.service
        real = service.db.execute
        failures = []

        def full_disk(sql, params=()):  # type: ignore[no-untyped-def]
            if sql.startswith("UPDATE jobs SET state=?, finished_at=?") and not failures:
                failures.append(sql)
                raise sqlite3.OperationalError("database or disk is full")
            return real(sql, params)

        monkeypatch.setattr(service.db, "execute", full_disk)
        first = service.jobs.submit("backup", app="shop", params={}, created_by="t")["id"]
        deadline = time.monotonic() + 60
        while not failures:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        settle = time.monotonic() + 5
        while first in service.jobs._running and time.monotonic() < settle:
            time.sleep(0.05)
        assert service.jobs.active_for("backup", "shop") is None  # the scheduler may fire
        second = service.jobs.submit("backup", app="shop", params={}, created_by="t")["id"]
        while service.jobs.get(second)["state"] in ("queued", "running"):
            assert time.monotonic() < deadline, service.jobs.get(second)
            time.sleep(0.05)
        # Once the database writes again, the first job's end is recorded too.
        assert service.jobs.get(first)["state"] == "succeeded"
        assert service.jobs.get(second)["state"] == "succeeded"


def test_a_failed_restore_drill_is_notified(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # --verify-schedule / --check-schedule exist to find out before the day of a restore;
    # a drill that failed (a snapshot that no longer restores, packs damaged on disk) showed
    # only as a failed job on the dashboard: the notifiers heard nothing.
    import os

    from casbackup.testing.fixtures import make_repo

    repo = str(tmp_path / "repo")
    make_repo(repo).close()
    settings, app, events = _notified_app(tmp_path, monkeypatch, repo)
    with app() as client:
        jobs = client.app.state.service.jobs
        backup = jobs.submit("backup", app="shop", params={}, created_by="t")["id"]
        while jobs.get(backup)["state"] in ("queued", "running"):
            time.sleep(0.05)
        assert jobs.get(backup)["state"] == "succeeded"
        for folder, _dirs, files in os.walk(os.path.join(repo, "data")):
            for name in files:  # every pack damaged
                with open(os.path.join(folder, name), "r+b") as f:
                    f.seek(100)
                    f.write(b"\0" * 64)
        ids = [
            jobs.submit("verify", app="shop", params={"snapshot": "latest"}, created_by="scheduler",
                        trigger="scheduler")["id"],
            jobs.submit("check", app=None, params={"read_data": True}, created_by="scheduler",
                        trigger="scheduler", repo_key="default")["id"],
        ]  # fmt: skip
        for job in ids:
            while jobs.get(job)["state"] in ("queued", "running"):
                time.sleep(0.05)
        assert [jobs.get(j)["state"] for j in ids] == ["failed", "failed"]
        got = _events(client, events)
    assert [(e["event"], e["app"]) for e in got] == [("verify_failure", "shop")] * 2, got
    # the check reads while the verification runs: either may end first
    assert sorted(e["message"].split(" failed: ")[0] for e in got) == [
        "the check of repository default",
        "the verification of shop",
    ]


def test_an_exclusive_job_waits_for_the_readers_of_its_repository(env: Env) -> None:
    """Found on a real `serve`: 'Repair packs' clicked while a check still ran failed at once
    ('repository is locked: shared lock ... (serve: check)'); prune and forget the same way,
    and a check started during a prune failed too. Readers (check, restore, recover) run
    side by side, but a job that takes the exclusive lock now waits until they are done,
    and readers queued after it wait for it."""
    import signal

    first = env.client.post("/api/backup", json={"app_name": "shop"}, headers=env.h("admin"))
    assert wait_job(env, first.json()["job_id"])["state"] == "succeeded"
    check = env.client.post("/api/check", json={"read_data": True}, headers=env.h("admin"))
    check_id = check.json()["job_id"]
    jobs = env.service.jobs
    locks = Path(env.repo) / "locks"
    deadline = time.monotonic() + 60
    while not any(locks.iterdir()):  # the check's worker holds its shared lock
        assert time.monotonic() < deadline, "the check never took its lock"
        time.sleep(0.02)
    proc = jobs._running[check_id].proc
    os.killpg(proc.pid, signal.SIGSTOP)  # the check stays running, lock held
    try:
        prune = env.client.post("/api/prune", json={"dry_run": False}, headers=env.h("admin"))
        prune_id = prune.json()["job_id"]
        later = env.client.post("/api/check", json={}, headers=env.h("admin")).json()["job_id"]
        time.sleep(1.0)
        states = {i: env.client.get(f"/api/jobs/{i}", headers=env.h("admin")).json()["state"]
                  for i in (prune_id, later)}  # fmt: skip
        assert states == {prune_id: "queued", later: "queued"}, states
    finally:
        os.killpg(proc.pid, signal.SIGCONT)
    docs = [wait_job(env, i) for i in (check_id, prune_id, later)]
    assert [d["state"] for d in docs] == ["succeeded"] * 3, docs
    assert docs[0]["finished_at"] <= docs[1]["started_at"]  # prune after the check
    assert docs[1]["finished_at"] <= docs[2]["started_at"]  # the later check after prune


def test_the_uptime_does_not_follow_the_wall_clock_back(env: Env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # NTP stepping the clock back an hour made /api/system/status's uptime negative: to a
    # monitor that watches it, the service had just restarted (or never started).
    service = env.service
    monkeypatch.setattr(service, "clock", lambda: service.started_at - 3600)
    status = env.client.get("/api/system/status", headers=env.h("viewer")).json()
    assert 0 <= status["uptime_s"] < 3600, status


def test_a_backup_already_waiting_to_run_is_not_queued_twice(env: Env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Two admins clicking "Back up now" at once queued two identical backups (helper-60)."""
    jobs = env.service.jobs
    dispatch = jobs._dispatch
    monkeypatch.setattr(jobs, "_dispatch", lambda: None)  # nothing starts: both stay queued
    first = env.client.post("/api/backup", json={"app_name": "shop"}, headers=env.h("admin"))
    again = env.client.post("/api/backup", json={"app_name": "shop"}, headers=env.h("operator"))
    assert first.status_code == again.status_code == 202
    assert again.json()["job_id"] == first.json()["job_id"]
    assert "already waiting to run" in again.json()["message"]
    other = env.client.post("/api/backup", json={"app_name": "shop", "backup_type": "differential"},
                            headers=env.h("admin"))  # fmt: skip
    assert other.json()["job_id"] != first.json()["job_id"]  # another request is another job
    monkeypatch.setattr(jobs, "_dispatch", dispatch)
    jobs._dispatch()
    done = wait_job(env, first.json()["job_id"])
    assert done["state"] == "succeeded", (done["error"], done["exit_code"])


def test_a_verify_or_check_already_waiting_is_not_queued_again(env: Env, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A newcomer's script (or impatient clicks) queued 343 identical verifications of one
    snapshot: each restored it into the sandbox again, for hours, ahead of later jobs."""
    snap = env.client.post("/api/backup", json={"app_name": "shop"}, headers=env.h("operator"))
    snap_id = wait_job(env, snap.json()["job_id"])["snapshot_id"]
    monkeypatch.setattr(env.service.jobs, "_dispatch", lambda: None)  # nothing starts
    h = env.h("operator")
    ids = [env.client.post(f"/api/snapshots/{snap_id}/verify", headers=h).json() for _ in range(3)]
    assert len({r["job_id"] for r in ids}) == 1 and "already waiting" in ids[2]["message"], ids
    checks = [env.client.post("/api/check", json={}, headers=h).json() for _ in range(2)]
    assert checks[0]["job_id"] == checks[1]["job_id"], checks
    full = env.client.post("/api/check", json={"read_data": True}, headers=h).json()
    assert full["job_id"] != checks[0]["job_id"]  # another request is another job


def test_a_full_state_disk_does_not_fail_a_running_job(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The state folder's disk filled during a backup: writing its progress failed inside the
    # job's thread, which failed the backup (its worker, cut off, left a stale lock). The
    # progress and log lines are the service's own bookkeeping: the job goes on without them.
    import sqlite3

    script = (
        'print(json.dumps({"t": "progress", "phase": "backup", "files_done": 1}), flush=True)\n'
        'print(json.dumps({"t": "info", "message": "halfway"}), flush=True)\n'
        'print(json.dumps({"t": "result", "result": {"snapshot_id": None}}))'
    )
    with fake_worker_app(tmp_path, monkeypatch, script) as client:
        service = client.app.state.service
        real = service.db.execute
        refused = []

        def full_disk(sql, params=()):  # type: ignore[no-untyped-def]
            if sql.startswith(("UPDATE jobs SET progress=?", "INSERT INTO job_log")):
                refused.append(sql)
                raise sqlite3.OperationalError("database or disk is full")
            return real(sql, params)

        monkeypatch.setattr(service.db, "execute", full_disk)
        job = service.jobs.submit("backup", app="shop", params={}, created_by="t")["id"]
        deadline = time.monotonic() + 60
        while service.jobs.get(job)["state"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert len(refused) >= 2, refused
        doc = service.jobs.get(job)
        assert doc["state"] == "succeeded", doc
        assert doc["progress"] == {"phase": "backup", "files_done": 1}  # kept for the end
