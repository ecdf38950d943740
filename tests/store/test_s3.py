"""S3 backend specifics (location syntax, credentials, hostile buckets, error classes) and
the retry wrapper, against a real moto server on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from casbackup.errors import NotFound, StorageError, TransientStorageError, UsageError
from casbackup.store.memory import MemoryBackend
from casbackup.store.names import ObjectRefused
from casbackup.store.retry import RetryingBackend, retry_settings
from casbackup.store.s3 import S3Backend, S3Location, classify, credentials, parse_location
from tests.store.conftest import FaultProxy

SNAP = "snapshots/" + "a" * 64
PACK = "data/ab/" + "ab" * 32


@pytest.mark.parametrize(("text", "want"), [
    ("s3:http://127.0.0.1:9000/bucket/some/prefix", S3Location("http://127.0.0.1:9000", "bucket", "some/prefix")),
    ("s3:https://minio.lan/bkt", S3Location("https://minio.lan", "bkt", "")),
    ("s3:s3.example.org/bkt/p/", S3Location("https://s3.example.org", "bkt", "p")),
])  # fmt: skip
def test_location_syntax_is_restics(text: str, want: S3Location) -> None:
    assert parse_location(text) == want


@pytest.mark.parametrize("text", ["s3:", "s3:http://host", "s3:http://host/Bad_Bucket/x",
                                  "s3:http:///bkt", "s3:http://h/bkt/a/../b", "s3:http://h/bkt//x/y",
                                  "s3:https://key:s3cr3t@host/bucket"])  # fmt: skip
def test_bad_locations_are_one_line_usage_errors(text: str) -> None:
    with pytest.raises(UsageError, match="bad S3 location") as info:
        parse_location(text)
    assert "\n" not in str(info.value)


def test_credentials_from_env_then_profile_then_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_DEFAULT_REGION",
                "AWS_REGION", "AWS_SESSION_TOKEN"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    secret = tmp_path / "secret"
    secret.write_text("from-file\n")
    settings = {"s3_access_key_id": "cfgkey", "s3_secret_access_key_file": str(secret),
                "s3_region": "eu-west-3"}  # fmt: skip
    assert credentials(settings) == {
        "access_key_id": "cfgkey", "secret_access_key": "from-file", "region": "eu-west-3"
    }  # fmt: skip
    aws = tmp_path / ".aws"
    aws.mkdir()
    (aws / "credentials").write_text(
        "[work]\naws_access_key_id = profkey\naws_secret_access_key = profsecret\n"
    )
    (aws / "config").write_text("[profile work]\nregion = ap-south-1\n")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_PROFILE", "work")
    got = credentials(settings)
    assert (got["access_key_id"], got["secret_access_key"], got["region"]) == (
        "profkey", "profsecret", "ap-south-1")  # fmt: skip
    monkeypatch.setenv("AWS_PROFILE", "nope")
    with pytest.raises(UsageError, match="profile 'nope'"):
        credentials()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "envkey")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "envsecret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    assert credentials(settings) == {
        "access_key_id": "envkey", "secret_access_key": "envsecret", "region": "us-west-2"
    }  # fmt: skip


def test_hostile_bucket_odd_keys_are_skipped_never_read_or_deleted(moto_location: str) -> None:
    b = S3Backend(moto_location)
    b.put(SNAP, b"real")
    raw = b._store  # plant keys the format never writes, as whoever owns the bucket could
    import obstore

    for key in ("authorized_keys", "snapshots/short", "data/zz/" + "ab" * 32, "index/"):
        try:
            obstore.put(raw, key, b"planted")
        except Exception:
            pass  # a key the client itself refuses cannot be planted this way
    assert dict(b.list("")) == {SNAP: 4}
    odd = dict(b.odd_entries(""))
    assert "authorized_keys" in odd and "snapshots/short" in odd
    assert set(b.skipped.names()) >= {"authorized_keys", "snapshots/short"}
    for name in ("authorized_keys", "../authorized_keys", "snapshots/short"):
        with pytest.raises(StorageError, match="invalid object name"):
            b.get(name)
        with pytest.raises(StorageError, match="invalid object name"):
            b.delete(name)
    assert bytes(obstore.get(raw, "authorized_keys").bytes()) == b"planted"


def test_whole_read_over_the_cap_is_refused_before_the_body(moto_location: str) -> None:
    b = S3Backend(moto_location)
    key = "keys/" + "c" * 64
    b.put(key, b"k" * (64 * 1024 + 1))  # a key file may have 64 KiB
    with pytest.raises(ObjectRefused, match="more than the 65536 a key file may have"):
        b.get(key)
    assert b.get(key, 0, 3) == b"kkk"  # ranged reads are bounded by their length


def test_put_new_is_create_only_where_the_server_honours_it(moto_location: str) -> None:
    b = RetryingBackend(S3Backend(moto_location))
    lock = "locks/" + "1" * 32
    assert b.put_new(lock, b"first") is True
    assert b.put_new(lock, b"second") is False
    assert b.get(lock) == b"first"


def test_classify() -> None:
    class Generic(Exception):
        pass

    Generic.__module__ = "obstore.exceptions"
    cases = {
        "Server returned non-2xx status code: 503 Service Unavailable: <Code>SlowDown</Code>": (
            TransientStorageError, "the server answered 503 (SlowDown)"),
        "Server returned non-2xx status code: 403 Forbidden: <Code>AccessDenied</Code>": (
            StorageError, "access denied"),
        "status code: 404 Not Found <Code>NoSuchBucket</Code>": (StorageError, "no such bucket"),
        "Error performing PUT http://x/y: error sending request: connection reset": (
            TransientStorageError, "connection reset"),
        "Server returned non-2xx status code: 400 Bad Request <Code>InvalidArgument</Code>": (
            StorageError, "answered 400"),
    }  # fmt: skip
    for text, (cls, words) in cases.items():
        err = classify(Generic(text), "writing x")
        assert type(err) is cls and words in str(err) and "\n" not in str(err), (text, err)
    assert isinstance(classify(FileNotFoundError("gone"), "reading x"), NotFound)


class Flaky(MemoryBackend):
    """A memory backend whose next ``fail`` calls raise a transient error, before or
    after doing the work (an answer lost on the way back)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail, self.after, self.calls = 0, False, 0

    def _maybe(self, work):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.fail and not self.after:
            self.fail -= 1
            raise TransientStorageError("writing x: the server answered 503")
        result = work()
        if self.fail:
            self.fail -= 1
            raise TransientStorageError("writing x: connection reset")
        return result

    def put(self, name, data):  # type: ignore[no-untyped-def]
        return self._maybe(lambda: super(Flaky, self).put(name, data))

    def delete(self, name):  # type: ignore[no-untyped-def]
        return self._maybe(lambda: super(Flaky, self).delete(name))

    def put_new(self, name, data):  # type: ignore[no-untyped-def]
        def work() -> bool:
            if name in self.objects:
                return False
            MemoryBackend.put(self, name, data)
            return True

        return self._maybe(work)


def test_retry_backoff_is_bounded_jittered_and_gives_up_in_one_line() -> None:
    inner, waits = Flaky(), []
    b = RetryingBackend(inner, attempts=4, base=1.0, cap=3.0, sleep=waits.append)
    inner.fail = 3
    b.put(SNAP, b"x")  # three failures, the fourth attempt works
    assert inner.calls == 4 and len(waits) == 3 and b.retries == 3
    assert all(0 <= w <= c for w, c in zip(waits, [1.0, 2.0, 3.0], strict=True))
    inner.fail, inner.calls = 10, 0
    with pytest.raises(TransientStorageError, match=r"gave up after 4 attempts\)$"):
        b.put(SNAP, b"y")
    assert inner.calls == 4
    inner.fail, inner.calls = 0, 0
    with pytest.raises(NotFound):  # permanent answers are never retried
        b.get("snapshots/" + "b" * 64)
    with pytest.raises(StorageError, match="invalid object name"):
        b.put("../x", b"")


def test_retry_after_a_lost_answer_counts_the_work_done() -> None:
    inner = Flaky()
    b = RetryingBackend(inner, sleep=lambda s: None)
    inner.put(SNAP, b"x")
    inner.fail, inner.after = 1, True
    b.delete(SNAP)  # deleted, answer lost; the retry's NotFound means done
    assert SNAP not in inner.objects
    inner.fail = 1
    with pytest.raises(NotFound):  # without a lost answer, NotFound stays NotFound
        inner.fail = 0
        b.delete(SNAP)
    lock = "locks/" + "2" * 32
    inner.fail = 1
    assert b.put_new(lock, b"mine") is True  # stored, answer lost: ours
    assert b.put_new(lock, b"other") is False


def test_retry_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CASBACKUP_S3_RETRIES", "3")
    monkeypatch.setenv("CASBACKUP_S3_RETRY_BASE", "0.5")
    assert retry_settings() == {"attempts": 3.0, "base": 0.5}
    monkeypatch.setenv("CASBACKUP_S3_RETRIES", "lots")
    with pytest.raises(UsageError, match="not a number"):
        retry_settings()


def test_reads_survive_a_body_cut_midway(moto_endpoint: str, moto_location: str) -> None:
    direct = S3Backend(moto_location)
    direct.put(PACK, bytes(range(256)) * 400)
    proxy = FaultProxy(moto_endpoint, lambda n: "cut" if n % 2 else None)
    try:
        b = RetryingBackend(
            S3Backend(moto_location.replace(moto_endpoint, proxy.endpoint)), sleep=lambda s: None
        )
        assert b.get(PACK, 1000, 5000) == (bytes(range(256)) * 400)[1000:6000]
        assert b.get(PACK) == bytes(range(256)) * 400
        assert proxy.faults >= 2
    finally:
        proxy.close()


def test_locks_on_s3_are_written_create_only(
    moto_location: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock file goes through put_new (If-None-Match: *); an existing object under
    the lock's name is never replaced (the name is forced here to show it)."""
    from casbackup.errors import LockError
    from casbackup.repo import lock as lock_module
    from casbackup.testing.fixtures import make_repo

    backend = RetryingBackend(S3Backend(moto_location))
    repo = make_repo(backend)
    made: list[str] = []
    real_put_new = backend.put_new

    def spy(name: str, data: bytes | memoryview) -> bool:
        made.append(name)
        return real_put_new(name, data)

    backend.put_new = spy  # type: ignore[method-assign]
    with repo.locked(command="test"):
        assert len(made) == 1 and made[0].startswith("locks/")
        assert [n for n, _ in backend.list("locks/")] == made
    assert list(backend.list("locks/")) == []
    taken = "locks/" + "9" * 32
    backend.put(taken, b"someone else's")
    urandom = lock_module.os.urandom
    forced = bytes.fromhex("9" * 32)
    monkeypatch.setattr(lock_module.os, "urandom", lambda n: forced if n == 16 else urandom(n))
    with pytest.raises(StorageError, match="already exists"), repo.locked(command="t"):
        pass
    monkeypatch.setattr(lock_module.os, "urandom", urandom)
    assert backend.get(taken) == b"someone else's"
    assert LockError  # the conflict rules themselves are tested in tests/repo
    repo.close()


@pytest.mark.parametrize(
    ("bucket", "why"),
    [("bk", "3 to 63"), ("Backups", "lower case"), ("-bk-", "begin and end"), ("b_k", "only")],
)
def test_a_bad_bucket_name_says_which_rule_it_breaks(bucket: str, why: str) -> None:
    with pytest.raises(UsageError, match="bad S3 location") as info:
        parse_location(f"s3:http://127.0.0.1:9000/{bucket}/repo")
    assert why in str(info.value) and "\n" not in str(info.value)
