"""The dashboard's pages without a browser: who is offered what, login redirects, the snapshot
browser's paging, file view and diff, job pages with plans, and the rules that keep pages
offline and testable (no outside URL, CSP, every data-testid listed in testids.py)."""

from __future__ import annotations

import datetime as dt
import os
import re
import zoneinfo
from pathlib import Path

import pytest
from fastapi.routing import APIRoute

from casbackup.repo.snapshot import Snapshot
from casbackup.server.dashboard import charts, pages
from casbackup.server.dashboard.format import age, mode, safe_next
from casbackup.server.dashboard.format import size as size_text
from casbackup.server.dashboard.testids import TESTIDS
from casbackup.server.dashboard.views import day_strip, overdue_reason
from tests.server.conftest import PW, Env
from tests.server.test_jobs import wait_job
from tests.server.test_snapshots import backup

TEMPLATES = Path(pages.__file__).resolve().parent.parent / "templates"
STATIC = TEMPLATES.parent / "static"


def login(env: Env, who: str) -> str:
    """Log the test client in as ``who`` (its cookie replaces any other); returns the CSRF."""
    r = env.client.post("/api/auth/login", json={"username": who, "password": PW})
    assert r.status_code == 200, r.text
    return str(r.json()["csrf_token"])


def has(html: str, testid: str) -> bool:
    return f'data-testid="{testid}"' in html


def test_anonymous_pages_redirect_to_login_with_next(env: Env) -> None:
    for path in (
        "/",
        "/apps/shop",
        "/jobs",
        "/jobs/1",
        "/recovery",
        "/admin",
        "/snapshots/x?path=/a",
    ):
        r = env.client.get(path, follow_redirects=False)
        assert r.status_code == 303, (path, r.status_code)
        assert r.headers["location"].startswith("/login?next=%2F")
    r = env.client.get("/login")
    assert r.status_code == 200 and has(r.text, TESTIDS["login_form"])
    assert "connect-src 'self'" in r.headers["content-security-policy"]
    login(env, "viewer")
    r = env.client.get("/login?next=/jobs", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/jobs"


def test_login_next_never_leaves_the_site() -> None:
    assert safe_next("/apps/shop?x=1") == "/apps/shop?x=1"
    for bad in (
        "//evil.example/",
        "https://evil.example/",
        "/\\evil",
        "evil",
        "/a\r\nSet-Cookie: x",
    ):
        assert safe_next(bad) == "/", bad


def test_login_page_does_not_forward_offsite(env: Env) -> None:
    html = env.client.get("/login?next=//evil.example/x").text
    assert 'data-then="goto:/"' in html and "evil" not in html


def test_each_role_is_offered_only_what_it_may_do(env: Env) -> None:
    snap = backup(env, "shop")["snapshot_id"]
    short = snap[:8]
    login(env, "viewer")
    app = env.client.get("/apps/shop").text
    assert has(app, f"{TESTIDS['snapshot_row']}:{short}")
    assert not has(app, TESTIDS["backup_button"]) and not has(app, f"verify-button:{short}")
    assert not has(app, TESTIDS["forget_preview"]) and 'href="/admin"' not in app
    browser = env.client.get(f"/snapshots/{snap}").text
    assert not has(browser, TESTIDS["restore_button"]) and "/download?" not in browser
    assert env.client.get("/admin").status_code == 403
    assert env.client.get("/recovery").status_code == 403

    login(env, "operator")
    app = env.client.get("/apps/shop").text
    assert has(app, TESTIDS["backup_button"]) and has(app, f"verify-button:{short}")
    assert not has(app, TESTIDS["forget_preview"])  # forget is for admins
    browser = env.client.get(f"/snapshots/{snap}").text
    assert has(browser, TESTIDS["restore_button"]) and "/download?" in browser
    assert env.client.get("/admin").status_code == 403

    login(env, "admin")
    app = env.client.get("/apps/shop").text
    assert has(app, TESTIDS["forget_preview"])  # shop has a retention policy
    assert 'href="/admin"' in app and 'href="/recovery"' in app
    assert env.client.get("/admin").status_code == 200
    assert env.client.get("/recovery").status_code == 200
    blog = env.client.get("/apps/blog").text
    assert not has(blog, TESTIDS["forget_preview"])  # blog has none: nothing to preview


def test_app_scoped_user_sees_only_its_applications(env: Env) -> None:
    blog_snap = backup(env, "blog")["snapshot_id"]
    login(env, "scoped")
    overview = env.client.get("/").text
    assert has(overview, f"{TESTIDS['app_row']}:shop")
    assert not has(overview, f"{TESTIDS['app_row']}:blog") and env.repo not in overview
    assert env.client.get("/apps/blog").status_code == 404
    assert env.client.get(f"/snapshots/{blog_snap}").status_code == 404


def test_forms_carry_the_csrf_token_and_target_the_api(env: Env) -> None:
    backup(env, "shop")
    csrf = login(env, "admin")
    for path in ("/apps/shop", "/admin", "/recovery"):
        html = env.client.get(path).text
        forms = re.findall(r"<form [^>]*data-api=\"([^\"]+)\"[^>]*>(.*?)</form>", html, re.S)
        assert forms, path
        for action, body in forms:
            assert action.startswith("/api/"), action
            assert f'name="csrf_token" value="{csrf}"' in body, (path, action)
    # the dashboard has no write route of its own: every state change is the API's
    for route in pages.router.routes:
        assert isinstance(route, APIRoute) and route.methods <= {"GET", "HEAD"}, route
    r = env.client.post("/api/backup", json={"app_name": "shop"})  # session, no token
    assert r.status_code == 403


def test_overview_badge_strip_and_sizes(env: Env) -> None:
    snap = backup(env, "shop")["snapshot_id"]
    login(env, "viewer")
    html = env.client.get("/").text
    badge = re.search(
        r'<span class="badge (\w+)" data-testid="verify-badge:shop"[^>]*>([^<]*)<', html
    )
    assert badge and badge.groups() == ("bad", "never verified")
    assert html.count('class="day ok"') == 1  # today, for shop only
    r = env.client.post(f"/api/snapshots/{snap}/verify", headers=env.h("operator"))
    assert wait_job(env, r.json()["job_id"])["state"] == "succeeded"
    html = env.client.get("/").text
    badge = re.search(
        r'<span class="badge (\w+)" data-testid="verify-badge:shop"[^>]*>([^<]*)<', html
    )
    assert badge and badge.group(1) == "ok" and badge.group(2).startswith("proven restorable")
    assert has(html, f"{TESTIDS['repo_health']}:default")


def test_snapshot_browser_pages_large_folders(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    snap = backup(env, "shop")["snapshot_id"]
    login(env, "operator")
    folder = str(env.tmp / "shop")
    monkeypatch.setattr(pages, "PAGE_SIZE", 1)
    first = env.client.get(f"/snapshots/{snap}", params={"path": folder}).text
    assert has(first, "entry:a.txt") and not has(first, "entry:sub") and "1 of 2" in first
    second = env.client.get(f"/snapshots/{snap}", params={"path": folder, "offset": 1}).text
    assert has(second, "entry:sub") and not has(second, "entry:a.txt")


def test_file_view_download_link_and_diff(env: Env) -> None:
    old = backup(env, "shop")["snapshot_id"]
    (env.tmp / "shop" / "a.txt").write_text("changed\n")
    (env.tmp / "shop" / "new.txt").write_text("new\n")
    new = backup(env, "shop")["snapshot_id"]
    login(env, "operator")
    path = f"{env.tmp}/shop/a.txt"
    html = env.client.get(f"/snapshots/{new}", params={"path": path}).text
    assert has(html, TESTIDS["file_meta"]) and "8 bytes" in html
    href = re.search(r'href="(/api/snapshots/[^"]+)" data-testid="download:a.txt"', html)
    assert href
    r = env.client.get(href.group(1).replace("&amp;", "&"))
    assert r.status_code == 200 and r.content == b"changed\n"
    html = env.client.get(
        f"/snapshots/{new}", params={"path": f"{env.tmp}/shop", "against": old}
    ).text
    assert has(html, TESTIDS["diff_result"])
    assert "1 added, 0 removed, 1 modified" in html
    assert f"{env.tmp}/shop/new.txt" in html


def test_job_pages_show_plans_with_their_run_buttons(env: Env) -> None:
    backup(env, "shop")
    backup(env, "shop")
    csrf = login(env, "admin")
    h = {"X-CSRF-Token": csrf}
    r = env.client.post("/api/forget", json={"app_name": "shop", "dry_run": True}, headers=h)
    job = wait_job(env, r.json()["job_id"])
    html = env.client.get(f"/jobs/{job['id']}").text
    assert has(html, TESTIDS["job_result"]) and "keep 1, remove 1" in html
    assert has(html, TESTIDS["job_run_plan"])
    r = env.client.post("/api/disaster-recovery", json={"app_name": "shop", "allow_unverified": True},
                        headers=h)  # fmt: skip
    job = wait_job(env, r.json()["job_id"])
    assert job["state"] == "succeeded", job
    html = env.client.get(f"/jobs/{job['id']}").text
    assert "Run this recovery" in html and has(html, TESTIDS["job_run_plan"])
    login(env, "viewer")  # a viewer sees the plan but is offered no button
    html = env.client.get(f"/jobs/{job['id']}").text
    assert has(html, TESTIDS["job_result"]) and not has(html, TESTIDS["job_run_plan"])


def test_the_recovery_form_and_its_run_button_carry_what_recover_takes(env: Env) -> None:
    # The form had no db_into, globals or in_place (the CLI's --db-into, --no-globals,
    # --in-place); the plan's run button must send what the plan was made with.
    backup(env, "shop")
    h = {"X-CSRF-Token": login(env, "admin")}
    page = env.client.get("/recovery").text
    assert has(page, TESTIDS["recover_db_into"]) and has(page, TESTIDS["recover_in_place"])
    assert 'name="globals"' in page
    body = {"app_name": "shop", "allow_unverified": True, "globals": False, "db_into": []}
    job = wait_job(
        env, env.client.post("/api/disaster-recovery", json=body, headers=h).json()["job_id"]
    )
    html = env.client.get(f"/jobs/{job['id']}").text
    assert has(html, TESTIDS["job_run_plan"])
    assert '<input type="hidden" name="globals" value="false" data-type="bool">' in html
    assert '<input type="hidden" name="in_place" value="false" data-type="bool">' in html
    assert """<input type="hidden" name="db_into" value='[]' data-type="json">""" in html


def test_a_forget_preview_that_removes_nothing_offers_no_button(env: Env) -> None:
    # The preview said "keep 1, remove 0" above a red "Forget them" button, which would run
    # a forget that removes nothing; prune's preview already said "Nothing to prune."
    backup(env, "shop")
    h = {"X-CSRF-Token": login(env, "admin")}
    r = env.client.post("/api/forget", json={"app_name": "shop", "dry_run": True}, headers=h)
    html = env.client.get(f"/jobs/{wait_job(env, r.json()['job_id'])['id']}").text
    assert "keep 1, remove 0" in html and "Nothing to forget." in html
    assert not has(html, TESTIDS["job_run_plan"])


def test_pages_load_nothing_from_another_host(env: Env) -> None:
    backup(env, "shop")
    login(env, "admin")
    for path in ("/", "/apps/shop", "/jobs", "/jobs/1", "/recovery", "/admin", "/login"):
        html = env.client.get(path).text
        assert not re.search(r"(src|href|action)=\"(https?:)?//", html), path
    for asset in STATIC.iterdir():
        # An SVG names its XML namespace by URI; that is an identifier, never fetched.
        text = asset.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"https?://|url\(", text), asset.name
        assert env.client.get(f"/static/{asset.name}").status_code == 200


def test_every_testid_is_listed_and_used() -> None:
    used: set[str] = set()
    for template in TEMPLATES.glob("*.html"):
        text = template.read_text()
        # a testid is T.<key> (or a macro's ``testid`` argument, itself built from T.<key>)
        literal = re.findall(r'data-testid="(?!\{\{ T\.|\{\{ testid \}\})([^"]*)"', text)
        assert not literal, f"{template.name}: data-testid not from testids.py: {literal}"
        for key in re.findall(r"\bT\.(\w+)", text):
            assert key in TESTIDS, f"{template.name}: unknown testid {key}"
            used.add(key)
    for key in re.findall(r"TESTIDS\[\"(\w+)\"\]", Path(pages.__file__).read_text()):
        used.add(key)
    assert set(TESTIDS) == used, f"listed but unused: {set(TESTIDS) - used}"
    assert len(set(TESTIDS.values())) == len(TESTIDS)


def test_formatting_helpers() -> None:
    now = dt.datetime(2026, 1, 2, 12, 0, tzinfo=dt.UTC)
    assert age("2026-01-02T10:00:00+00:00", now) == "2 h ago"
    assert age("2025-12-30T12:00:00Z", now) == "3 d ago"
    assert age("2026-01-02T12:05:00+00:00", now) == "in 5 min"
    assert age(None, now) == "never" and mode("0o755") == "755"
    times = [dt.datetime(2026, 1, 2, 1, tzinfo=dt.UTC)]
    strip = day_strip(times, [dt.datetime(2026, 1, 1, 3, tzinfo=dt.UTC)], now)
    assert len(strip) == 30 and strip[-1] == ("2026-01-02", "ok") and strip[-2][1] == "failed"
    assert {o for _, o in strip[:-2]} == {"none"}


def test_chart_svg() -> None:
    assert "no backups yet" in charts.chart([], title="t", label=str)
    t = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    svg = charts.chart([(t, 1.0), (t + dt.timedelta(days=2), 3.0)], title="<x>", label=str)
    assert "&lt;x&gt;" in svg and "<x>" not in svg and "<polyline" in svg
    assert "2026-01-01" in svg and "2026-01-03" in svg
    bars = charts.chart([(t, 2.0)], title="d", label=str, bars=True)
    assert bars.count("<rect") == 1
    # bars at the first and last times stay inside the plot, clear of the y-axis labels
    many = [(t + dt.timedelta(hours=h), 1.0 + h) for h in range(5)]
    svg = charts.chart(many, title="d", label=str, bars=True)
    spans = [
        (float(m.group(1)), float(m.group(1)) + float(m.group(2)))
        for m in re.finditer(r'<rect class="bar" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', svg)
    ]
    assert len(spans) == 5
    assert min(a for a, _ in spans) >= charts.LEFT
    assert max(b for _, b in spans) <= charts.W - charts.RIGHT
    # two runs a minute apart among runs days apart: bars side by side, not on top of each other
    close = [(t, 3.0), (t + dt.timedelta(minutes=1), 1.0), (t + dt.timedelta(days=9), 2.0)]
    svg = charts.chart(close, title="d", label=str, bars=True)
    spans = sorted(
        (float(m.group(1)), float(m.group(1)) + float(m.group(2)))
        for m in re.finditer(r'<rect class="bar" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"', svg)
    )
    assert len(spans) == 3 and all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False)), (
        spans
    )


def _snap(when: dt.datetime) -> Snapshot:
    return Snapshot(time=when.isoformat(), start_ns=0, host="h", user="u", paths=("/x",),
                    tree="00" * 32, app="shop")  # fmt: skip


def test_overdue_rules() -> None:
    now = dt.datetime(2026, 1, 2, 12, 0, tzinfo=dt.UTC)
    fired = "2026-01-02T02:00:00+00:00"
    nxt = "2026-01-03T02:00:00+00:00"
    sched = {"last_run": fired, "next_run": nxt}
    assert overdue_reason(None, None, now) is None  # not scheduled
    assert overdue_reason({"last_run": None, "next_run": nxt}, None, now) is None  # first day
    ok = _snap(dt.datetime(2026, 1, 2, 2, 0, 5, tzinfo=dt.UTC))
    assert overdue_reason(sched, ok, now) is None
    old = _snap(dt.datetime(2026, 1, 1, 2, 0, 5, tzinfo=dt.UTC))
    assert "02:00 UTC did not succeed" in (overdue_reason(sched, old, now) or "")
    assert overdue_reason(sched, None, now) is not None
    # fired a moment ago: its backup may still be running
    assert overdue_reason(sched, old, dt.datetime(2026, 1, 2, 2, 10, tzinfo=dt.UTC)) is None
    # the service was down when the next run was due
    late = {"last_run": "2026-01-01T02:00:00+00:00", "next_run": "2026-01-02T02:00:00+00:00"}
    assert "did not start" in (overdue_reason(late, old, now) or "")


def test_overview_shows_overdue_and_next_run(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeScheduler:
        def overview(self) -> list[dict[str, object]]:
            return [{"key": "backup:shop", "kind": "backup", "app": "shop",
                     "last_run": "2020-01-01T02:00:00+00:00", "next_run": "2999-01-01T02:00:00+00:00"}]  # fmt: skip

        def next_run_text(self, app: str) -> str | None:
            return "2999-01-01T02:00:00+00:00" if app == "shop" else None

        def stop(self) -> None:
            pass

    monkeypatch.setattr(env.service, "scheduler", FakeScheduler())
    login(env, "viewer")
    html = env.client.get("/").text
    assert has(html, f"{TESTIDS['overdue']}:shop") and not has(html, f"{TESTIDS['overdue']}:blog")
    assert "2999-01-01 02:00 UTC" in html


def test_pages_show_times_in_the_services_zone(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard said 'the run scheduled at 2020-01-01 01:00 UTC did not succeed' for a
    schedule of 02:00 in Europe/Berlin (the zone the service fires schedules in), and counted
    a nightly backup at 00:30 Berlin time in the day before on the 30-day strip."""
    from casbackup.server.dashboard.views import day_strip

    class FakeScheduler:
        def overview(self) -> list[dict[str, object]]:
            return [{"key": "backup:shop", "kind": "backup", "app": "shop",
                     "last_run": "2020-01-01T01:00:00+00:00", "next_run": "2999-07-01T00:00:00+00:00"}]  # fmt: skip

        def next_run_text(self, app: str) -> str | None:
            return "2999-07-01T00:00:00+00:00" if app == "shop" else None

        def stop(self) -> None:
            pass

    monkeypatch.setattr(env.service, "scheduler", FakeScheduler())
    monkeypatch.setattr(env.service, "zone_name", lambda: "Europe/Berlin")
    login(env, "viewer")
    html = env.client.get("/").text
    assert "the run scheduled at 2020-01-01 02:00 CET did not succeed" in html
    assert "2999-07-01 02:00 CEST" in html  # summer time then
    backup(env, "shop")
    job = env.service.jobs.list(kind="backup", limit=1, apps=None)[0]
    page = env.client.get(f"/jobs/{job['id']}").text
    assert 'data-tz="Europe/Berlin"' in page  # the live log's lines use it too
    assert " CET " in page or " CEST " in page
    assert " UTC " not in page

    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    now = dt.datetime(2026, 11, 21, 10, 0, tzinfo=dt.UTC)
    night = dt.datetime(2026, 11, 20, 23, 30, tzinfo=dt.UTC)  # 00:30 on the 21st in Berlin
    assert day_strip([night], [], now, berlin)[-1] == ("2026-11-21", "ok")
    assert day_strip([night], [], now)[-2] == ("2026-11-20", "ok")  # in UTC: the day before
    # A snapshot from a clock at the end of the calendar: no OverflowError east of UTC.
    end = dt.datetime(9999, 12, 31, 23, 30, tzinfo=dt.UTC)
    assert day_strip([end], [], now, berlin)[-1] == ("2026-11-21", "none")


def test_a_snapshot_dated_in_the_future_does_not_hide_an_overdue_run(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A snapshot taken while the clock ran years ahead sorts last; once the clock is right it
    # must not stand for the run scheduled yesterday (the card said nothing was overdue).
    from casbackup.server.dashboard import views

    class FakeScheduler:
        def overview(self) -> list[dict[str, object]]:
            return [{"key": "backup:shop", "kind": "backup", "app": "shop",
                     "last_run": "2026-01-01T02:00:00+00:00", "next_run": "2999-01-01T02:00:00+00:00"}]  # fmt: skip

        def next_run_text(self, app: str) -> str | None:
            return None

        def stop(self) -> None:
            pass

    snaps = [_snap(dt.datetime(2025, 12, 31, 2, 0, tzinfo=dt.UTC)),
             _snap(dt.datetime(2998, 1, 1, 2, 0, tzinfo=dt.UTC))]  # fmt: skip
    monkeypatch.setattr(views, "repo_snapshots", lambda handle, warnings: snaps)
    monkeypatch.setattr(env.service, "scheduler", FakeScheduler())
    login(env, "viewer")
    assert has(env.client.get("/").text, f"{TESTIDS['overdue']}:shop")


def test_restore_to_the_original_place_is_for_admins(env: Env) -> None:
    snap = backup(env, "shop")["snapshot_id"]
    source = env.tmp / "shop" / "a.txt"
    source.write_text("damaged\n")
    (env.tmp / "shop" / "sub" / "b.bin").unlink()
    body = {"path": f"{env.tmp}/shop", "in_place": True, "overwrite": False}
    r = env.client.post(f"/api/snapshots/{snap}/restore", json=body, headers=env.h("operator"))
    assert r.status_code == 403
    login(env, "operator")
    assert not has(env.client.get(f"/snapshots/{snap}").text, TESTIDS["restore_in_place"])
    login(env, "admin")
    assert has(env.client.get(f"/snapshots/{snap}").text, TESTIDS["restore_in_place"])
    r = env.client.post(f"/api/snapshots/{snap}/restore", json=body, headers=env.h("admin"))
    job = wait_job(env, r.json()["job_id"])
    # without overwrite an existing file is left alone and reported, the rest is restored
    assert job["state"] == "failed" and "a.txt exists in the target" in job["error"], job
    page = env.client.get(f"/jobs/{job['id']}").text
    assert "a.txt exists in the target" in page
    assert job["params"]["target"] == f"{env.tmp}/shop"
    assert source.read_text() == "damaged\n"
    assert len((env.tmp / "shop" / "sub" / "b.bin").read_bytes()) == 300_000  # missing: restored
    file_body = {"path": str(source), "in_place": True, "overwrite": True}
    r = env.client.post(f"/api/snapshots/{snap}/restore", json=file_body, headers=env.h("admin"))
    job = wait_job(env, r.json()["job_id"])
    assert job["state"] == "succeeded" and job["params"]["target"] == f"{env.tmp}/shop", job
    assert source.read_text() == "hello\n"
    assert not any((env.tmp / "recovery").glob("*"))  # nothing went to the recovery folder


def test_refusals_and_missing_things_are_html_pages(env: Env) -> None:
    login(env, "viewer")
    r = env.client.get("/admin")
    assert r.status_code == 403 and r.headers["content-type"].startswith("text/html")
    assert has(r.text, TESTIDS["error_message"])
    assert "may manage users, tokens and the audit log; yours is a viewer." in r.text
    r = env.client.get("/snapshots/0123456789abcdef")
    assert r.status_code == 404 and has(r.text, TESTIDS["error_message"])
    r = env.client.get("/jobs/999999")
    assert r.status_code == 404 and "no job 999999" in r.text
    r = env.client.get("/snapshots/x", params={"path": "/a/../b"})
    assert r.status_code in (400, 404) and r.headers["content-type"].startswith("text/html")


def test_repository_size_only_for_unscoped_callers(env: Env) -> None:
    login(env, "viewer")
    env.client.get("/")  # measured before the backup ...
    backup(env, "shop")  # ... and again after it, not five minutes later
    size = sum(p.stat().st_size for p in Path(env.repo).rglob("*") if p.is_file())
    login(env, "viewer")
    html = env.client.get("/").text
    shown = re.search(r"<dt>Size</dt><dd>([^<]+)</dd>", html)
    assert shown and shown.group(1) == size_text(size)
    login(env, "scoped")
    assert "<dt>Size</dt>" not in env.client.get("/").text


def test_a_check_that_finds_damage_names_the_files_and_the_way_out(env: Env) -> None:
    """Found on a real `serve`: a check job that found a damaged pack showed only 'pack X:
    1 damaged blob', not which files of which snapshots, nor what to do (the CLI says both)."""
    from casbackup.testing.fixtures import flip_stored_byte, open_repo

    backup(env, "shop")
    backup(env, "shop")
    repo = open_repo(env.repo)
    try:
        snap = repo.load_snapshot(repo.snapshot_ids()[-1])
        path = str(env.tmp / "shop" / "sub" / "b.bin")
        node = repo.find_node(snap.root, path)
        assert node is not None
        loc = repo.locate(node.content[0])
    finally:
        repo.close()
    flip_stored_byte(env.repo, loc.pack, loc.offset, loc.stored_len, 0x40)
    csrf = login(env, "admin")
    job = env.client.post("/api/check", json={"read_data": True}, headers={"X-CSRF-Token": csrf})
    check = wait_job(env, job.json()["job_id"])
    assert check["state"] == "failed"
    html = env.client.get(f"/jobs/{check['id']}").text
    for snap_id in check["result"]["affected"]:
        assert has(html, f"{TESTIDS['check_affected']}:{snap_id[:8]}")
    assert len(check["result"]["affected"]) == 2 and html.count(f"<li>{path}</li>") == 2
    assert "2 snapshots, " in html and f"{check['result']['packs_read']} pack" in html
    assert has(html, TESTIDS["check_repair_hint"])
    assert f"casbackup repair packs {loc.pack[:12]}" in html
    assert has(html, f"{TESTIDS['repair_button']}:packs")  # an admin may do it from here
    assert has(html, f"{TESTIDS['repair_preview']}:packs")  # or see first what it would do
    overview = env.client.get("/").text  # the application itself says so, not only the check
    assert has(overview, f"{TESTIDS['app_damage']}:shop") and "damaged: 2 snapshots" in overview
    assert not has(overview, f"{TESTIDS['app_damage']}:blog")
    login(env, "operator")
    assert not has(env.client.get(f"/jobs/{check['id']}").text, f"{TESTIDS['repair_button']}:packs")

    # The button's request: the damaged blob leaves the index, the intact ones stay.
    csrf = login(env, "admin")
    h = {"X-CSRF-Token": csrf}
    body = {"what": "packs", "packs": check["result"]["repairable_packs"], "dry_run": True}
    dry = wait_job(env, env.client.post("/api/repair", json=body, headers=h).json()["job_id"])
    assert dry["state"] == "succeeded" and dry["result"]["packs_deleted"] == 0, dry
    html = env.client.get(f"/jobs/{dry['id']}").text
    assert "Dry run: nothing changed." in html and has(html, f"{TESTIDS['repair_button']}:packs")
    assert "1/1 packs" in html and "1/1 packs · 0 B" not in html  # no bytes counted: none shown
    assert loc.pack in html  # the button repairs the packs the preview looked at
    body["dry_run"] = False
    repair = wait_job(env, env.client.post("/api/repair", json=body, headers=h).json()["job_id"])
    assert repair["state"] == "succeeded", repair
    assert repair["result"]["packs"][0]["dropped"] == 1 and repair["result"]["packs_deleted"] == 1
    assert "1 damaged blob dropped" in env.client.get(f"/jobs/{repair['id']}").text
    # The overview no longer calls them damaged as if nothing was done: only a check can
    # say whether the repair was enough.
    overview = env.client.get("/").text
    assert has(overview, f"{TESTIDS['app_damage']}:shop") and "repaired since" in overview
    assert "damaged: 2 snapshots" not in overview and f"/jobs/{repair['id']}" in overview
    # Now the data is missing (the source changed since): check offers repair snapshots.
    Path(path).write_bytes(os.urandom(300_000))
    backup(env, "shop")
    again = wait_job(env, env.client.post("/api/check", json={}, headers=h).json()["job_id"])
    assert again["state"] == "failed" and again["result"]["repairable_packs"] == []
    html = env.client.get(f"/jobs/{again['id']}").text
    assert "casbackup repair snapshots" in html and has(
        html, f"{TESTIDS['repair_button']}:snapshots"
    )
    assert has(html, f"{TESTIDS['repair_preview']}:snapshots")
    # The preview changes nothing, lists what would be left out, and offers the repair.
    body = {"what": "snapshots", "dry_run": True}
    preview = wait_job(env, env.client.post("/api/repair", json=body, headers=h).json()["job_id"])
    assert preview["state"] == "succeeded" and len(preview["result"]["repaired"]) == 2, preview
    html = env.client.get(f"/jobs/{preview['id']}").text
    assert path in html and "would be repaired (dry run: nothing changed)" in html
    assert has(html, f"{TESTIDS['repair_button']}:snapshots")
    assert not has(html, f"{TESTIDS['repair_preview']}:snapshots")
    body = {"what": "snapshots", "dry_run": False}
    fixed = wait_job(env, env.client.post("/api/repair", json=body, headers=h).json()["job_id"])
    assert fixed["state"] == "succeeded" and len(fixed["result"]["repaired"]) == 2, fixed
    assert path in env.client.get(f"/jobs/{fixed['id']}").text
    final = wait_job(env, env.client.post("/api/check", json={}, headers=h).json()["job_id"])
    assert final["state"] == "succeeded", final
    assert not has(env.client.get("/").text, f"{TESTIDS['app_damage']}:shop")


def test_repair_is_for_admins_of_the_whole_repository(env: Env) -> None:
    backup(env, "shop")
    body = {"what": "snapshots"}
    for who in ("viewer", "operator", "scoped"):
        assert env.client.post("/api/repair", json=body, headers=env.h(who)).status_code == 403
    for bad in ({"what": "packs"}, {"what": "packs", "packs": ["zz99"]},
                {"what": "packs", "packs": ["ab"]}, {"what": "everything"}):  # fmt: skip
        r = env.client.post("/api/repair", json=bad, headers=env.h("admin"))
        assert r.status_code in (400, 422), (bad, r.status_code)
    r = env.client.post("/api/repair", json=body, headers=env.h("admin"))
    done = wait_job(env, r.json()["job_id"])
    assert (
        done["state"] == "succeeded"
        and done["result"]["repaired"] == []
        and done["result"]["dry_run"]
    )


def test_repository_actions_and_their_job_pages(env: Env) -> None:
    backup(env, "shop")
    login(env, "scoped")  # whole-repository jobs are refused to app-scoped accounts
    html = env.client.get("/").text
    assert not has(html, f"{TESTIDS['repo_check']}:default")
    login(env, "operator")
    html = env.client.get("/").text
    assert has(html, f"{TESTIDS['repo_check']}:default")
    assert not has(html, f"{TESTIDS['repo_prune']}:default")
    csrf = login(env, "admin")
    assert has(env.client.get("/").text, f"{TESTIDS['repo_prune']}:default")
    h = {"X-CSRF-Token": csrf}
    check = wait_job(env, env.client.post("/api/check", json={}, headers=h).json()["job_id"])
    html = env.client.get(f"/jobs/{check['id']}").text
    assert "no problems" in html
    assert (
        "Last check" in (page := env.client.get("/").text) and f'href="/jobs/{check["id"]}"' in page
    )
    prune = env.client.post("/api/prune", json={"dry_run": True}, headers=h).json()["job_id"]
    html = env.client.get(f"/jobs/{wait_job(env, prune)['id']}").text
    assert "Nothing to prune." in html and not has(html, TESTIDS["job_run_plan"])


@pytest.mark.slow
@pytest.mark.parametrize("ci", ["", "true"])
def test_browser_tests_skip_without_a_browser_but_fail_under_ci(ci: str, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, CI=ci, CASBACKUP_TEST_CHROMIUM=str(tmp_path / "no-chromium"))
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:randomly", "-p", "no:cacheprovider",
         "tests/server/test_dashboard_browser.py"],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert f"no browser at {tmp_path / 'no-chromium'}" in out, out
    if ci:
        assert run.returncode != 0 and "cannot run under CI" in out
    else:
        assert run.returncode == 0 and "skipped" in out.lower()


def test_audit_log_filters(env: Env) -> None:
    env.client.post("/api/auth/login", json={"username": "viewer", "password": "wrong"})
    for _ in range(3):
        env.client.post("/api/backup", json={"app_name": "shop"}, headers=env.h("viewer"))
    login(env, "admin")
    denied = env.client.get("/admin", params={"outcome": "denied"}).text
    rows = re.findall(r'<tr data-testid="audit-row" class="(\w+)">', denied)
    assert len(rows) == 4 and set(rows) == {"denied"}  # 3 refused backups, 1 failed login
    by_actor = env.client.get("/admin", params={"actor": "viewer", "outcome": "denied"}).text
    assert len(re.findall(r'data-testid="audit-row"', by_actor)) == 4
    success = env.client.get("/admin", params={"outcome": "success", "actor": "admin"}).text
    assert len(re.findall(r'data-testid="audit-row"', success)) == 1  # this login
    # a user's filter takes their tokens' entries, not another user's whose name matches a LIKE
    env.service.accounts.add_user("viewerX", PW, "viewer")
    env.service.accounts.add_user("v_ewer", PW, "viewer")
    tok, _ = env.service.accounts.create_token("viewerX", "t")
    env.client.post(
        "/api/backup", json={"app_name": "shop"}, headers={"Authorization": f"Bearer {tok}"}
    )
    again = env.client.get("/admin", params={"actor": "viewer", "outcome": "denied"}).text
    assert len(re.findall(r'data-testid="audit-row"', again)) == 4
    like = env.client.get("/admin", params={"actor": "v_ewer", "outcome": "denied"}).text
    assert len(re.findall(r'data-testid="audit-row"', like)) == 0


def test_cancel_is_offered_for_own_jobs_or_to_admins(env: Env) -> None:
    mine = backup(env, "shop", who="operator")["id"]
    theirs = backup(env, "shop", who="admin")["id"]
    for job_id in (mine, theirs):  # shown as still running (the page only reads the row)
        env.service.db.execute("UPDATE jobs SET state='running', finished_at=NULL WHERE id=?",
                               (job_id,))  # fmt: skip
    login(env, "operator")
    assert has(env.client.get(f"/jobs/{mine}").text, TESTIDS["job_cancel"])
    assert not has(env.client.get(f"/jobs/{theirs}").text, TESTIDS["job_cancel"])
    login(env, "viewer")
    assert not has(env.client.get(f"/jobs/{mine}").text, TESTIDS["job_cancel"])
    login(env, "admin")
    assert has(env.client.get(f"/jobs/{mine}").text, TESTIDS["job_cancel"])


def test_app_page_shows_what_each_snapshot_stored_not_its_raw_new_bytes(env: Env) -> None:
    """With compression and database deltas the raw size of new chunks says little about the
    repository's growth: the snapshots table shows what was stored, the raw size as a tooltip."""
    snap = backup(env, "shop")["snapshot_id"]
    doc = env.client.get(f"/api/snapshots/{snap}", headers=env.h("viewer")).json()
    login(env, "viewer")
    html = env.client.get("/apps/shop").text
    row = html[html.index(f'data-testid="{TESTIDS["snapshot_row"]}:{snap[:8]}"') :]
    row = row[: row.index("</tr>")]
    stored, added = doc["summary"]["bytes_stored"], doc["summary"]["bytes_added"]
    assert f">{size_text(stored)}</td>" in row
    assert f'title="{size_text(added)} of new data before compression and deltas"' in row
    assert ">Stored</th>" in html


def test_every_template_and_asset_ships_in_the_package() -> None:
    """The dashboard is used offline: every template and asset must be package data (a file
    the globs miss works in a checkout and is missing from an installed wheel)."""
    import fnmatch
    import tomllib

    root = Path(pages.__file__).resolve().parents[3]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    globs = data["package-data"]["casbackup.server"]
    server = TEMPLATES.parent
    files = [p.relative_to(server).as_posix() for d in (TEMPLATES, STATIC) for p in d.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts]  # fmt: skip
    assert len(files) >= 14

    def matches(name: str, glob: str) -> bool:  # as setuptools globs: "*" stops at a "/"
        parts, pattern = name.split("/"), glob.split("/")
        return len(parts) == len(pattern) and all(map(fnmatch.fnmatchcase, parts, pattern))

    missed = [f for f in files if not any(matches(f, g) for g in globs)]
    assert not missed, f"not in [tool.setuptools.package-data]: {missed}"


def test_every_form_sends_only_fields_its_route_knows() -> None:
    """Request bodies refuse unknown fields (server/body.py): a form field that its route's
    model does not name would make that form fail. Reads each template's data-api forms."""
    import importlib
    import typing
    from html.parser import HTMLParser

    from fastapi.routing import APIRoute

    bodies: dict[tuple[str, str], type] = {}
    for module in ("admin", "auth", "jobs", "maintenance", "snapshots", "system"):
        for route in importlib.import_module(f"casbackup.server.routes_{module}").router.routes:
            if isinstance(route, APIRoute) and route.dependant.body_params:
                model = route.dependant.body_params[0].field_info.annotation
                if not hasattr(model, "model_fields"):  # the seed's `BackupRequest = None`
                    model = next(a for a in typing.get_args(model) if hasattr(a, "model_fields"))
                for method in route.methods:
                    bodies[(method, re.sub(r"\{[^}]+\}", "X", route.path))] = model

    forms: list[tuple[str, str, str, set[str]]] = []

    class Forms(HTMLParser):
        inside = False

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            a = dict(attrs)
            if tag == "form":
                api = a.get("data-api")
                self.inside = bool(api)
                if api:  # the API path with each {{ ... }} as one segment
                    path = re.sub(r"\{\{[^}]*\}\}", "X", api)
                    forms.append((self.name, (a.get("data-method") or "POST").upper(), path, set()))
            elif tag in ("input", "select", "textarea") and self.inside and a.get("name"):
                forms[-1][3].add(str(a["name"]))

        def handle_endtag(self, tag: str) -> None:
            if tag == "form":
                self.inside = False

    checked = 0
    for template in sorted(TEMPLATES.glob("*.html")):
        parser = Forms()
        parser.name = template.name  # type: ignore[attr-defined]
        parser.feed(template.read_text())
    for name, method, path, fields in forms:
        model = bodies.get((method, path))
        sent = fields - {"csrf_token"}  # dash.js sends it as a header
        if model is None:
            assert not sent, (name, method, path, sent)
            continue
        assert sent <= set(model.model_fields), (name, path, sent - set(model.model_fields))
        checked += 1
    assert checked >= 15


def test_names_that_are_not_utf8_browse_and_download(env: Env) -> None:
    """A file and a folder whose names are not UTF-8: the browser reaches them by the API's
    ``path_b64`` (their display path, with U+FFFD, names nothing), downloads the exact bytes,
    and restores them by ``path_b64`` too."""
    shop = env.tmp / "shop"
    (Path(os.fsdecode(bytes(shop) + b"/bad-\xff.bin"))).write_bytes(b"odd bytes\n")
    folder = Path(os.fsdecode(bytes(shop) + b"/dir-\xfe"))
    folder.mkdir()
    (folder / "inner.txt").write_text("inner\n")
    snap = backup(env, "shop")["snapshot_id"]
    login(env, "admin")

    def follow(html: str, testid: str) -> str:
        href = re.search(rf'href="([^"]+)" data-testid="{re.escape(testid)}"', html)
        assert href, testid
        link = href.group(1).replace("&amp;", "&")
        return f"/snapshots/{snap}{link}" if link.startswith("?") else link  # entry links

    top = env.client.get(f"/snapshots/{snap}", params={"path": str(shop)}).text
    link = follow(top, "entry-link:bad-\ufffd.bin")
    assert "path_b64=" in link
    page = env.client.get(link)
    assert page.status_code == 200 and "10 bytes" in page.text, page.text[-500:]
    got = env.client.get(follow(page.text, "download:bad-\ufffd.bin"))
    assert got.status_code == 200 and got.content == b"odd bytes\n"
    assert has(page.text, TESTIDS["file_meta"]) and has(page.text, TESTIDS["restore_button"])
    hidden = re.search(r'<input type="hidden" name="path_b64" value="([^"]+)">', page.text)
    assert hidden and 'name="path"' not in page.text  # the display path names nothing
    csrf = login(env, "admin")
    # what dash.js sends for the form: its fields as JSON, the CSRF token as a header
    body = {"path_b64": hidden.group(1), "in_place": False, "target": "odd", "overwrite": False}
    r = env.client.post(f"/api/snapshots/{snap}/restore", json=body,
                        headers={"X-CSRF-Token": csrf})  # fmt: skip
    assert wait_job(env, r.json()["job_id"])["state"] == "succeeded"
    (restored,) = [p for p in (env.tmp / "recovery" / "odd").rglob("*") if p.is_file()]
    assert os.fsencode(restored.name) == b"bad-\xff.bin"

    inside = env.client.get(follow(top, "entry-link:dir-\ufffd"))
    assert inside.status_code == 200 and has(inside.text, "entry:inner.txt")
    crumb = re.findall(r'<a href="(/snapshots/[^"]+)">dir-\ufffd</a>', inside.text)
    assert crumb and "path_b64=" in crumb[0]
    inner = env.client.get(follow(inside.text, "entry-link:inner.txt"))
    assert inner.status_code == 200 and "6 bytes" in inner.text
    assert env.client.get(follow(inner.text, "download:inner.txt")).content == b"inner\n"
    # the folder's tar by path_b64, and ".." back up to the application's folder
    assert env.client.get(follow(top, "download:dir-\ufffd")).status_code == 200
    up = re.search(r'<a href="([^"]+)">\.\.</a>', inside.text)
    assert up and env.client.get(up.group(1).replace("&amp;", "&")).text.count("entry-link:a.txt")


def test_progress_names_what_it_counts(env: Env) -> None:
    """Found on a real `serve`: a check reading 29 packs showed 'read data · 29/29 files'."""
    backup(env, "shop")
    csrf = login(env, "admin")
    job = env.client.post("/api/check", json={"read_data": True}, headers={"X-CSRF-Token": csrf})
    check = wait_job(env, job.json()["job_id"])
    assert check["progress"]["unit"] == "pack", check["progress"]
    html = env.client.get(f"/jobs/{check['id']}").text
    n = check["progress"]["files_total"]
    assert f"read data · {n}/{n} pack" in html and f"{n}/{n} files" not in html


def test_a_backup_the_service_lost_counts_on_the_day_it_ran(env: Env) -> None:
    # A nightly backup cut short by a power cut, the machine back three days later: the job
    # page said it ran for 3 days and the 30-day strip showed the failure on the day the
    # service came back, none on the night it ran.
    now = dt.datetime.now(dt.UTC)
    night = now - dt.timedelta(days=3)
    cur = env.service.db.execute(
        "INSERT INTO jobs (kind, app, repo, params, state, created_at, started_at, trigger)"
        " VALUES ('backup', 'shop', 'default', '{}', 'running', ?, ?, 'scheduler')",
        (night.timestamp(), night.timestamp()),
    )
    env.service.jobs.recover_interrupted()  # what the next start does
    job = env.client.get(f"/api/jobs/{cur.lastrowid}", headers=env.h("viewer")).json()
    assert job["state"] == "interrupted" and job["duration_s"] is None, job
    login(env, "viewer")
    html = env.client.get("/").text
    strip = html[html.index(f'data-testid="{TESTIDS["strip"]}:shop"') :]
    assert f'title="{night.date().isoformat()}: failed"' in strip
    assert f'title="{now.date().isoformat()}: none"' in strip
