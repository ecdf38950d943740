"""Notifiers against local receivers on 127.0.0.1; a failing notifier never fails a backup."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from casbackup.config.model import NotifierConfig
from casbackup.notify import BackupNotice, Event, dispatch
from casbackup.testing.fixtures import run_cli
from tests.notify.receivers import http_receiver, smtp_receiver

ALL = ("start", "success", "warning", "failure", "verify_failure")


def test_webhook_posts_the_documented_body() -> None:
    with http_receiver() as (url, rec):
        cfg = NotifierConfig(type="webhook", url=url + "/hook")
        event = Event("warning", "shop", "saved", "ab" * 32, {"files_total": 3}, ("x: denied",))
        assert dispatch((cfg,), event, offline_mode=False) == []
    [(method, path, body)] = rec.requests
    assert (method, path) == ("POST", "/hook")
    doc = json.loads(body)
    assert doc["version"] == 1 and doc["event"] == "warning" and doc["app"] == "shop"
    assert doc["snapshot"] == "ab" * 32 and doc["summary"] == {"files_total": 3}
    assert doc["warnings"] == ["x: denied"] and doc["warnings_total"] == 1
    assert set(doc) == {"version", "event", "app", "message", "snapshot", "summary", "warnings",
                        "warnings_total", "host", "time"}  # fmt: skip


def test_healthchecks_pings_start_success_and_fail() -> None:
    with http_receiver() as (url, rec):
        cfg = NotifierConfig(type="healthchecks", url=url + "/ping/uuid", on=ALL)
        for kind in ("start", "success", "failure", "verify_failure", "warning"):
            assert dispatch((cfg,), Event(kind, "shop", "m"), offline_mode=False) == []
    paths = [p for _m, p, _b in rec.requests]
    assert paths == ["/ping/uuid/start", "/ping/uuid", "/ping/uuid/fail", "/ping/uuid/fail",
                     "/ping/uuid"]  # fmt: skip


def test_events_not_listed_in_on_are_not_sent() -> None:
    with http_receiver() as (url, rec):
        cfg = NotifierConfig(type="webhook", url=url, on=("failure",))
        dispatch((cfg,), Event("success", "shop"), offline_mode=False)
    assert rec.requests == []


def test_failing_notifiers_are_warnings_never_errors(tmp_path: Path) -> None:
    with http_receiver(status=500) as (url, _rec):
        bad_status = NotifierConfig(type="webhook", url=url)
        closed = NotifierConfig(type="webhook", url="http://127.0.0.1:9/x", timeout=2)
        bad_cmd = NotifierConfig(
            type="command", command=f"{sys.executable} -c 'raise SystemExit(3)'"
        )
        unknown = NotifierConfig(type="nosuch")
        warnings = dispatch((bad_status, closed, bad_cmd, unknown), Event("success", "a"),
                            offline_mode=False)  # fmt: skip
    assert len(warnings) == 4
    assert "HTTP Error 500" in warnings[0] and "exited with 3" in warnings[2]
    assert "no notifier plugin named 'nosuch'" in warnings[3]


def test_offline_mode_keeps_network_notifiers_off() -> None:
    with http_receiver() as (url, rec):
        warnings = dispatch((NotifierConfig(type="webhook", url=url),), Event("success", "a"),
                            offline_mode=True)  # fmt: skip
    assert rec.requests == [] and "offline_mode" in warnings[0]


def test_command_gets_the_event_on_stdin_without_our_secrets(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "event.json"
    script = tmp_path / "hook.py"
    script.write_text(
        "import json, os, sys\n"
        f"doc = json.load(sys.stdin); doc['env'] = {{k: v for k, v in os.environ.items() if k.startswith('CASBACKUP')}}\n"
        f"open({str(out)!r}, 'w').write(json.dumps(doc))\n"
    )
    monkeypatch.setenv("CASBACKUP_PASSWORD", "secret")
    cfg = NotifierConfig(type="command", command=f"{sys.executable} {script}")
    assert dispatch((cfg,), Event("failure", "shop", "disk full"), offline_mode=True) == []
    doc = json.loads(out.read_text())
    assert doc["event"] == "failure" and doc["message"] == "disk full"
    assert doc["env"]["CASBACKUP_EVENT"] == "failure" and "CASBACKUP_PASSWORD" not in doc["env"]


def test_email_over_starttls_with_login_from_env(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SMTP_PW", "s3cret")
    with smtp_receiver(tmp_path, "backup", "s3cret") as (port, ca, box):
        cfg = NotifierConfig(type="email", host="127.0.0.1", port=port, cafile=str(ca),
                             sender="backup@example.org", to=("ops@example.org",),
                             username="backup", password_env="SMTP_PW")  # fmt: skip
        assert dispatch((cfg,), Event("failure", "shop", "disk full"), offline_mode=False) == []
        wrong = NotifierConfig(**{**cfg.__dict__, "password_env": None,
                                  "password_file": str(tmp_path / "nope")})  # fmt: skip
        assert len(dispatch((wrong,), Event("failure", "shop"), offline_mode=False)) == 1
        pw = tmp_path / "pw"
        pw.write_text("wrong\n")
        bad_login = NotifierConfig(
            **{**cfg.__dict__, "password_env": None, "password_file": str(pw)}
        )
        bad_login = NotifierConfig(**{**bad_login.__dict__, "timeout": 3})
        # aiosmtpd refuses the login (its answer may come after our short timeout).
        assert len(dispatch((bad_login,), Event("failure", "a"), offline_mode=False)) == 1
    [(sender, rcpts, content, tls)] = box.messages
    assert tls and box.logins == ["backup"]
    assert sender == "backup@example.org" and rcpts == ["ops@example.org"]
    assert b"FAILED" in content and b"disk full" in content


def test_notice_sends_warning_with_the_snapshot() -> None:
    from casbackup.repo.snapshot import Snapshot

    snap = Snapshot(time="2026-01-01T00:00:00+00:00", start_ns=0, host="h", user="u",
                    paths=("/",), tree="0" * 64, id="cd" * 32)  # fmt: skip
    lines: list[str] = []
    with http_receiver() as (url, rec):
        notice = BackupNotice("shop", (NotifierConfig(type="webhook", url=url, on=ALL),),
                              offline_mode=False, warn=lines.append)  # fmt: skip
        notice.started()
        notice.finished(snap, ["a: denied"])
        notice.finished(None, [])  # a dry run: nothing
    events = [json.loads(b)["event"] for _m, _p, b in rec.requests]
    assert events == ["start", "warning"] and lines == []


def _config(tmp_path: Path, data: Path, notify: str) -> Path:
    cfg = tmp_path / "casbackup.toml"
    cfg.write_text(
        f'[repository]\nlocation = "{tmp_path / "repo"}"\n\n[plugins]\noffline_mode = false\n\n'
        f'[[applications]]\nname = "shop"\nsources = ["{data}"]\n\n{notify}'
    )
    return cfg


def test_cli_backup_notifies_and_a_failing_notifier_does_not_fail_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f.txt").write_text("hello")
    with http_receiver() as (url, rec):
        notify = (
            f'[[applications.notify]]\ntype = "webhook"\nurl = "{url}/hook"\n'
            'on = ["start", "success", "warning", "failure", "verify_failure"]\n\n'
            '[[applications.notify]]\ntype = "webhook"\nurl = "http://127.0.0.1:9/down"\ntimeout = 2\n'
        )
        cfg = str(_config(tmp_path, data, notify))
        assert run_cli("--config", cfg, "init", "--insecure-test-kdf").code == 0
        r = run_cli("--config", cfg, "backup", "--app", "shop")
        assert r.code == 0, r.err
        assert "notifier webhook(http://127.0.0.1:9/down) failed for event success" in r.err
        # A failed backup (a source that is gone) is reported as failure.
        (data / "f.txt").unlink()
        data.rmdir()
        r = run_cli("--config", cfg, "backup", "--app", "shop")
        assert r.code != 0
    events = [json.loads(b) for _m, _p, b in rec.requests]
    kinds = [e["event"] for e in events]
    assert kinds[:2] == ["start", "success"] and kinds[2] == "start", kinds
    assert events[1]["snapshot"] and events[1]["app"] == "shop"
    assert kinds[-1] in ("failure", "warning"), kinds


def test_notice_reports_failure_and_verify_failure() -> None:
    from casbackup.errors import VerificationFailed
    from casbackup.repo.snapshot import Snapshot

    snap = Snapshot(time="2026-01-01T00:00:00+00:00", start_ns=0, host="h", user="u",
                    paths=("/",), tree="0" * 64, id="ef" * 32)  # fmt: skip
    with http_receiver() as (url, rec):
        notice = BackupNotice(
            "shop", (NotifierConfig(type="webhook", url=url),), offline_mode=False
        )
        notice.failed(VerificationFailed("x.txt: hash differs"), snap, verification=True)
        notice.failed(RuntimeError("dump failed"))
    docs = [json.loads(b) for _m, _p, b in rec.requests]
    assert [(d["event"], d["snapshot"]) for d in docs] == [
        ("verify_failure", "ef" * 32),
        ("failure", None),
    ]
    assert docs[0]["message"] == "x.txt: hash differs"


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('type = "webhook"\n', "needs 'url'"),
        ('type = "webhook"\nurl = "http://x"\non = ["sucess"]\n', "unknown event 'sucess'"),
        ('type = "email"\nhost = "h"\nsender = "a@b"\nto = ["c@d"]\npasword_env = "X"\n', "pasword_env"),
        ('type = "email"\nhost = "h"\nsender = "a@b"\nto = ["c@d"]\npassword_env = "X"\n'
         'password_file = "f"\n', "not both"),
    ],
)  # fmt: skip
def test_config_refuses_bad_notifier_tables(tmp_path: Path, table: str, problem: str) -> None:
    from casbackup.config import load_config
    from casbackup.errors import ConfigError

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[[applications]]\nname = "a"\nsources = ["/x"]\n\n[[applications.notify]]\n{table}'
    )
    with pytest.raises(ConfigError, match=problem):
        load_config(cfg)


def test_config_reads_notifiers_with_defaults(tmp_path: Path) -> None:
    from casbackup.config import load_config

    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[[applications]]\nname = "a"\nsources = ["/x"]\n\n[[applications.notify]]\n'
        'type = "healthchecks"\nurl = "http://127.0.0.1/p"\n\n[[applications.notify]]\n'
        'type = "command"\ncommand = "true"\n'
    )
    app = load_config(cfg).applications[0]
    assert app.notify[0].on == ALL and "start" not in app.notify[1].on


def test_server_backup_job_notifies(tmp_path: Path) -> None:
    from casbackup.config import load_config
    from casbackup.reporter import Reporter
    from casbackup.server.worker import Job, run_backup_job
    from casbackup.testing.fixtures import make_repo

    class Collect(Reporter):
        def __init__(self) -> None:
            self.lines: list[str] = []

        def warning(self, message: str) -> None:
            self.lines.append(message)

    data = tmp_path / "data"
    data.mkdir()
    (data / "f.txt").write_text("hello")
    with http_receiver() as (url, rec):
        notify = (
            f'[[applications.notify]]\ntype = "webhook"\nurl = "{url}"\n\n'
            '[[applications.notify]]\ntype = "webhook"\nurl = "http://127.0.0.1:9/down"\ntimeout = 2\n'
        )
        config = load_config(_config(tmp_path, data, notify))
        repo = make_repo(str(tmp_path / "repo"))
        reporter = Collect()
        try:
            result = run_backup_job(Job("backup", repo, config, "shop", {}, reporter))  # type: ignore[arg-type]
        finally:
            repo.close()
    [doc] = [json.loads(b) for _m, _p, b in rec.requests]
    assert doc["event"] == "success" and doc["snapshot"] == result["snapshot_id"]
    assert any("127.0.0.1:9/down" in line for line in reporter.lines)


def test_overdue_scheduled_backup_notifies_once_per_missed_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's scheduler: a run due at 11:00 that has not succeeded by the next fire
    time (12:00) sends ``overdue`` once, by webhook and email, only to notifiers whose ``on``
    lists it; a run that succeeded in time sends nothing; a restart does not send it again."""
    import datetime as dt
    import time

    from casbackup.server.scheduler import Scheduler
    from casbackup.server.service import Service
    from casbackup.server.settings import Settings
    from casbackup.testing.fixtures import PASSWORD, make_repo
    from tests.server.conftest import make_config

    def utc(h: int, m: int = 0, s: int = 0) -> dt.datetime:
        return dt.datetime(2026, 3, 2, h, m, s, tzinfo=dt.UTC)

    monkeypatch.setenv("CASBACKUP_TEST_REPO_PASSWORD", PASSWORD)
    monkeypatch.setenv("SMTP_PW", "s3cret")
    repo = str(tmp_path / "repo")
    make_repo(repo).close()
    with (
        http_receiver() as (url, rec),
        http_receiver() as (other_url, other),
        smtp_receiver(tmp_path, "backup", "s3cret") as (port, ca, box),
    ):
        extra = (
            f'\n[[applications.notify]]\ntype = "webhook"\nurl = "{url}"\n'
            f'\n[[applications.notify]]\ntype = "webhook"\nurl = "{other_url}"\non = ["failure"]\n'
            f'\n[[applications.notify]]\ntype = "email"\nhost = "127.0.0.1"\nport = {port}\n'
            f'cafile = "{ca}"\nsender = "b@example.org"\nto = ["ops@example.org"]\n'
            'username = "backup"\npassword_env = "SMTP_PW"\non = ["overdue"]\n'
            "\n[plugins]\noffline_mode = false\n"
        )
        config = Path(make_config(tmp_path, repo, extra))
        text = config.read_text().replace(
            'name = "blog"\n', 'name = "blog"\nschedule = "0 * * * *"\n'
        )
        config.write_text(text)
        settings = Settings(state_dir=tmp_path / "st", config_path=str(config),
                            run_scheduler=False, timezone="UTC")  # fmt: skip
        service = Service(settings)
        fired: list[str | None] = []

        def submit(kind: str, *, app: str | None, **kw: object) -> dict[str, int]:
            fired.append(app)
            return {"id": len(fired)}

        def scheduler() -> Scheduler:
            return Scheduler(service, submit=submit, clock=lambda: utc(10))

        def wait_sent(s: Scheduler) -> None:
            for t in s.notify_threads:
                t.join(30)

        s = scheduler()
        s.tick(utc(10, 0, 30))  # first sight: nothing is waited for
        s.tick(utc(11, 0, 10))  # fires the 11:00 run (it never succeeds)
        s.tick(utc(11, 30))
        assert fired == ["blog"] and s.overdue == []
        s.tick(utc(12, 0, 10))  # the next fire time: 11:00's run is overdue
        wait_sent(s)
        assert len(s.overdue) == 1 and "due at 2026-03-02 11:00 UTC" in s.overdue[0]
        [doc] = [json.loads(body) for _m, _p, body in rec.requests]
        assert doc["event"] == "overdue" and doc["app"] == "blog" and doc["snapshot"] is None
        assert other.requests == []  # its on = ["failure"]
        [(_sender, _rcpts, content, _tls)] = box.messages
        assert b"OVERDUE" in content and b"blog" in content
        s.tick(utc(12, 30))
        # The 12:00 run succeeds at 12:20: nothing is overdue at 13:00.
        service.db.execute(
            "INSERT INTO jobs (kind, app, repo, params, state, created_at, finished_at)"
            " VALUES ('backup', 'blog', 'default', '{}', 'succeeded', ?, ?)",
            (utc(12, 0, 10).timestamp(), utc(12, 20).timestamp()),
        )
        s.tick(utc(13, 0, 10))
        wait_sent(s)
        assert len(s.overdue) == 1 and len(rec.requests) == 1
        # A restarted service does not report the 11:00 run again; 13:00's (no success
        # before 14:00) is reported by the new one.
        again = scheduler()
        again.tick(utc(13, 30))
        assert again.overdue == []
        again.tick(utc(14, 0, 10))
        wait_sent(again)
        assert len(again.overdue) == 1 and len(rec.requests) == 2
        deadline = time.monotonic() + 10
        while len(box.messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(box.messages) == 2
        service.stop()


def test_a_warning_naming_a_file_that_is_not_utf8_reaches_every_notifier(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, healthchecks and email failed to encode it ("surrogates not allowed"): the
    warning of such a partial backup was never sent; the webhook's body carried a lone
    surrogate escape that strict JSON parsers refuse. Now each gets the bytes as \\xNN."""
    import os

    bad = os.fsdecode(b"/srv/eio-\xe9.txt") + ": Input/output error"
    event = Event("warning", "shop", "snapshot cd saved", "cd" * 32, {}, (bad,))
    shown = "/srv/eio-\\xe9.txt: Input/output error"
    with http_receiver() as (url, rec):
        for kind in ("healthchecks", "webhook"):
            cfg = NotifierConfig(type=kind, url=url + "/" + kind, on=ALL)
            assert dispatch((cfg,), event, offline_mode=False) == []
    (_m, _p, ping), (_m2, _p2, hook) = rec.requests
    assert shown in ping.decode("utf-8")
    assert json.loads(hook)["warnings"] == [shown]
    monkeypatch.setenv("SMTP_PW", "s3cret")
    with smtp_receiver(tmp_path, "backup", "s3cret") as (port, ca, box):
        cfg = NotifierConfig(type="email", host="127.0.0.1", port=port, cafile=str(ca),
                             sender="backup@example.org", to=("ops@example.org",),
                             username="backup", password_env="SMTP_PW", on=ALL)  # fmt: skip
        assert dispatch((cfg,), event, offline_mode=False) == []
    [(_sender, _rcpts, content, _tls)] = box.messages
    assert b"eio-\\xe9.txt" in content
