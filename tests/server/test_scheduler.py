"""The scheduler under a fake clock: cron and interval rules, missed runs, DST, one run per app."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from casbackup.errors import ConfigError
from casbackup.server.scheduler import Rule, Scheduler, rotate_subset
from casbackup.server.service import Service
from casbackup.server.settings import Settings
from casbackup.testing.fixtures import PASSWORD, make_repo
from tests.server.conftest import make_config

BERLIN = ZoneInfo("Europe/Berlin")


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)


def berlin(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=BERLIN).astimezone(dt.UTC)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, dict[str, Any]]] = []

    def __call__(
        self, kind: str, *, app: str | None, params: dict[str, Any], **kw: Any
    ) -> dict[str, Any]:
        self.calls.append((kind, app, params))
        return {"id": len(self.calls)}


def make(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schedules: dict[str, str], **kw: Any
) -> tuple[Scheduler, Recorder]:
    monkeypatch.setenv("CASBACKUP_TEST_REPO_PASSWORD", PASSWORD)
    repo = str(tmp_path / "repo")
    make_repo(repo).close()
    config = Path(make_config(tmp_path, repo))
    text = config.read_text()
    for app, expr in schedules.items():
        text = text.replace(f'name = "{app}"\n', f'name = "{app}"\nschedule = "{expr}"\n')
    config.write_text(text)
    settings = Settings(state_dir=tmp_path / "st", config_path=str(config), run_scheduler=False,
                        timezone="Europe/Berlin", **kw)  # fmt: skip
    service = Service(settings)
    rec = Recorder()
    return Scheduler(service, submit=rec, clock=lambda: utc(2026, 1, 1)), rec


def test_cron_fires_on_time_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s, rec = make(tmp_path, monkeypatch, {"shop": "30 2 * * *"})
    assert s.tick(berlin(2026, 1, 10, 12, 0)) == []  # first sight: counts from now
    assert s.tick(berlin(2026, 1, 11, 2, 29)) == []
    assert s.tick(berlin(2026, 1, 11, 2, 30, 20)) == ["backup:shop: started backup of shop (run)"]
    assert s.tick(berlin(2026, 1, 11, 2, 31)) == []  # never twice for one time
    assert rec.calls == [("backup", "shop", {"backup_type": "incremental"})]
    assert s.next_run_text("shop") == berlin(2026, 1, 12, 2, 30).isoformat()


def test_interval_schedule_counts_from_the_last_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, rec = make(tmp_path, monkeypatch, {"blog": "every 15 minutes"})
    t0 = utc(2026, 5, 1, 10, 0)
    s.tick(t0)
    assert s.tick(t0 + dt.timedelta(minutes=14)) == []
    assert len(s.tick(t0 + dt.timedelta(minutes=15, seconds=5))) == 1
    assert s.tick(t0 + dt.timedelta(minutes=29)) == []
    assert len(s.tick(t0 + dt.timedelta(minutes=30, seconds=10))) == 1
    assert [c[1] for c in rec.calls] == ["blog", "blog"]


def test_missed_runs_run_once_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s, rec = make(tmp_path, monkeypatch, {"shop": "0 * * * *"})
    s.tick(utc(2026, 2, 1, 0, 30))
    # Down (or asleep) for 5 hours: five fire times passed; one run, then back on schedule.
    assert s.tick(utc(2026, 2, 1, 5, 40)) == ["backup:shop: started backup of shop (missed run)"]
    assert s.tick(utc(2026, 2, 1, 5, 59)) == []
    assert len(s.tick(utc(2026, 2, 1, 6, 0, 30))) == 1
    assert len(rec.calls) == 2


def test_missed_runs_skip_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s, rec = make(tmp_path, monkeypatch, {"shop": "@hourly"}, missed_runs="skip")
    s.tick(utc(2026, 2, 1, 0, 30))
    assert "skipped missed run" in s.tick(utc(2026, 2, 1, 5, 40))[0]
    assert rec.calls == []
    assert len(s.tick(utc(2026, 2, 1, 6, 0, 10))) == 1


def test_state_survives_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s, rec = make(tmp_path, monkeypatch, {"shop": "@daily"})
    s.tick(berlin(2026, 3, 1, 12, 0))
    again = Scheduler(s.service, submit=rec)
    assert again.tick(berlin(2026, 3, 3, 9, 0)) == [
        "backup:shop: started backup of shop (missed run)"
    ]


def test_dst_spring_forward_and_fall_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s, rec = make(tmp_path, monkeypatch, {"shop": "30 2 * * *"})
    # 2026-03-29: clocks jump from 02:00 to 03:00 in Berlin; 02:30 does not exist that day.
    s.tick(berlin(2026, 3, 28, 12, 0))
    minute = berlin(2026, 3, 28, 12, 1)
    fired = []
    while minute < berlin(2026, 3, 30, 12, 0):
        if s.tick(minute):
            fired.append(minute.astimezone(BERLIN).strftime("%m-%d %H:%M"))
        minute += dt.timedelta(minutes=1)
    assert fired == [
        "03-29 03:00",
        "03-30 02:30",
    ]  # the skipped time runs at the first valid minute
    # 2026-10-25: 02:00-03:00 happens twice; the job runs once.
    s.tick(utc(2026, 10, 24, 10, 0))
    minute, fired = utc(2026, 10, 24, 10, 1), []
    while minute < utc(2026, 10, 26, 10, 0):
        if s.tick(minute):
            fired.append(minute.isoformat())
        minute += dt.timedelta(minutes=1)
    assert fired == [
        berlin(2026, 10, 25, 2, 30).isoformat(),
        berlin(2026, 10, 26, 2, 30).isoformat(),
    ]


def test_a_running_backup_is_never_started_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    s, rec = make(tmp_path, monkeypatch, {"shop": "every 1 minutes"})

    class Busy:
        def active_for(self, kind: str, app: str) -> dict[str, Any]:
            return {"id": 1}

    s.service.jobs = Busy()
    s.tick(utc(2026, 1, 1, 0, 0))
    assert "still running" in s.tick(utc(2026, 1, 1, 0, 1, 5))[0]
    assert rec.calls == []
    # A run that did not happen is a warning in the service's log (serve shows warnings; its
    # info lines were nowhere to be seen), not only a line the scheduler thread logs at info.
    assert [r.levelname for r in caplog.records if "still running" in r.getMessage()] == ["WARNING"]


def test_restore_drills_and_bad_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s, rec = make(
        tmp_path, monkeypatch, {}, verify_schedule="0 3 * * 0", check_schedule="0 4 * * *"
    )
    assert sorted(e.key for e in s.entries) == ["check:default", "verify:default"]
    s.tick(berlin(2026, 1, 4, 2, 0))
    s.tick(berlin(2026, 1, 4, 3, 0, 30))  # a Sunday
    assert [(k, a) for k, a, _ in rec.calls] == [("verify", "shop"), ("verify", "blog")]
    s.tick(berlin(2026, 1, 4, 4, 0, 30))
    assert rec.calls[-1][0] == "check" and rec.calls[-1][2]["read_data_subset"].endswith("/7")
    with pytest.raises(ConfigError):
        Rule("61 * * * *", BERLIN)
    assert rotate_subset("1/7", utc(2026, 1, 1)) != rotate_subset("1/7", utc(2026, 1, 2))
    assert rotate_subset("10%", utc(2026, 1, 1)) == "10%"


def test_a_forget_schedule_applies_each_retention_then_prunes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A newcomer set [applications.retention] and a schedule and ran the service: it backed
    # up every night and never forgot a snapshot; the repository grew without bound.
    from casbackup.server.jobs import JobManager

    s, rec = make(tmp_path, monkeypatch, {}, forget_schedule="0 5 * * *")
    assert [e.key for e in s.entries] == ["forget:default"]
    s.tick(berlin(2026, 1, 4, 2, 0))
    done = s.tick(berlin(2026, 1, 4, 5, 0, 30))
    # shop has a retention, blog none (its snapshots are kept); then one prune, queued last
    assert [(k, a) for k, a, _ in rec.calls] == [("forget", "shop"), ("prune", None)], done
    s.service.jobs = JobManager(s.service)
    s.service.db.execute(
        "INSERT INTO jobs (kind, app, repo, params, state, created_at) VALUES"
        " ('prune', NULL, 'default', '{}', 'running', 0)"
    )
    done = s.tick(berlin(2026, 1, 5, 5, 0, 30))
    assert [(k, a) for k, a, _ in rec.calls[2:]] == [("forget", "shop")], done
    assert any("the last prune is still running" in line for line in done), done


def test_a_scheduled_backup_runs_for_real_and_is_audited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from fastapi.testclient import TestClient

    from casbackup.server.app import create_app

    monkeypatch.setenv("CASBACKUP_TEST_REPO_PASSWORD", PASSWORD)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    make_repo(str(tmp_path / "repo")).close()
    config = Path(make_config(tmp_path, str(tmp_path / "repo")))
    config.write_text(
        config.read_text().replace('name = "blog"\n', 'name = "blog"\nschedule = "@hourly"\n')
    )
    settings = Settings(state_dir=tmp_path / "st", config_path=str(config), run_scheduler=False,
                        cheap_password_hashing=True, timezone="UTC")  # fmt: skip
    with TestClient(create_app(settings)) as client:
        service = client.app.state.service  # type: ignore[attr-defined]
        scheduler = Scheduler(service)
        scheduler.tick(utc(2026, 6, 1, 9, 30))
        assert scheduler.tick(utc(2026, 6, 1, 10, 0, 2)) == [
            "backup:blog: started backup of blog (run)"
        ]
        deadline = time.monotonic() + 120
        while (job := service.jobs.list()[0])["state"] in ("queued", "running"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert (
            job["state"] == "succeeded"
            and job["trigger"] == "scheduler"
            and job["created_by"] == "scheduler"
        )
        assert job["snapshot_id"]
        rows = service.db.query(
            "SELECT actor, actor_kind, action, app, detail FROM audit WHERE actor='scheduler'"
        )
        assert [tuple(r)[:4] for r in rows] == [
            ("scheduler", "scheduler", "scheduled_backup", "blog")
        ]
        # "success" is the queueing's (helper-61 read it as the backup's): the detail says so
        assert rows[0]["detail"].startswith(f"queued job {job['id']} ")


def test_a_clock_set_back_does_not_stop_the_schedule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # A machine whose clock ran a year ahead (a bad RTC, a VM restored with the wrong time)
    # fires there; NTP then sets it right. The schedule must go on from the real time, not
    # wait (silently: nothing is overdue for a clock that has not reached it) for a year.
    s, rec = make(tmp_path, monkeypatch, {"shop": "30 2 * * *", "blog": "every 15 minutes"})
    s.tick(berlin(2026, 1, 10, 12, 0))
    s.tick(berlin(2027, 1, 10, 12, 0))  # the wrong clock: one missed run each
    assert len(rec.calls) == 2
    minute, fired = berlin(2026, 1, 10, 12, 1), []  # set right
    while minute < berlin(2026, 1, 12, 12, 0):
        fired += [line.split(":", 2)[1] + minute.astimezone(BERLIN).strftime(" %d %H:%M")
                  for line in s.tick(minute)]  # fmt: skip
        minute += dt.timedelta(minutes=1)
    shop = [f for f in fired if f.startswith("shop")]
    assert shop == ["shop 11 02:30", "shop 12 02:30"]
    assert len([f for f in fired if f.startswith("blog")]) == 2 * 24 * 4 - 1
    assert "went back" in caplog.text
    # None of these runs succeeded (the recorder runs nothing): each is reported overdue,
    # not held back by the reports made under the wrong clock; at the time the schedule
    # says, in its zone (it said 01:30:00+00:00 for a run the config has at 02:30).
    assert any("due at 2026-01-11 02:30 CET" in m for m in s.overdue)


def test_a_clock_set_back_an_hour_does_not_repeat_a_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # NTP steps the clock back an hour just after the nightly run: that night's run is done.
    s, rec = make(tmp_path, monkeypatch, {"shop": "30 2 * * *"})
    s.tick(berlin(2026, 1, 10, 12, 0))
    assert len(s.tick(berlin(2026, 1, 11, 2, 30, 10))) == 1
    minute = berlin(2026, 1, 11, 1, 45)  # stepped back from 02:45
    while minute < berlin(2026, 1, 12, 3, 0):
        s.tick(minute)
        minute += dt.timedelta(minutes=1)
    assert len(rec.calls) == 2  # 11th and 12th, never the 11th twice


def test_a_clock_a_day_ahead_then_set_right_does_not_skip_the_nights_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The clock jumps a day ahead (a bad RTC at boot) and NTP sets it right minutes later.
    # Under the wrong clock the next night's run fired, 16 hours before that night really
    # came: when the night comes it must run again, or 40 hours go without a backup.
    s, rec = make(tmp_path, monkeypatch, {"shop": "30 2 * * *"})
    s.tick(berlin(2026, 1, 10, 10, 0))
    assert len(s.tick(berlin(2026, 1, 11, 10, 0))) == 1  # the wrong clock: "missed", run once
    minute = berlin(2026, 1, 10, 10, 5)  # set right
    while minute < berlin(2026, 1, 11, 3, 0):
        s.tick(minute)
        minute += dt.timedelta(minutes=1)
    assert len(rec.calls) == 2  # the 11th's run, at 02:30 of the real 11th


def _lost(s: Scheduler, job: int, state: str, error: str, at: dt.datetime) -> None:
    """Job ``job`` (the scheduler's last for 'shop') as the service's stop left it."""
    s.service.db.execute(
        "INSERT INTO jobs (id, kind, app, repo, params, state, created_by, created_at, trigger,"
        " finished_at, error) VALUES (?, 'backup', 'shop', 'default', '{}', ?, 'scheduler', ?,"
        " 'scheduler', ?, ?)",
        (job, state, at.timestamp(), at.timestamp() + 60, error),
    )


@pytest.mark.parametrize(
    ("state", "error"),
    [
        ("interrupted", "the service stopped before this job finished"),  # killed, power cut
        ("cancelled", "the service stopped during this job"),  # SIGTERM: reboot, upgrade
    ],
)
def test_a_scheduled_backup_the_service_stop_cut_short_runs_again_once_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str, error: str
) -> None:
    # The nightly run starts at 02:30; the machine reboots at 02:35 and is back at 02:40. Runs
    # missed while the service was down run once at start-up; this one was lost the same way
    # and must not wait a day (it did: the next run was the next night).
    s, rec = make(tmp_path, monkeypatch, {"shop": "30 2 * * *"})
    s.tick(berlin(2026, 1, 10, 12, 0))
    assert len(s.tick(berlin(2026, 1, 11, 2, 30, 10))) == 1
    _lost(s, 1, state, error, berlin(2026, 1, 11, 2, 30, 10))
    again = Scheduler(s.service, submit=rec)
    assert again.tick(berlin(2026, 1, 11, 2, 40)) == [
        "backup:shop: started backup of shop (rerun of job 1, cut short by the service's stop)"
    ]
    assert again.tick(berlin(2026, 1, 11, 2, 41)) == []
    _lost(s, 2, state, error, berlin(2026, 1, 11, 2, 40))  # and again: no loop of reruns
    assert Scheduler(s.service, submit=rec).tick(berlin(2026, 1, 11, 2, 50)) == []
    assert len(rec.calls) == 2
    assert s.next_run_text("shop") == berlin(2026, 1, 12, 2, 30).isoformat()


def test_a_backup_cancelled_by_a_user_or_run_since_is_not_run_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, rec = make(tmp_path, monkeypatch, {"shop": "30 2 * * *"})
    s.tick(berlin(2026, 1, 10, 12, 0))
    s.tick(berlin(2026, 1, 11, 2, 30, 10))
    _lost(s, 1, "cancelled", "cancelled", berlin(2026, 1, 11, 2, 30, 10))
    assert Scheduler(s.service, submit=rec).tick(berlin(2026, 1, 11, 2, 40)) == []
    s.service.db.execute("UPDATE jobs SET state='interrupted' WHERE id=1")
    s.service.db.execute(
        "INSERT INTO jobs (id, kind, app, repo, params, state, created_at, finished_at)"
        " VALUES (2, 'backup', 'shop', 'default', '{}', 'succeeded', ?, ?)",
        (berlin(2026, 1, 11, 2, 33).timestamp(), berlin(2026, 1, 11, 2, 34).timestamp()),
    )
    assert Scheduler(s.service, submit=rec).tick(berlin(2026, 1, 11, 2, 40)) == []
    skip, rec2 = make(tmp_path / "skip", monkeypatch, {"shop": "30 2 * * *"}, missed_runs="skip")
    skip.tick(berlin(2026, 1, 10, 12, 0))
    skip.tick(berlin(2026, 1, 11, 2, 30, 10))
    _lost(skip, 1, "interrupted", "the service stopped", berlin(2026, 1, 11, 2, 30, 10))
    assert Scheduler(skip.service, submit=rec2).tick(berlin(2026, 1, 11, 2, 40)) == []
    assert len(rec.calls) == 1 and len(rec2.calls) == 1


def test_a_success_dated_in_the_future_does_not_hide_overdue_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A backup that succeeded while the clock ran a year ahead is dated then. Once the clock
    # is set right it must not count as the success of every run due before that date: the
    # nightly runs that fail from then on are overdue (they were not: no overdue for a year).
    s, rec = make(tmp_path, monkeypatch, {"shop": "30 2 * * *"})
    s.service.db.execute(
        "INSERT INTO jobs (kind, app, repo, params, state, created_at, finished_at)"
        " VALUES ('backup', 'shop', 'default', '{}', 'succeeded', ?, ?)",
        (berlin(2027, 1, 11, 2, 30).timestamp(), berlin(2027, 1, 11, 2, 31).timestamp()),
    )
    s.tick(berlin(2026, 1, 10, 12, 0))
    s.tick(berlin(2026, 1, 11, 2, 30, 10))  # fired; the recorder runs nothing: no success
    s.tick(berlin(2026, 1, 12, 2, 30, 10))
    assert s.overdue == [
        "the scheduled backup of shop due at 2026-01-11 02:30 CET has not succeeded "
        "(schedule '30 2 * * *')"
    ]


def test_the_machines_zone_from_a_copied_localtime(tmp_path: Path) -> None:
    # Containers often get the host's zone as a copy or bind mount of /etc/localtime
    # (`-v /etc/localtime:/etc/localtime:ro`), not a symlink into zoneinfo: the schedules ran
    # in UTC then, an hour or more off the times the user wrote, with no word said.
    import zoneinfo

    from casbackup.server.scheduler import _local_zone

    source = next((Path(p) / "Europe" / "Berlin" for p in zoneinfo.TZPATH
                   if (Path(p) / "Europe" / "Berlin").is_file()), None)  # fmt: skip
    if source is None:
        pytest.skip("no system zoneinfo files")
    copy = tmp_path / "localtime"
    copy.write_bytes(source.read_bytes())
    zone = _local_zone(env={}, localtime=str(copy))
    assert zone.utcoffset(dt.datetime(2026, 1, 10, 12, 0)) == dt.timedelta(hours=1)
    assert zone.utcoffset(dt.datetime(2026, 7, 10, 12, 0)) == dt.timedelta(hours=2)
    assert str(zone) == str(copy)
    assert _local_zone(env={}, localtime=str(tmp_path / "none")) == dt.UTC
    assert str(_local_zone(env={"TZ": "Europe/Berlin"}, localtime=str(tmp_path / "none"))) == (
        "Europe/Berlin"
    )


def test_a_scheduled_check_still_running_is_not_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A check reads its subset of every pack: on a large repository longer than its hourly
    # schedule. Checks are readers and run side by side, so each fire started one more (the
    # one-run-at-a-time rule only looked at applications, and a check has none).
    from casbackup.server.jobs import JobManager

    s, rec = make(tmp_path, monkeypatch, {}, check_schedule="@hourly", verify_schedule="@hourly")
    s.service.jobs = JobManager(s.service)
    s.tick(utc(2026, 1, 1, 0, 30))
    s.tick(utc(2026, 1, 1, 1, 0, 10))
    assert sorted(c[0] for c in rec.calls) == ["check", "verify", "verify"]
    for kind, app in (("check", None), ("verify", "shop"), ("verify", "blog")):
        s.service.db.execute(
            "INSERT INTO jobs (kind, app, repo, params, state, created_at) VALUES"
            " (?, ?, 'default', '{}', 'running', 0)",
            (kind, app),
        )
    done = s.tick(utc(2026, 1, 1, 2, 0, 10))
    assert sorted(c[0] for c in rec.calls) == ["check", "verify", "verify"], done
    assert any("check:default" in line and "still running" in line for line in done), done


def test_the_time_a_schedule_counts_from_is_no_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A service started at 12:00 with a nightly schedule listed 12:00 as the schedule's last
    # run (/api/schedules), and from 12:30 the dashboard said "the run scheduled at 12:00
    # did not succeed" for a backup that was never due.
    from casbackup.server.dashboard.views import overdue_reason

    s, _ = make(tmp_path, monkeypatch, {"shop": "30 2 * * *"})
    start = berlin(2026, 1, 10, 12, 0)
    s.tick(start)

    def entry() -> dict[str, Any]:
        return next(e for e in s.overview() if e["app"] == "shop")

    assert entry()["last_run"] is None
    assert overdue_reason(entry(), None, start + dt.timedelta(hours=3), BERLIN) is None
    s.tick(berlin(2026, 1, 11, 2, 30, 5))  # its first fire is its last run
    assert entry()["last_run"] == berlin(2026, 1, 11, 2, 30).isoformat()
    # The clock set back a year: it counts from the new now, which is no run either.
    s.tick(berlin(2025, 1, 11, 12, 0))
    assert entry()["last_run"] is None
    assert entry()["next_run"] == berlin(2025, 1, 12, 2, 30).isoformat()
    # A state database from before this fix: the time counted from, with nothing to say so.
    s.service.db.execute("DELETE FROM schedule_state WHERE key LIKE 'from:%'")
    assert entry()["last_run"] is None


def test_an_overdue_report_a_notifier_missed_is_sent_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A notifier that could not be reached when the run was found overdue (the network down
    # for a minute, the receiver restarting) never heard of it: the report was sent once
    # and marked reported, and that run's failure stayed unknown.
    import json

    events, online = tmp_path / "events", tmp_path / "online"
    events.mkdir()
    s, _ = make(tmp_path, monkeypatch, {"shop": "0 * * * *"})
    config = Path(s.service.settings.config_path or "")
    command = f"test -e {online} && cat > $(mktemp -p {events})"
    config.write_text(
        config.read_text().replace(
            "[applications.retention]",
            f'[[applications.notify]]\ntype = "command"\ncommand = "sh -c \'{command}\'"\n'
            'on = ["overdue"]\n\n[applications.retention]',
        )
    )
    s.service.registry = type(s.service.registry)(s.service.settings)
    s.reload()

    def told(now: dt.datetime) -> list[str]:
        s.tick(now)
        for t in s.notify_threads:
            t.join(30)
        return [json.loads(f.read_text())["message"] for f in events.iterdir()]

    s.tick(utc(2026, 3, 2, 10, 0, 30))
    s.tick(utc(2026, 3, 2, 11, 0, 10))  # fires; the recorder runs nothing: no success
    assert told(utc(2026, 3, 2, 12, 0, 10)) == []  # overdue, but the notifier is unreachable
    assert told(utc(2026, 3, 2, 12, 5, 30)) == []  # asked again: still unreachable
    assert told(utc(2026, 3, 2, 13, 0, 10)) == []  # the 12:00 run's report: unreachable too
    assert len(s.overdue) == 2
    online.touch()
    assert told(utc(2026, 3, 2, 13, 2)) == []  # not at every tick
    # The 12:00 run's report, delivered; the 13:00 run overdue in a row is the same news
    # (one report per run of overdue runs: test_overdue_runs_in_a_row_are_one_report).
    got = sorted(told(utc(2026, 3, 2, 13, 5, 30)))
    assert len(got) == 1 and "due at 2026-03-02 12:00 CET" in got[0], got
    assert len(told(utc(2026, 3, 2, 13, 20))) == 1  # delivered: not again
