"""The real ``casbackup`` command on S3: SeaweedFS (``weed mini``) on 127.0.0.1 as the
integration server, moto behind a fault-injecting proxy for retries."""

from __future__ import annotations

import filecmp
import json
import os
import random
from pathlib import Path

import pytest

from casbackup.testing.fixtures import run_cli
from tests.store.conftest import FaultProxy, make_bucket


def make_tree(root: Path, seed: int, files: int = 30) -> None:
    """Files of mixed sizes, some compressible, some not, in a few folders."""
    rng = random.Random(seed)
    for i in range(files):
        folder = root / f"d{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        size = rng.choice([0, 10, 4096, 200_000, 1_500_000])
        body = rng.randbytes(size) if i % 2 else (b"line %d\n" % i) * (size // 7 + 1)
        (folder / f"f{i}.bin").write_bytes(body)


def assert_same(a: Path, b: Path) -> None:
    cmp = filecmp.dircmp(a, b)
    assert not cmp.left_only and not cmp.right_only, (cmp.left_only, cmp.right_only)
    for name in cmp.common_files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for sub in cmp.common_dirs:
        assert_same(a / sub, b / sub)


def ok(*args: str, repo: str) -> str:
    res = run_cli(*args, repo=repo, timeout=300)
    assert res.code == 0, (args, res.err)
    assert "Traceback" not in res.err
    return res.out


def summary(out: str) -> dict:  # type: ignore[type-arg]
    return [json.loads(line) for line in out.splitlines()][-1]


@pytest.fixture
def seaweed_location(seaweed_endpoint: str, s3_env: None) -> str:
    return f"s3:{seaweed_endpoint}/{make_bucket(seaweed_endpoint)}/backups/main"


@pytest.mark.slow
def test_full_round_trip_on_seaweedfs(seaweed_location: str, tmp_path: Path) -> None:
    repo = seaweed_location
    src = tmp_path / "src"
    make_tree(src, 1)
    ok("init", repo=repo)
    first = summary(ok("--json", "backup", str(src), repo=repo))
    # Incremental: one file changed, one added; the rest is found in the index.
    (src / "d0" / "f0.bin").write_bytes(b"changed\n" * 1000)
    (src / "d1" / "new.bin").write_bytes(os.urandom(300_000))
    second = summary(ok("--json", "backup", str(src), repo=repo))
    assert second["snapshot_id"] != first["snapshot_id"]
    assert second["files_unchanged"] >= 25 and second["files_new"] == 1, second

    target = tmp_path / "restore"
    ok("restore", second["snapshot_id"], "--target", str(target), repo=repo)
    assert_same(src, target / src.relative_to("/"))
    ok("check", "--read-data", repo=repo)

    ok("forget", "--keep-last", "1", "--prune", repo=repo)
    snaps = json.loads(ok("--json", "snapshots", repo=repo))
    assert [s["id"] for s in snaps] == [second["snapshot_id"]]
    ok("check", "--read-data", repo=repo)
    again = tmp_path / "again"
    ok("restore", "latest", "--target", str(again), repo=repo)
    assert_same(src, again / src.relative_to("/"))


def test_permanent_failures_are_one_line(moto_endpoint: str, s3_env: None, tmp_path: Path) -> None:
    no_bucket = run_cli("init", repo=f"s3:{moto_endpoint}/nosuchbucket1/x")
    assert no_bucket.code == 25, no_bucket.err
    assert no_bucket.err.strip().count("\n") == 0 and "no such bucket" in no_bucket.err
    bad = run_cli("init", repo="s3:http://127.0.0.1:1/UPPER_case/x")
    assert bad.code == 2 and "bad S3 location" in bad.err and "Traceback" not in bad.err


@pytest.mark.slow
def test_backup_and_restore_survive_transient_faults(
    moto_endpoint: str, s3_env: None, tmp_path: Path
) -> None:
    """Every 4th request fails (503, reset, or a body cut in half): all complete."""
    bucket = make_bucket(moto_endpoint)
    kinds = ["503", "reset", "cut"]
    proxy = FaultProxy(moto_endpoint, lambda n: kinds[(n // 4) % 3] if n % 4 == 0 else None)
    try:
        repo = f"s3:{proxy.endpoint}/{bucket}/r"
        src = tmp_path / "src"
        make_tree(src, 2, files=20)
        ok("init", repo=repo)
        snap = summary(ok("--json", "backup", str(src), repo=repo))["snapshot_id"]
        target = tmp_path / "restore"
        ok("restore", snap, "--target", str(target), repo=repo)
        assert_same(src, target / src.relative_to("/"))
        (src / "d1" / "f1.bin").write_bytes(os.urandom(100_000))
        ok("backup", str(src), repo=repo)
        ok("forget", "--keep-last", "1", "--prune", repo=repo)
        assert proxy.faults >= 10, proxy.faults
        # What the faults did not break, a direct check confirms.
        ok("check", "--read-data", repo=f"s3:{moto_endpoint}/{bucket}/r")
        assert len(json.loads(ok("--json", "snapshots", repo=repo))) == 1
    finally:
        proxy.close()


@pytest.mark.slow
def test_faults_that_never_stop_fail_in_one_line_and_leave_the_repo_consistent(
    moto_endpoint: str, s3_env: None, tmp_path: Path
) -> None:
    bucket = make_bucket(moto_endpoint)
    direct = f"s3:{moto_endpoint}/{bucket}/r"
    src = tmp_path / "src"
    make_tree(src, 3, files=12)
    ok("init", repo=direct)
    good = summary(ok("--json", "backup", str(src), repo=direct))["snapshot_id"]
    broken = {"on": False}
    proxy = FaultProxy(moto_endpoint, lambda n: "503" if broken["on"] and n > 6 else None)
    try:
        broken["on"] = True
        (src / "d0" / "extra.bin").write_bytes(os.urandom(2_000_000))
        res = run_cli(
            "backup", str(src), repo=f"s3:{proxy.endpoint}/{bucket}/r",
            env={"CASBACKUP_S3_RETRY_BASE": "0.01"}, timeout=300,
        )  # fmt: skip
        assert res.code == 25, res.err
        lines = res.err.strip().splitlines()
        assert len(lines) == 1 and "gave up after" in lines[0], res.err
    finally:
        proxy.close()
    ok("check", "--read-data", repo=direct)
    snaps = json.loads(ok("--json", "snapshots", repo=direct))
    assert [s["id"] for s in snaps] == [good]


def test_credentials_from_the_config_file(
    seaweed_endpoint: str, s3_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No AWS_* variables: the config's [repository] names the key id and where the secret
    is (a file, or a variable's name); SeaweedFS checks the signature, so a wrong secret
    fails in one line and the right one works."""
    bucket = make_bucket(seaweed_endpoint)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    secret = tmp_path / "s3.secret"
    secret.write_text("casbackup-test-secret\n")
    config = tmp_path / "casbackup.toml"

    def write_config(secret_line: str) -> None:
        config.write_text(
            f'[repository]\nlocation = "s3:{seaweed_endpoint}/{bucket}/cfg"\n'
            f's3_access_key_id = "casbackup-test"\n{secret_line}\ns3_region = "us-east-1"\n'
        )

    env = {"CASBACKUP_CONFIG": str(config)}
    write_config('s3_secret_access_key_env = "MY_S3_SECRET"')
    wrong = run_cli("init", env={**env, "MY_S3_SECRET": "not-the-secret"})
    assert wrong.code == 25 and "access denied" in wrong.err, wrong.err
    assert wrong.err.strip().count("\n") == 0
    unset = run_cli("init", env=env)
    assert unset.code == 2 and "MY_S3_SECRET, which is not set" in unset.err, unset.err

    write_config(f's3_secret_access_key_file = "{secret}"')
    src = tmp_path / "src"
    make_tree(src, 7, files=6)
    assert run_cli("init", env=env).code == 0
    snap = summary(run_cli("--json", "backup", str(src), env=env).out)["snapshot_id"]
    # -r given on the command line: the config still supplies the S3 credentials.
    res = run_cli("restore", snap, "--target", str(tmp_path / "r"),
                  repo=f"s3:{seaweed_endpoint}/{bucket}/cfg", env=env)  # fmt: skip
    assert res.code == 0, res.err
    assert_same(src, tmp_path / "r" / src.relative_to("/"))
    shown = run_cli("--json", "config", "check", env=env)
    assert "casbackup-test-secret" not in shown.out and "s3_credentials" in shown.out, shown


@pytest.mark.slow
def test_no_credentials_at_all_says_so(
    seaweed_endpoint: str, s3_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No AWS_* variables, no profile, nothing in the config: the requests go unsigned (a
    public bucket) and SeaweedFS refuses them. The line said "access denied (check the S3
    credentials and bucket policy)", as for a wrong secret, when none had been found."""
    bucket = make_bucket(seaweed_endpoint)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var)
    res = run_cli("snapshots", repo=f"s3:{seaweed_endpoint}/{bucket}/x",
                  env={"HOME": str(tmp_path), "CASBACKUP_CONFIG": ""})  # fmt: skip
    assert res.code == 25, res.err
    assert res.err == (
        "error: reading config: access denied to an unsigned request: no S3 credentials were "
        "found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or "
        "s3_access_key_id in the config file's [repository])\n"
    )


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ('s3_access_key_id = "k"\ns3_secret_access_key = "inline"', "not kept in the config"),
        ('s3_access_key_id = "k"\ns3_secret_access_key_file = "/f"\n'
         's3_secret_access_key_env = "E"', "not both"),
        ('s3_access_key_id = "k"', "need both"),
        ('s3_secret_access_key_env = "E"', "need both"),
        ('s3_access_key_id = "k"\ns3_secret_access_key_env = "1bad"', "not an environment"),
        ('s3_addressing = "sideways"', "'path' or 'virtual'"),
    ],
)  # fmt: skip
def test_config_refuses_bad_s3_settings(tmp_path: Path, lines: str, problem: str) -> None:
    config = tmp_path / "casbackup.toml"
    config.write_text(f'[repository]\nlocation = "s3:http://127.0.0.1:1/bucket/x"\n{lines}\n')
    res = run_cli("snapshots", env={"CASBACKUP_CONFIG": str(config)})
    assert res.code == 2 and problem in res.err and "Traceback" not in res.err, res.err
