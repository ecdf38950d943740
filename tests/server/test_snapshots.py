"""Snapshots through the API: list, detail, browse, download (Range, tar), restore, verify,
check, forget and prune plans."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import Env
from tests.server.test_jobs import wait_job


def backup(env: Env, app: str, who: str = "operator") -> dict[str, Any]:
    r = env.client.post("/api/backup", json={"app_name": app}, headers=env.h(who))
    assert r.status_code == 202, r.text
    doc = wait_job(env, r.json()["job_id"])
    assert doc["state"] == "succeeded", doc
    return doc


@pytest.fixture
def snap(env: Env) -> str:
    return str(backup(env, "shop")["snapshot_id"])


def test_list_filter_and_detail(env: Env, snap: str) -> None:
    backup(env, "blog")
    c, h = env.client, env.h("viewer")
    all_snaps = c.get("/api/snapshots", headers=h).json()
    assert {s["app"] for s in all_snaps} == {"shop", "blog"}
    assert [s["id"] for s in c.get("/api/snapshots?app=shop", headers=h).json()] == [snap]
    assert c.get("/api/snapshots?tag=nope", headers=h).json() == []
    assert c.get("/api/snapshots?since=2999-01-01T00:00:00", headers=h).json() == []
    assert len(c.get("/api/snapshots?until=2999-01-01T00:00:00Z", headers=h).json()) == 2
    assert [s["app"] for s in c.get("/api/snapshots", headers=env.h("scoped")).json()] == ["shop"]
    d = c.get(f"/api/snapshots/{snap[:10]}", headers=h).json()
    assert d["id"] == snap and d["summary"]["files_total"] == 2 and d["verifications"] == []
    latest = c.get("/api/snapshots/latest?app=shop", headers=h).json()
    assert latest["id"] == snap
    blog = next(s["id"] for s in all_snaps if s["app"] == "blog")
    assert c.get(f"/api/snapshots/{blog}", headers=env.h("scoped")).status_code == 404
    assert c.get("/api/snapshots/zzzz", headers=h).status_code == 404


def test_browse_and_download_byte_identical(env: Env, snap: str) -> None:
    c = env.client
    src = env.tmp / "shop"
    top = c.get(f"/api/snapshots/{snap}/tree", headers=env.h("viewer")).json()
    assert [e["name"] for e in top["entries"]] == [src.parts[1]]
    listing = c.get(
        f"/api/snapshots/{snap}/tree", params={"path": f"{src}/sub"}, headers=env.h("viewer")
    ).json()
    assert [(e["name"], e["type"], e["size"]) for e in listing["entries"]] == [
        ("b.bin", "file", 300_000)
    ]
    path = f"{src}/sub/b.bin"
    assert (
        c.get(
            f"/api/snapshots/{snap}/download", params={"path": path}, headers=env.h("viewer")
        ).status_code
        == 403
    )
    r = c.get(f"/api/snapshots/{snap}/download", params={"path": path}, headers=env.h("operator"))
    data = (src / "sub" / "b.bin").read_bytes()
    assert r.status_code == 200 and r.content == data
    assert r.headers["content-length"] == str(len(data)) and r.headers["accept-ranges"] == "bytes"
    assert "b.bin" in r.headers["content-disposition"]
    r = c.get(f"/api/snapshots/{snap}/download", params={"path": path},
              headers={**env.h("operator"), "Range": "bytes=1000-1999"})  # fmt: skip
    assert r.status_code == 206 and r.content == data[1000:2000]
    assert r.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    r = c.get(f"/api/snapshots/{snap}/download", params={"path": path},
              headers={**env.h("operator"), "Range": "bytes=-10"})  # fmt: skip
    assert r.status_code == 206 and r.content == data[-10:]
    for bad in ("bytes=999999999-", "bytes=5-2", "bytes=x-y"):
        r = c.get(f"/api/snapshots/{snap}/download", params={"path": path},
                  headers={**env.h("operator"), "Range": bad})  # fmt: skip
        assert r.status_code == 416, bad


def test_folder_downloads_as_tar(env: Env, snap: str) -> None:
    src = env.tmp / "shop"
    r = env.client.get(
        f"/api/snapshots/{snap}/download", params={"path": str(src)}, headers=env.h("operator")
    )
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        names = sorted(tar.getnames())
        assert names == ["shop", "shop/a.txt", "shop/sub", "shop/sub/b.bin"]
        member = tar.extractfile("shop/sub/b.bin")
        assert member is not None and member.read() == (src / "sub" / "b.bin").read_bytes()


def test_path_traversal_and_missing_paths(env: Env, snap: str) -> None:
    c, h = env.client, env.h("operator")
    for bad in ("/../../etc/passwd", "../x", f"{env.tmp}/shop/../blog"):
        for route in ("tree", "download"):
            r = c.get(f"/api/snapshots/{snap}/{route}", params={"path": bad}, headers=h)
            assert r.status_code == 400 and "'..'" in r.json()["detail"], (route, bad)
    r = c.get(f"/api/snapshots/{snap}/download", params={"path": "/no/such/file"}, headers=h)
    assert r.status_code == 404 and "Traceback" not in r.text
    r = c.get(f"/api/snapshots/{snap}/tree", params={"path": f"{env.tmp}/shop/a.txt"}, headers=h)
    assert r.status_code == 404


def test_restore_goes_into_the_recovery_directory(env: Env, snap: str) -> None:
    c = env.client
    r = c.post(
        f"/api/snapshots/{snap}/restore",
        json={"path": f"{env.tmp}/shop/sub"},
        headers=env.h("operator"),
    )
    assert r.status_code == 202, r.text
    doc = wait_job(env, r.json()["job_id"])
    assert doc["state"] == "succeeded", doc
    restored = list((env.tmp / "recovery").rglob("b.bin"))
    assert (
        len(restored) == 1
        and restored[0].read_bytes() == (env.tmp / "shop" / "sub" / "b.bin").read_bytes()
    )
    # again into the same folder: it stops at the existing file, in the API's words
    r = c.post(f"/api/snapshots/{snap}/restore", json={"path": f"{env.tmp}/shop/sub"},
               headers=env.h("operator"))  # fmt: skip
    again = wait_job(env, r.json()["job_id"])
    assert again["state"] == "failed" and "b.bin exists in the target" in again["error"], again
    assert "'overwrite': true" in again["error"] and "--overwrite" not in again["error"], again
    for bad in ("../elsewhere", "/tmp/x", ".hidden"):
        r = c.post(
            f"/api/snapshots/{snap}/restore", json={"target": bad}, headers=env.h("operator")
        )
        assert r.status_code == 400, bad
    assert (
        c.post(f"/api/snapshots/{snap}/restore", json={}, headers=env.h("viewer")).status_code
        == 403
    )


def test_verify_then_detail_shows_it(env: Env, snap: str) -> None:
    r = env.client.post(f"/api/snapshots/{snap}/verify", headers=env.h("operator"))
    doc = wait_job(env, r.json()["job_id"])
    assert doc["state"] == "succeeded" and doc["result"]["ok"] is True, doc
    d = env.client.get(f"/api/snapshots/{snap}", headers=env.h("viewer")).json()
    assert d["verification"]["ok"] is True and len(d["verifications"]) == 1
    assert (
        env.client.get("/api/verifications?app=shop", headers=env.h("viewer")).json()[0]["ok"]
        is True
    )


def test_check_forget_and_prune_plans(env: Env, snap: str) -> None:
    second = backup(env, "shop")["snapshot_id"]
    c = env.client
    doc = wait_job(
        env,
        c.post("/api/check", json={"read_data": True}, headers=env.h("operator")).json()["job_id"],
    )
    assert doc["state"] == "succeeded" and doc["result"]["ok"], doc
    assert (
        c.post(
            "/api/check", json={"read_data_subset": "lots"}, headers=env.h("operator")
        ).status_code
        == 400
    )
    assert (
        c.post("/api/forget", json={"app_name": "shop"}, headers=env.h("operator")).status_code
        == 403
    )
    plan = wait_job(
        env,
        c.post("/api/forget", json={"app_name": "shop"}, headers=env.h("admin")).json()["job_id"],
    )
    group = plan["result"]["plan"][0]
    assert [k["id"] for k in group["keep"]] == [second] and [x["id"] for x in group["remove"]] == [
        snap
    ]
    assert len(c.get("/api/snapshots?app=shop", headers=env.h("viewer")).json()) == 2  # a plan only
    done = wait_job(env, c.post("/api/forget", json={"app_name": "shop", "dry_run": False},
                                headers=env.h("admin")).json()["job_id"])  # fmt: skip
    assert done["result"]["removed"] == [snap]
    assert [s["id"] for s in c.get("/api/snapshots?app=shop", headers=env.h("viewer")).json()] == [
        second
    ]
    pruned = wait_job(
        env, c.post("/api/prune", json={"dry_run": False}, headers=env.h("admin")).json()["job_id"]
    )
    assert pruned["state"] == "succeeded", pruned
    doc = wait_job(
        env, c.post("/api/check", json={"read_data": True}, headers=env.h("admin")).json()["job_id"]
    )
    assert doc["state"] == "succeeded", doc
    assert c.post("/api/prune", json={}, headers=env.h("scoped")).status_code == 403


def test_recover_dry_run_returns_the_plan(env: Env, snap: str, tmp_path: Path) -> None:
    c = env.client
    r = c.post(
        "/api/disaster-recovery",
        json={"app_name": "shop", "allow_unverified": True},
        headers=env.h("admin"),
    )
    doc = wait_job(env, r.json()["job_id"])
    assert doc["state"] == "succeeded", doc
    plan = doc["result"]["plan"]
    assert doc["result"]["dry_run"] and plan["snapshot"] == snap and plan["files"]
    assert not (env.tmp / "recovery" / "shop").exists()
    assert (
        c.post(
            "/api/disaster-recovery", json={"app_name": "shop"}, headers=env.h("operator")
        ).status_code
        == 403
    )


def test_recover_of_an_unverified_snapshot_says_what_to_do_in_the_apis_words(
    env: Env, snap: str
) -> None:
    r = env.client.post("/api/disaster-recovery", json={"app_name": "shop"}, headers=env.h("admin"))
    doc = wait_job(env, r.json()["job_id"])
    assert doc["state"] == "failed" and doc["exit_code"] == 30, doc
    error = doc["error"]
    assert "never verified" in error and f"verify snapshot {snap[:8]}" in error, error
    assert "'allow_unverified'" in error and "--" not in error, error  # no CLI options


def test_forget_without_retention_is_refused_at_once(env: Env, snap: str) -> None:
    before = len(env.client.get("/api/jobs", headers=env.h("admin")).json())
    r = env.client.post("/api/forget", json={"app_name": "blog"}, headers=env.h("admin"))
    assert r.status_code == 400 and "no retention" in r.json()["detail"], r.text
    assert len(env.client.get("/api/jobs", headers=env.h("admin")).json()) == before  # no job


def test_metrics(env: Env, snap: str) -> None:
    r = env.client.post(f"/api/snapshots/{snap}/verify", headers=env.h("operator"))
    wait_job(env, r.json()["job_id"])
    backup(env, "blog")
    assert env.client.get("/metrics").status_code == 401
    r = env.client.get("/metrics", headers=env.h("viewer"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'casbackup_last_backup_timestamp_seconds{app="shop"}' in text
    assert 'casbackup_last_verification_ok{app="shop"} 1.0' in text
    assert 'casbackup_repository_size_bytes{repository="default"}' in text
    assert 'casbackup_jobs{app="shop",kind="backup",state="succeeded"} 1.0' in text
    assert 'casbackup_last_backup_files{app="shop"} 2.0' in text
    scoped = env.client.get("/metrics", headers=env.h("scoped")).text
    assert 'app="shop"' in scoped and 'app="blog"' not in scoped and "repository_size" not in scoped


def test_recover_for_real_writes_files_and_a_report(env: Env, snap: str) -> None:
    c = env.client
    wait_job(
        env, c.post(f"/api/snapshots/{snap}/verify", headers=env.h("operator")).json()["job_id"]
    )
    r = c.post(
        "/api/disaster-recovery",
        json={"app_name": "shop", "dry_run": False},
        headers=env.h("admin"),
    )
    doc = wait_job(env, r.json()["job_id"])
    assert doc["state"] == "succeeded", doc
    report = doc["result"]["report"]
    assert report and doc["result"]["report_files"]
    restored = list((env.tmp / "recovery" / "shop").rglob("b.bin"))
    assert (
        len(restored) == 1
        and restored[0].read_bytes() == (env.tmp / "shop" / "sub" / "b.bin").read_bytes()
    )


def test_unlock_job_removes_only_stale_locks(env: Env) -> None:
    import json
    import time as _time

    from casbackup.repo.ids import Kind
    from casbackup.repo.lock import list_locks
    from casbackup.testing.fixtures import open_repo

    repo = open_repo(env.repo)
    live = repo.lock(command="someone alive")
    try:
        (info,) = list_locks(repo)
        doc = json.loads(repo.get_encrypted(info.name, Kind.LOCK))
        # The lock a process on another host left a day ago (written as the lock module does).
        doc.update(host="elsewhere", pid=1, time=_time.time() - 86400, command="dead one")
        repo.put_encrypted(
            "locks/" + "f" * 32, Kind.LOCK, json.dumps(doc).encode()
        )  # as _write names them
        r = env.client.post("/api/unlock", json={}, headers=env.h("admin"))
        job = wait_job(env, r.json()["job_id"])
        assert job["state"] == "succeeded", job
        assert len(job["result"]["removed"]) == 1 and "dead one" in job["result"]["removed"][0]
        assert [i.name for i in list_locks(repo)] == [info.name]  # the live one stays
    finally:
        live.release()
        repo.close()


def test_folder_downloads_as_zip(env: Env) -> None:
    """``format=zip``: the same members as the tar, byte-identical contents, a symbolic link
    kept as a link (Unix mode in the external attributes), streamed in several pieces."""
    import stat
    import zipfile

    src = env.tmp / "shop"
    (src / "link").symlink_to("sub/b.bin")
    big = os.urandom(3 << 20)  # more than one read block
    (src / "sub" / "big.bin").write_bytes(big)
    snap = str(backup(env, "shop")["snapshot_id"])
    with env.client.stream(
        "GET", f"/api/snapshots/{snap}/download",
        params={"path": str(src), "format": "zip"}, headers=env.h("operator"),
    ) as r:  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
        assert r.headers["content-disposition"].startswith('attachment; filename="shop.zip"')
        pieces = list(r.iter_raw())
    assert len(pieces) > 3  # streamed, not built whole first
    with zipfile.ZipFile(io.BytesIO(b"".join(pieces))) as zf:
        assert zf.testzip() is None  # every CRC matches
        assert sorted(zf.namelist()) == [
            "shop/", "shop/a.txt", "shop/link", "shop/sub/", "shop/sub/b.bin", "shop/sub/big.bin"
        ]  # fmt: skip
        assert zf.read("shop/sub/b.bin") == (src / "sub" / "b.bin").read_bytes()
        assert zf.read("shop/sub/big.bin") == big
        assert zf.read("shop/a.txt") == b"hello\n"
        link = zf.getinfo("shop/link")
        assert stat.S_ISLNK(link.external_attr >> 16) and zf.read(link) == b"sub/b.bin"
        assert zf.getinfo("shop/sub/").is_dir()
    bad = env.client.get(f"/api/snapshots/{snap}/download",
                         params={"path": str(src), "format": "rar"}, headers=env.h("operator"))  # fmt: skip
    assert bad.status_code in (400, 422)


def test_zip_uses_zip64_for_large_members(env: Env, snap: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Members past zip's 4 GiB limit get ZIP64 records; the limit is lowered here so that the
    fixture's 300 KB file counts as large."""
    import struct
    import zipfile

    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 100_000)
    src = env.tmp / "shop"
    r = env.client.get(f"/api/snapshots/{snap}/download",
                       params={"path": f"{src}/sub", "format": "zip"}, headers=env.h("operator"))  # fmt: skip
    assert r.status_code == 200
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        info = zf.getinfo("sub/b.bin")
        assert zf.read(info) == (src / "sub" / "b.bin").read_bytes()
        # the local header's extra field starts with the ZIP64 tag (0x0001)
        offset = info.header_offset
        name_len, extra_len = struct.unpack_from("<HH", r.content, offset + 26)
        extra = r.content[offset + 30 + name_len : offset + 30 + name_len + extra_len]
        assert struct.unpack_from("<H", extra)[0] == 1


def test_non_utf8_names_browse_and_download(env: Env) -> None:
    """A folder and a file whose names hold b"\\xff": the listing gives each a path_b64 (the
    exact bytes) beside a display name; browsing into the folder and downloading the file
    with it work, and the tar keeps the original bytes."""
    import base64

    src = env.tmp / "shop"
    odd_dir = os.path.join(os.fsencode(src), b"odd-\xff")
    os.mkdir(odd_dir)
    data = os.urandom(70_000)
    with open(os.path.join(odd_dir, b"f\xffile"), "wb") as f:
        f.write(data)
    snap = str(backup(env, "shop")["snapshot_id"])
    c, h = env.client, env.h("operator")
    top = c.get(f"/api/snapshots/{snap}/tree", params={"path": str(src)}, headers=h)
    assert top.status_code == 200, top.text
    odd = next(e for e in top.json()["entries"] if e["name"].startswith("odd-"))
    assert odd["name"] == "odd-\ufffd" and odd["type"] == "dir"
    assert base64.urlsafe_b64decode(odd["path_b64"]) == odd_dir
    plain = next(e for e in top.json()["entries"] if e["name"] == "a.txt")
    assert plain["path_b64"] is None  # valid UTF-8: the plain path is exact
    inside = c.get(f"/api/snapshots/{snap}/tree", params={"path_b64": odd["path_b64"]}, headers=h)
    assert inside.status_code == 200, inside.text
    assert inside.json()["path_b64"] == odd["path_b64"]
    (entry,) = inside.json()["entries"]
    assert base64.urlsafe_b64decode(entry["path_b64"]) == odd_dir + b"/f\xffile"
    r = c.get(f"/api/snapshots/{snap}/download", params={"path_b64": entry["path_b64"]}, headers=h)
    assert r.status_code == 200 and r.content == data
    assert "filename*=UTF-8''f%EF%BF%BDile" in r.headers["content-disposition"]
    r = c.get(f"/api/snapshots/{snap}/download", params={"path_b64": odd["path_b64"]}, headers=h)
    with tarfile.open(
        fileobj=io.BytesIO(r.content), encoding="utf-8", errors="surrogateescape"
    ) as tar:
        member = tar.extractfile(os.fsdecode(b"odd-\xff/f\xffile"))
        assert member is not None and member.read() == data
    for bad in ({"path_b64": "!!"}, {"path_b64": "Lw"}, {"path_b64": "Lw==", "path": "/"}):
        assert c.get(f"/api/snapshots/{snap}/tree", params=bad, headers=h).status_code == 400
    assert c.get(f"/api/snapshots/{snap}/download", headers=h).status_code == 400
    traversal = base64.urlsafe_b64encode(b"/a/../etc").decode()
    assert (
        c.get(f"/api/snapshots/{snap}/tree", params={"path_b64": traversal}, headers=h).status_code
        == 400
    )


def test_restore_by_path_b64(env: Env) -> None:
    """Restore took only `path`: a folder whose name is not UTF-8 could not be named, and a
    `path_b64` beside it was ignored, so the whole snapshot was restored instead."""
    import base64

    src = env.tmp / "shop"
    odd_dir = os.path.join(os.fsencode(src), b"caf\xe9")
    os.mkdir(odd_dir)
    with open(os.path.join(odd_dir, b"b\xffx.txt"), "wb") as f:
        f.write(b"odd\n")
    snap = str(backup(env, "shop")["snapshot_id"])
    c, h = env.client, env.h("operator")
    b64 = base64.urlsafe_b64encode(odd_dir).decode()
    url = f"/api/snapshots/{snap}/restore"
    r = c.post(url, json={"path_b64": b64, "target": "odd"}, headers=h)
    assert r.status_code == 202, r.text
    # The name as a reader can tell it apart, as the job's params show it: not U+FFFD.
    assert r.json()["message"].endswith("caf\\xe9 queued"), r.json()["message"]
    assert r.json()["job"]["params"]["path"].endswith("caf\\xe9")
    job = wait_job(env, r.json()["job_id"])
    assert job["state"] == "succeeded", job
    restored = [p for p in (env.tmp / "recovery" / "odd").rglob("*") if p.is_file()]
    # only that folder's contents (not the whole snapshot), names' bytes kept
    assert [os.fsencode(p.relative_to(env.tmp / "recovery" / "odd")) for p in restored] == [
        b"b\xffx.txt"
    ]
    assert restored[0].read_bytes() == b"odd\n"
    traversal = base64.urlsafe_b64encode(b"/a/../etc").decode()
    for bad, status in [
        ({"path_b64": "!!"}, 400),
        ({"path_b64": b64, "path": "/"}, 400),
        ({"path_b64": traversal}, 400),
        ({"path_b64": b64, "overwite": True}, 422),  # a field it does not know: refused
    ]:
        r = c.post(url, json={**bad, "target": "bad"}, headers=h)
        assert r.status_code == status, (bad, r.text)
    assert not (env.tmp / "recovery" / "bad").exists()


def test_names_with_control_characters_download(env: Env) -> None:
    """A stored name may hold a newline, a tab, quotes or a backslash (anything but / and NUL):
    the download's Content-Disposition keeps its quoted filename printable ASCII (a newline
    there made the HTTP server drop the connection) and carries the exact name in filename*."""
    import re
    from urllib.parse import unquote

    from casbackup.server.routes_snapshots import _disposition

    src = env.tmp / "shop"
    name = 'new\nline\t"q"\\b\x7f.txt'
    data = os.urandom(5_000)
    (src / name).write_bytes(data)
    snap = str(backup(env, "shop")["snapshot_id"])
    r = env.client.get(f"/api/snapshots/{snap}/download", params={"path": f"{src}/{name}"},
                       headers=env.h("operator"))  # fmt: skip
    assert r.status_code == 200 and r.content == data
    header = r.headers["content-disposition"]
    assert all(" " <= c <= "~" for c in header), header
    quoted = re.search(r'filename="([^"]*)"', header)
    assert quoted is not None and quoted.group(1) == "new_line__q__b_.txt"
    assert unquote(header.split("filename*=UTF-8''")[1]) == name
    for hostile in ("\r\nSet-Cookie: x=1", "\x00", "é.txt", ""):
        value = _disposition(hostile)
        assert all(" " <= c <= "~" for c in value) and "\r" not in value and "\n" not in value
