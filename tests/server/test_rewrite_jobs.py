"""Taking files out of an application's snapshots from the service (`POST /api/rewrite`,
`casbackup rewrite`'s face) and from the dashboard: preview, rewrite, then the prune that
leaves no unused byte (`max_unused` 0), after which the data is gone from the storage."""

from __future__ import annotations

from casbackup.testing.fixtures import open_repo
from tests.server.conftest import Env
from tests.server.test_dashboard import has, login
from tests.server.test_jobs import wait_job
from tests.server.test_snapshots import backup


def _ids(env: Env) -> list[str]:
    return [
        s["id"] for s in env.client.get("/api/snapshots?app=shop", headers=env.h("admin")).json()
    ]


def test_preview_rewrite_and_prune_take_a_file_out_for_good(env: Env) -> None:
    backup(env, "shop")
    backup(env, "shop")
    secret = str(env.tmp / "shop" / "sub")
    before = _ids(env)
    csrf = login(env, "admin")
    page = env.client.get("/apps/shop").text
    assert has(page, "rewrite-form")
    h = {"X-CSRF-Token": csrf}
    r = env.client.post("/api/rewrite", json={"app_name": "shop", "excludes": [secret]}, headers=h)
    assert r.status_code == 202, r.text
    preview = wait_job(env, r.json()["job_id"])
    assert preview["state"] == "succeeded", preview
    assert preview["result"]["dry_run"] is True and len(preview["result"]["rewritten"]) == 2
    assert preview["result"]["rewritten"][0]["removed"] == [secret]
    assert _ids(env) == before  # a preview changes nothing
    html = env.client.get(f"/jobs/{preview['id']}").text
    assert has(html, "rewrite-button") and secret in html
    # The button sends the same patterns back: its hidden value is the JSON list, intact
    # inside the HTML attribute (a double-quoted one was cut at the first quote).
    import html as html_lib
    import json
    import re

    found = re.search(r"name=\"excludes\" value='([^']*)'", html)
    assert found and json.loads(html_lib.unescape(found.group(1))) == [secret]
    body = {"app_name": "shop", "excludes": [secret], "forget": True, "dry_run": False}
    done = wait_job(env, env.client.post("/api/rewrite", json=body, headers=h).json()["job_id"])
    assert done["state"] == "succeeded", done
    after = env.client.get("/api/snapshots?app=shop", headers=env.h("admin")).json()
    assert len(after) == 2 and all("rewritten" in s["tags"] for s in after)
    assert not set(before) & {s["id"] for s in after}
    html = env.client.get(f"/jobs/{done['id']}").text
    assert has(html, "rewrite-prune")
    # The blog application's snapshots are not touched.
    blog = env.client.get("/api/snapshots?app=blog", headers=env.h("admin")).json()
    assert all("rewritten" not in s["tags"] for s in blog)
    body = {"dry_run": False, "max_unused": 0}
    pruned = wait_job(env, env.client.post("/api/prune", json=body, headers=h).json()["job_id"])
    assert pruned["state"] == "succeeded" and pruned["result"]["max_unused"] == 0, pruned
    repo = open_repo(env.repo)
    try:
        data = (env.tmp / "shop" / "sub" / "b.bin").read_bytes()
        stored = [fid for fid in repo.snapshot_ids() if repo.load_snapshot(fid).app == "shop"]
        assert len(stored) == 2
        for fid in stored:
            paths = {p for p, _node in repo.walk(repo.load_snapshot(fid).root)}
            assert secret.encode() not in paths and (secret + "/b.bin").encode() not in paths
        assert repo.cache.get(repo.blob_id(data)) is None  # b.bin is one chunk: gone
    finally:
        repo.close()
    check = wait_job(env, env.client.post("/api/check", json={}, headers=h)
                     .json()["job_id"])  # fmt: skip
    assert check["state"] == "succeeded", check


def test_bad_rewrite_requests_are_refused_before_a_job(env: Env) -> None:
    backup(env, "shop")
    csrf = login(env, "admin")
    h = {"X-CSRF-Token": csrf}
    for body, code in (
        ({"app_name": "shop", "excludes": []}, 422),
        ({"app_name": "shop", "excludes": ["[z-a]"]}, 400),
        ({"app_name": "shop", "excludes": ["x" * 5000]}, 400),
        ({"app_name": "nope", "excludes": ["*.pem"]}, 404),
        ({"app_name": "shop", "excludes": "*.pem"}, 422),
    ):
        r = env.client.post("/api/rewrite", json=body, headers=h)
        assert r.status_code == code, (body, r.status_code, r.text)
    r = env.client.post("/api/rewrite", json={"app_name": "shop", "excludes": ["*.pem"]},
                        headers=env.h("operator"))  # fmt: skip
    assert r.status_code == 403
    login(env, "operator")
    assert not has(env.client.get("/apps/shop").text, "rewrite-form")
