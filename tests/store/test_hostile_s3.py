"""Hostile storage on S3 (issue 12, kinds 1, 2 and 5): whoever owns the bucket plants keys
with plain S3 calls (boto3 here, as an attacker would), then the real ``casbackup`` command
runs on the repository (moto on 127.0.0.1)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from casbackup.testing.fixtures import run_cli
from tests.store.conftest import make_bucket

HEX = "0123456789abcdef" * 4


class Bucket:
    """The attacker's view: raw keys under the repository's prefix."""

    def __init__(self, endpoint: str) -> None:
        import boto3

        self.name = make_bucket(endpoint)
        self.prefix = "repo/one/"
        self.location = f"s3:{endpoint}/{self.name}/repo/one"
        self.client: Any = boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1",
            aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"],
        )  # fmt: skip

    def keys(self, under: str = "") -> dict[str, int]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=self.prefix + under
        )
        return {
            o["Key"][len(self.prefix) :]: o["Size"]
            for page in pages
            for o in page.get("Contents", [])
        }

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=self.prefix + key)["Body"].read()  # type: ignore[no-any-return]

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=self.prefix + key, Body=body)

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.name, Key=self.prefix + key)


@pytest.fixture
def bucket(moto_endpoint: str, s3_env: None, tmp_path: Path) -> Bucket:
    b = Bucket(moto_endpoint)
    assert run_cli("init", repo=b.location).code == 0
    return b


def backup(bucket: Bucket, src: Path, seed: bytes) -> str:
    src.mkdir(exist_ok=True)
    (src / "a.txt").write_bytes(seed * 20_000)
    res = run_cli("--json", "backup", str(src), repo=bucket.location, timeout=300)
    assert res.code == 0, res.err
    return str(json.loads(res.out.splitlines()[-1])["snapshot_id"])


PLANTED = [
    "authorized_keys",
    "data/au/authorized_keys",
    "data/00/" + HEX,  # a pack name under the wrong folder
    "snapshots/" + HEX + "/x",
    "snapshots/" + HEX.upper(),
    "locks/short",
    "keys/" + HEX + ".bak",
]


def test_planted_keys_are_never_read_or_deleted_and_check_names_them(
    bucket: Bucket, tmp_path: Path
) -> None:
    backup(bucket, tmp_path / "src", b"one ")
    for marker in ("", "index/", "data/ab/"):  # empty "folders" as S3 consoles make them:
        bucket.put(marker, b"")  # harmless, never an error
    for key in PLANTED:
        bucket.put(key, b"planted")
    backup(bucket, tmp_path / "src", b"two ")
    for args in (["snapshots"], ["unlock", "--remove-all"], ["key", "list"],
                 ["forget", "--keep-last", "1"]):  # fmt: skip
        res = run_cli(*args, repo=bucket.location, timeout=300)
        assert res.code == 0 and "Traceback" not in res.err, (args, res.err)
        assert "warning: skipped '" in res.err, (args, res.err)
    # An odd entry in snapshots/ might hide a snapshot: prune deletes nothing (exit 22).
    res = run_cli("prune", repo=bucket.location, timeout=300)
    assert res.code == 22 and "deleted nothing" in res.err, res.err
    bucket.delete("snapshots/" + HEX + "/x")
    bucket.delete("snapshots/" + HEX.upper())
    res = run_cli("prune", repo=bucket.location, timeout=300)
    assert res.code == 0 and "Traceback" not in res.err, res.err
    assert "deleted" in res.out, res.out  # the forgotten snapshot's data went, nothing else
    for key in PLANTED[3:5]:
        bucket.put(key, b"planted")
    present = bucket.keys()
    assert [key for key in PLANTED if present.get(key) != 7] == []
    res = run_cli("check", repo=bucket.location, timeout=300)
    assert res.code == 29, res.err
    for key in PLANTED:
        assert f"error: {key!r}" in res.err, (key, res.err)
    assert f"has {len(PLANTED)} problems" in res.err  # the folder markers are none


def test_oversized_and_renamed_objects_are_named_and_the_rest_listed(
    bucket: Bucket, tmp_path: Path
) -> None:
    sid = backup(bucket, tmp_path / "src", b"one ")
    bucket.put("snapshots/" + HEX, b"\0" * (16 * 1024 * 1024 + 1))  # over a snapshot's cap
    bucket.put("snapshots/" + "ab" * 32, bucket.get(f"snapshots/{sid}"))  # a copy, renamed
    bucket.put("verifications/" + "cd" * 32, b"\0" * (16 * 1024 * 1024 + 1))
    bucket.put("keys/" + "0" * 64, b" " * (64 * 1024 + 1))  # sorts first
    res = run_cli("--json", "snapshots", repo=bucket.location, timeout=300)
    assert res.code == 0, res.err
    assert [d["id"] for d in json.loads(res.out)] == [sid]
    assert f"snapshots/{HEX} is damaged" in res.err
    assert "does not match its name" in res.err and "abababababab" in res.err
    res = run_cli("check", repo=bucket.location, timeout=300)
    assert res.code == 29 and "Traceback" not in res.err, res.err
    for name in (HEX, "ab" * 32, "cd" * 32, "0" * 64):
        assert name[:12] in res.err, (name, res.err)


def test_a_forgotten_snapshot_put_back_stays_forgotten(bucket: Bucket, tmp_path: Path) -> None:
    old = backup(bucket, tmp_path / "src", b"one ")
    new = backup(bucket, tmp_path / "src", b"two ")
    saved = bucket.get(f"snapshots/{old}")
    assert run_cli("forget", "--keep-last", "1", repo=bucket.location).code == 0
    assert f"snapshots/{old}" not in bucket.keys()
    bucket.put(f"snapshots/{old}", saved)  # the bucket is rolled back
    res = run_cli("--json", "snapshots", repo=bucket.location, timeout=300)
    assert res.code == 0 and [d["id"] for d in json.loads(res.out)] == [new], res.err
    assert "back in the repository" in res.err


def test_a_rolled_back_index_never_makes_a_backup_skip_data(bucket: Bucket, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    gone = src / "gone"
    gone.mkdir()
    for i in range(20):
        (gone / f"f{i}").write_bytes(os.urandom(20_000))
    backup(bucket, src, b"one ")
    gone.rename(tmp_path / "later")
    backup(bucket, src, b"two ")
    old = {k: bucket.get(k) for k in bucket.keys("index/")}
    assert run_cli("forget", "--keep-last", "1", repo=bucket.location).code == 0
    assert run_cli("prune", repo=bucket.location, timeout=300).code == 0
    for key in bucket.keys("index/"):
        bucket.delete(key)
    for key, body in old.items():
        bucket.put(key, body)
    (tmp_path / "later").rename(gone)
    res = run_cli("backup", str(src), repo=bucket.location, timeout=300)
    assert res.code == 0 and "missing pack" in res.err, res.err
    assert run_cli("repair", "index", repo=bucket.location, timeout=300).code == 0
    res = run_cli("check", "--read-data", repo=bucket.location, timeout=300)
    assert res.code == 0, res.err


def test_a_pack_damaged_in_the_bucket_is_repaired_and_healed(
    bucket: Bucket, tmp_path: Path
) -> None:
    """repair packs on S3: whoever owns the bucket flips a byte in a data pack; check names
    it, repair packs keeps the intact blobs and drops the damaged one, the next backup
    stores it again, and check --read-data passes for every snapshot."""
    src = tmp_path / "src"
    first = backup(bucket, src, b"first ")
    (src / "b.bin").write_bytes(os.urandom(300_000))
    backup(bucket, src, b"first ")  # a.txt unchanged: its chunk shared by both snapshots
    packs = bucket.keys("data/")
    key = max(packs, key=lambda k: packs[k])
    body = bytearray(bucket.get(key))
    body[len(body) // 2] ^= 0x40
    bucket.put(key, bytes(body))
    res = run_cli("--json", "check", "--read-data", repo=bucket.location, timeout=300)
    damaged = json.loads(res.out.splitlines()[-1])
    assert res.code == 29 and damaged["repairable_packs"] == [key.rsplit("/", 1)[1]], damaged
    res = run_cli(
        "repair", "packs", *damaged["repairable_packs"], repo=bucket.location, timeout=300
    )
    assert res.code == 0 and "1 damaged blob dropped" in res.out, res.err
    assert key not in bucket.keys("data/")
    assert run_cli("backup", str(src), repo=bucket.location, timeout=300).code == 0
    res = run_cli("check", "--read-data", repo=bucket.location, timeout=300)
    assert res.code == 0, res.err
    target = tmp_path / "restored"
    assert run_cli("restore", first, "--target", str(target), repo=bucket.location).code == 0
