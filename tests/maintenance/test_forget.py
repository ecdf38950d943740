"""forget: plans per group from flags or the config, explains every verdict, keeps the verified."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from casbackup.errors import UsageError
from casbackup.maintenance.forget import (
    NO_POLICY_REASON,
    VERIFIED_REASON,
    execute_forget,
    plan_forget,
)
from casbackup.maintenance.prune import PruneOptions, execute_prune, plan_prune
from casbackup.maintenance.retention import RetentionPolicy
from casbackup.repo.snapshot import Snapshot
from casbackup.testing.fixtures import PASSWORD, make_repo, open_repo, run_cli
from casbackup.verify.check import CheckOptions, check
from tests.maintenance.history import build_history, redate

NOW = datetime(2026, 11, 26, 12, tzinfo=UTC)


def snap(i: int, days_ago: float, app: str | None = "web", host: str = "h") -> Snapshot:
    when = NOW - timedelta(days=days_ago)
    return Snapshot(time=when.isoformat(), start_ns=int(when.timestamp() * 1e9), host=host, user="u",
                    paths=("/srv",), tree="00" * 32, app=app, id=f"{i:064x}")  # fmt: skip


def test_groups_get_their_own_policy_and_reasons() -> None:
    snaps = [snap(i, 10 - i) for i in range(10)] + [snap(100 + i, i, app=None) for i in range(3)]
    policies = {"web": RetentionPolicy(keep_last=2)}
    plan = plan_forget(snaps, lambda key: policies.get(key.app), NOW, tz=UTC)
    by_group = {str(g.key): g for g in plan.groups}
    web = by_group["app web"]
    assert [v.keep for v in web.verdicts] == [True, True] + [False] * 8
    assert web.verdicts[0].reasons == ("last snapshot",)
    assert web.verdicts[-1].reasons == ("matches no keep rule",)
    other = by_group["host h, paths /srv"]
    assert all(v.keep and v.reasons == (NO_POLICY_REASON,) for v in other.verdicts)
    assert len(plan.remove) == 8 and len(plan.keep) == 5


def test_newest_verified_snapshot_is_never_forgotten() -> None:
    snaps = [snap(i, 10 - i) for i in range(10)]
    verified = {snaps[3].id, snaps[5].id}
    plan = plan_forget(snaps, lambda key: RetentionPolicy(keep_last=1), NOW, verified=verified)
    kept = {v.snapshot.id: v.reasons for v in plan.groups[0].verdicts if v.keep}
    assert kept == {snaps[9].id: ("last snapshot",), snaps[5].id: (VERIFIED_REASON,)}


def test_execute_deletes_records_and_tolerates_a_rerun(repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    build_history(repo, str(tmp_path), [5, 4, 3, 2, 1], file_size=2000)
    plan = plan_forget(
        repo.list_snapshots(), lambda key: RetentionPolicy(keep_last=2), NOW + timedelta(days=400)
    )
    first = execute_forget(repo, plan)
    assert len(first.removed) == 3 and len(repo.list_snapshots()) == 2
    again = execute_forget(repo, plan)  # an interrupted forget run again
    assert again.removed == [] and len(again.already_gone) == 3


def test_cli_forget_flags_dry_run_json_and_errors(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "repo")
    repo = make_repo(path)
    build_history(repo, str(tmp_path), [40, 20, 3, 2, 1, 0], file_size=2000)
    repo.close()
    res = run_cli("forget", "--keep-daily", "2", "--dry-run", repo=path)
    assert res.code == 0, res.err
    assert "app app: keep 2, remove 4" in res.out and "daily snapshot" in res.out
    assert "dry run: would remove 4 snapshots" in res.out
    res = run_cli("--json", "forget", "--keep-within", "5d", "--keep-tag", "release", repo=path)
    assert res.code == 0, res.err
    doc = json.loads(res.out)
    assert len(doc["groups"][0]["keep"]) == 4 and len(doc["removed"]) == 2
    assert doc["groups"][0]["policy"] == {"keep_within": "5d", "keep_tags": ["release"]}
    res = run_cli("forget", repo=path)
    assert res.code == 2 and res.err.startswith("error: no keep rule given")
    res = run_cli("forget", "--keep-within", "5x", repo=path)
    assert res.code == 2 and "invalid duration" in res.err
    res = run_cli("forget", "--all", "--keep-last", "1", repo=path)
    assert res.code == 2 and res.err.count("\n") == 1
    # helper-56: a typo in --app removed nothing and said nothing (a nightly job would
    # never forget anything again, unseen).
    res = run_cli("forget", "--app", "ap", "--keep-last", "1", repo=path)
    assert res.code == 0 and "removed 0 snapshots" in res.out, res
    assert (
        "warning: no snapshot of application 'ap' in the repository (applications with "
        "snapshots here: app)" in res.err
    )


def test_cli_forget_all_uses_each_apps_retention(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "repo")
    repo = make_repo(path)
    build_history(repo, str(tmp_path / "a"), [4, 3, 2, 1], app="web", file_size=2000)
    build_history(repo, str(tmp_path / "b"), [4, 3, 2, 1], app="tool", file_size=2000)
    repo.close()
    config = tmp_path / "casbackup.toml"
    config.write_text(
        f'[[applications]]\nname = "web"\nsources = ["{tmp_path}"]\n'
        "[applications.retention]\nkeep_last = 1\n"
        f'[[applications]]\nname = "tool"\nsources = ["{tmp_path}"]\n'
    )
    res = run_cli("--config", str(config), "forget", "--all", repo=path)
    assert res.code == 0, res.err
    assert "app web: keep 1, remove 3" in res.out
    assert "app tool: keep 4, remove 0" in res.out and NO_POLICY_REASON in res.out
    res = run_cli("--config", str(config), "forget", "--app", "tool", repo=path)
    assert res.code == 2 and "no retention in the config" in res.err
    res = run_cli(
        "--config", str(config), "forget", "--app", "web", "--keep-last", "3", "--prune", repo=path
    )
    assert res.code == 0, res.err
    assert "nothing to prune" in res.out or "deleted" in res.out


def test_empty_policy_is_refused() -> None:
    with pytest.raises(UsageError):
        plan_forget([snap(1, 1)], lambda key: RetentionPolicy(), NOW)


def _files(path: str) -> dict[str, bytes]:
    found = {}
    for dirpath, _dirs, names in os.walk(path):
        if os.path.relpath(dirpath, path).startswith("locks"):
            continue
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as f:
                found[os.path.relpath(os.path.join(dirpath, name), path)] = f.read()
    return found


def test_cli_forget_prune_dry_run_plans_the_prune_after_the_forget(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Found with the real CLI: the dry run planned the prune on the repository as it was, so
    # it said "5 snapshots use ..., delete 0 packs": nothing to gain from the forget.
    path = str(tmp_path / "repo")
    repo = make_repo(path)
    build_history(repo, str(tmp_path), [4, 3, 2, 1, 0], file_size=2000)
    repo.close()
    before = _files(path)
    res = run_cli("--json", "forget", "--keep-last", "1", "--prune", "--dry-run", repo=path)
    assert res.code == 0, res.err
    forget_doc, prune_doc = (json.loads(line) for line in res.out.splitlines())
    assert len(forget_doc["groups"][0]["remove"]) == 4 and forget_doc["removed"] == []
    assert _files(path) == before, "a dry run changed the repository"
    res = run_cli("--json", "forget", "--keep-last", "1", repo=path)
    assert res.code == 0, res.err
    res = run_cli("--json", "prune", "--dry-run", repo=path)
    real = json.loads(res.out)
    assert prune_doc["snapshots"] == real["snapshots"] == 1
    assert prune_doc["packs_delete"] == real["packs_delete"] > 0
    assert prune_doc["packs_repack"] == real["packs_repack"]


def test_a_prune_plan_that_ignores_snapshots_cannot_be_executed(repo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    build_history(repo, str(tmp_path), [2, 1, 0], file_size=2000)
    snaps = repo.list_snapshots()
    plan = plan_prune(repo, PruneOptions(ignore_snapshots=frozenset(s.id for s in snaps[:2])))
    assert plan.snapshots == 1 and plan.delete
    with pytest.raises(ValueError, match="cannot be executed"):
        execute_prune(repo, plan)
    assert len(repo.list_snapshots()) == 3
    assert check(repo, CheckOptions(read_data=True)).ok


def test_cli_forget_shows_times_in_the_zone_whose_days_it_counts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Found with the real CLI: days were counted in the config's timezone but times were
    # shown in the machine's, so a line read "2026-11-25 23:00  daily snapshot 2026-11-26".
    path = str(tmp_path / "repo")
    repo = make_repo(path)
    build_history(repo, str(tmp_path), [1, 0], file_size=2000)
    older = min(repo.list_snapshots(), key=lambda s: s.datetime)
    redate(repo, older, datetime(2026, 11, 25, 23, tzinfo=UTC))  # 12:00 on the 26th in Auckland
    repo.close()
    config = tmp_path / "casbackup.toml"
    config.write_text(f'timezone = "Pacific/Auckland"\n[[applications]]\nname = "app"\n'
                      f'sources = ["{tmp_path}"]\n')  # fmt: skip
    res = run_cli("--config", str(config), "forget", "--keep-daily", "5", "--dry-run", repo=path,
                  env={"TZ": "UTC"})  # fmt: skip
    assert res.code == 0, res.err
    line = next(x for x in res.out.splitlines() if "2026-11-26 " in x)
    assert "2026-11-26 12:00 NZDT  daily snapshot 2026-11-26" in line, res.out


def test_cli_forget_all_refuses_apps_with_their_own_repository(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Found with the real CLI: `forget --all` applied the retention of the applications in
    # the repository it opened and said nothing of one whose [applications.repository] is
    # elsewhere: its snapshots were never forgotten (backup --all refuses such a config).
    main, own = str(tmp_path / "main"), str(tmp_path / "own")
    for path in (main, own):
        repo = make_repo(path)
        build_history(repo, str(tmp_path / os.path.basename(path)), [2, 1, 0], app="web",
                      file_size=2000)  # fmt: skip
        repo.close()
    config = tmp_path / "casbackup.toml"
    config.write_text(
        f'[repository]\nlocation = "{main}"\n'
        f'[[applications]]\nname = "web"\nsources = ["{tmp_path}"]\n'
        "[applications.retention]\nkeep_last = 1\n"
        f'[[applications]]\nname = "other"\nsources = ["{tmp_path}"]\n'
        f'[applications.repository]\nlocation = "{own}"\n'
        "[applications.retention]\nkeep_last = 1\n"
    )
    res = run_cli("--config", str(config), "forget", "--all")
    assert res.code == 2, res.out
    assert res.err == (
        "error: other has its own repository in the config: forget with --app NAME for each "
        "of those\n"
    )
    assert len(open_repo(main).list_snapshots()) == 3
    res = run_cli("--config", str(config), "forget", "--app", "web")
    assert res.code == 0 and "app web: keep 1, remove 2" in res.out, res.err


def test_cli_forget_by_id_removes_a_damaged_snapshot_record(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Found with the real CLI: with one snapshot record damaged, prune refused ("forget the
    # damaged snapshot"), forget with a policy refused, and 'forget ID' failed reading it
    # (exit 22): nothing could remove it, and the repository could never be pruned again.
    path = str(tmp_path / "repo")
    repo = make_repo(path)
    build_history(repo, str(tmp_path), [2, 1, 0], file_size=2000)
    damaged = repo.list_snapshots()[0].id
    repo.close()
    name = os.path.join(path, "snapshots", damaged)
    os.chmod(name, 0o600)
    data = bytearray(open(name, "rb").read())
    data[len(data) // 2] ^= 1
    open(name, "wb").write(data)
    res = run_cli("prune", repo=path)
    assert res.code == 22 and f"'casbackup forget {damaged[:8]}'" in res.err, res.err
    res = run_cli("forget", "--keep-last", "1", repo=path)
    assert res.code == 2 and "'casbackup forget ID' removes a damaged one" in res.err, res.err
    res = run_cli("--json", "forget", damaged[:8], "--dry-run", "--prune", repo=path)
    assert res.code == 0, res.err
    doc = json.loads(res.out.splitlines()[0])
    assert [u["id"] for u in doc["unreadable"]] == [damaged] and doc["removed"] == []
    assert json.loads(res.out.splitlines()[1])["snapshots"] == 2
    assert os.path.exists(name)
    res = run_cli("forget", damaged[:8], "--prune", repo=path)
    assert res.code == 0, res.err
    assert (
        f"unreadable snapshot {damaged[:8]}: remove" in res.out and "removed 1 snapshot" in res.out
    )
    assert not os.path.exists(name)
    assert run_cli("check", "--read-data", repo=path).code == 0
    res = run_cli("--json", "snapshots", repo=path)
    assert len(json.loads(res.out)) == 2


def test_cli_snapshots_dated_at_the_ends_of_the_calendar_never_crash(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Found with the real CLI: with one snapshot dated 9999-12-31 23:30 UTC, 'snapshots',
    # 'find', 'apps' and 'forget' crashed with OverflowError (a traceback) whenever the zone
    # (TZ, or the config's timezone) is ahead of UTC: the local time is in the year 10000.
    path = str(tmp_path / "repo")
    repo = make_repo(path)
    build_history(repo, str(tmp_path), [1, 0], file_size=2000)
    first, second = repo.list_snapshots()
    redate(repo, first, datetime(1, 1, 1, 0, 30, tzinfo=UTC))
    redate(repo, second, datetime(9999, 12, 31, 23, 30, tzinfo=UTC))
    repo.close()
    config = tmp_path / "casbackup.toml"
    config.write_text(f'timezone = "Pacific/Kiritimati"\n[[applications]]\nname = "app"\n'
                      f'sources = ["{tmp_path}"]\n')  # fmt: skip
    env = {"TZ": "Pacific/Auckland"}
    for args in (["snapshots"], ["find", "log"], ["apps"]):
        res = run_cli("--config", str(config), *args, repo=path, env=env)
        assert res.code == 0 and "Traceback" not in res.err, (args, res.err)
    res = run_cli("--config", str(config), "forget", "--keep-daily", "5", "--dry-run", repo=path,
                  env=env)  # fmt: skip
    assert res.code == 0, res.err
    assert "9999-12-31 23:30 UTC  dated after now" in res.out
    assert "daily snapshot 0001-01-01" in res.out


def test_cli_forget_reads_a_record_time_without_offset_as_utc(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Found with the real CLI: a snapshot record whose time has no UTC offset (written by
    # another tool) made forget crash with a traceback ("must be a timezone-aware datetime").
    path = str(tmp_path / "repo")
    repo = make_repo(path)
    build_history(repo, str(tmp_path), [1, 0], file_size=2000)
    old = repo.list_snapshots()[0]
    naive = repo.save_snapshot(replace(old, time="2020-11-30T10:00:00", id=""))
    repo.delete_snapshot(old.id)
    assert open_repo(path).load_snapshot(naive.id).time == "2020-11-30T10:00:00+00:00"
    repo.close()
    res = run_cli("forget", "--keep-last", "1", "--dry-run", repo=path, env={"TZ": "UTC"})
    assert res.code == 0, res.err
    assert f"remove {naive.short_id}  2020-11-30 10:00 UTC" in res.out


_KILLED_BEFORE_DELETE = """
import os, signal, sys
from casbackup.store import local
from casbackup.cli.main import main
real = local.LocalBackend.delete
def delete(self, name):
    if name.startswith("snapshots/") and os.environ.get("KILL_AT") == name.split("/")[1]:
        os.kill(os.getpid(), signal.SIGKILL)  # the forget is recorded locally, not yet done
    return real(self, name)
local.LocalBackend.delete = delete
sys.argv = ["casbackup", *sys.argv[1:]]
main()
"""


def test_cli_forget_killed_before_a_delete_finishes_on_the_next_run(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Found with the real CLI (SIGKILL at each write of forget): a kill between recording a
    # snapshot as forgotten here and deleting its file left the file for good: every later
    # command warned 'the repository was rolled back or tampered with', forget run again
    # ignored it, and prune kept its data for ever.
    path = str(tmp_path / "repo")
    repo = make_repo(path)
    build_history(repo, str(tmp_path), [3, 2, 1, 0], file_size=2000)
    victim = repo.list_snapshots()[1].id
    repo.close()
    env = {**os.environ, "CASBACKUP_PASSWORD": PASSWORD, "KILL_AT": victim}
    proc = subprocess.run([sys.executable, "-c", _KILLED_BEFORE_DELETE, "-r", path, "forget",
                           "--keep-last", "1"], env=env, capture_output=True)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert os.path.exists(os.path.join(path, "snapshots", victim))
    res = run_cli("forget", "--keep-last", "1", repo=path)
    assert res.code == 0 and "rolled back" not in res.err, res.err
    assert not os.path.exists(os.path.join(path, "snapshots", victim))
    res = run_cli("--json", "snapshots", repo=path)
    assert len(json.loads(res.out)) == 1 and res.err == "", res.err
    res = run_cli("prune", repo=path)
    assert res.code == 0 and res.err == "", res.err
