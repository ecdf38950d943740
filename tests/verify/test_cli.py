"""`verify`, `snapshots` and `recover` as a user runs them (real subprocesses, exact exit codes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from casbackup.testing.fixtures import run_cli
from tests.verify.apps import backup, corrupt_file, make_app


def test_verify_damage_and_recover_choice(repo, repo_path: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app, db = make_app(tmp_path)
    first = backup(repo, app, [db])
    (app / "data" / "new.bin").write_bytes(os.urandom(30_000))
    second = backup(repo, app, [db])
    corrupt_file(repo, repo_path, second, f"{app}/data/new.bin")
    repo.close()
    sandboxes = tmp_path / "sandboxes"

    ok = run_cli("verify", first.short_id, "--sandbox", str(sandboxes), repo=repo_path)
    assert ok.code == 0, ok.err
    assert f"snapshot {first.short_id}: verified OK: 5 files" in ok.out
    assert "database local (sqlite): ok, 1 table, 200 rows compared" in ok.out

    bad = run_cli("--json", "verify", "--app", "shop", "--sandbox", str(sandboxes), repo=repo_path)
    assert bad.code == 28
    doc = json.loads(bad.out.splitlines()[-1])
    assert doc["snapshot_id"] == second.id and doc["ok"] is False and doc["sandbox"] is None
    assert [f["path"] for f in doc["failures"]] == [f"{app}/data/new.bin"]
    err = json.loads(bad.err.splitlines()[-1])  # under --json the error line is JSON too
    assert err["message_type"] == "error" and err["exit_code"] == 28
    assert err["error"].startswith(
        f"snapshot {second.short_id} failed verification with 1 problem: {app}/data/new.bin"
    )
    assert list(sandboxes.iterdir()) == []

    listing = run_cli("--json", "snapshots", repo=repo_path)
    states = {s["short_id"]: s["verification"]["ok"] for s in json.loads(listing.out)}
    assert states == {first.short_id: True, second.short_id: False}
    table = run_cli("snapshots", repo=repo_path).out
    assert any(first.short_id in line and " ok " in line for line in table.splitlines())
    assert any(second.short_id in line and "FAILED" in line for line in table.splitlines())

    target = tmp_path / "t"
    plan = run_cli("recover", "--app", "shop", "--target", str(target), "--dry-run", repo=repo_path)
    assert plan.code == 0, plan.err
    assert f"from snapshot {first.short_id}" in plan.out and "verified" in plan.out
    assert f"{second.short_id}" in plan.out  # the warning about the newer, failed one
    assert not target.exists()

    refused = run_cli("recover", "--app", "shop", "--target", str(target), "--snapshot", second.short_id,
                      repo=repo_path)  # fmt: skip
    assert refused.code == 30
    assert (
        "verification FAILED" in refused.err
        and f"newest verified one is {first.short_id}" in refused.err
    )
    assert refused.err.count("\n") == 1  # one line, no traceback

    done = run_cli("--json", "recover", "--app", "shop", "--target", str(target), repo=repo_path)
    assert done.code == 0, done.err
    report = json.loads(done.out.splitlines()[-1])
    assert report["ok"] and report["snapshot"]["id"] == first.id
    assert report["report_files"] == [
        str(target / "recovery-report.json"),
        str(target / "recovery-report.md"),
    ]


def test_usage_errors(repo_path: str) -> None:
    assert run_cli("verify", repo=repo_path).code == 2
    missing = run_cli("verify", "abcdef12", repo=repo_path)
    assert missing.code == 23 and "no snapshot matches 'abcdef12'" in missing.err
    assert run_cli("verify", "latest", "--latest", repo=repo_path).code == 2
    bad_server = run_cli("verify", "--latest", "--db-server", "postgresql", repo=repo_path)
    assert bad_server.code == 2 and "use ENGINE=URL" in bad_server.err
    no_app = run_cli("recover", "--app", "x", "--target", "/tmp/nowhere-casb", repo=repo_path)
    assert no_app.code == 30 and "no snapshot of application 'x'" in no_app.err
    assert run_cli("recover", "--target", "/tmp/x", repo=repo_path).code == 2
