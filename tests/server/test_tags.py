"""Tag changes through the API (`POST /api/snapshots/{id}/tags`, `casbackup tag`'s face) and
the snapshot page's tag form: pinning a snapshot against retention from the service."""

from __future__ import annotations

from tests.server.conftest import Env
from tests.server.test_jobs import wait_job
from tests.server.test_snapshots import backup


def _tag(env: Env, snap: str, body: dict, who: str = "admin") -> dict:  # type: ignore[type-arg]
    r = env.client.post(f"/api/snapshots/{snap}/tags", json=body, headers=env.h(who))
    assert r.status_code == 202, r.text
    doc = wait_job(env, r.json()["job_id"])
    assert doc["state"] == "succeeded", doc
    return doc["result"]  # type: ignore[no-any-return]


def test_tags_change_and_the_snapshot_keeps_its_history(env: Env) -> None:
    snap = str(backup(env, "shop")["snapshot_id"])
    r = env.client.post(f"/api/snapshots/{snap}/verify", headers=env.h("operator"))
    assert wait_job(env, r.json()["job_id"])["state"] == "succeeded"
    result = _tag(env, snap, {"add": ["release", "audit"]})
    assert result["changed"] is True and result["old_id"] == snap
    new = result["snapshot_id"]
    assert new != snap and result["tags"] == ["release", "audit"]
    # The old id (in job logs, links, notes) still finds it; its verification stayed.
    d = env.client.get(f"/api/snapshots/{snap}", headers=env.h("viewer")).json()
    assert d["id"] == new and d["original"] == snap and d["tags"] == ["release", "audit"]
    assert d["verification"]["ok"] is True and len(d["verifications"]) == 1
    listed = env.client.get("/api/snapshots?app=shop&tag=release", headers=env.h("viewer")).json()
    assert [s["id"] for s in listed] == [new]
    assert _tag(env, new, {"set": []})["tags"] == []
    assert _tag(env, snap, {"remove": ["nothing"]})["changed"] is False


def test_bad_tag_requests_are_refused_before_a_job(env: Env) -> None:
    snap = str(backup(env, "shop")["snapshot_id"])
    before = len(env.client.get("/api/jobs", headers=env.h("admin")).json())
    for body in ({}, {"set": ["a"], "add": ["b"]}, {"add": ["a,b"]}, {"add": ["\n"]},
                 {"add": [""]}, {"add": "release"}):  # fmt: skip
        r = env.client.post(f"/api/snapshots/{snap}/tags", json=body, headers=env.h("admin"))
        assert r.status_code in (400, 422), (body, r.status_code, r.text)
        assert "Traceback" not in r.text
    r = env.client.post("/api/snapshots/ffffffff/tags", json={"add": ["x"]}, headers=env.h("admin"))
    assert r.status_code == 404
    r = env.client.post(f"/api/snapshots/{snap}/tags", json={"add": ["x"]},
                        headers=env.h("operator"))  # fmt: skip
    assert r.status_code == 403
    assert len(env.client.get("/api/jobs", headers=env.h("admin")).json()) == before


def test_the_snapshot_page_offers_the_tag_form_to_admins_only(env: Env) -> None:
    snap = str(backup(env, "shop")["snapshot_id"])
    page = env.client.get(f"/snapshots/{snap}", headers=env.h("admin")).text
    assert 'data-testid="tag-form"' in page and f"/api/snapshots/{snap}/tags" in page
    page = env.client.get(f"/snapshots/{snap}", headers=env.h("operator")).text
    assert 'data-testid="tag-form"' not in page
