"""Every backend keeps the semantics written in casbackup/store/base.py."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from casbackup.errors import CasError, NotFound, StorageError
from casbackup.store.base import Backend
from casbackup.store.local import TMP_MARK, LocalBackend
from casbackup.store.memory import MemoryBackend

# Names of the shape the format writes (store/names.py): anything else is refused.
P1, P2, P3 = "data/00/" + "00" * 32, "data/01/" + "01" * 32, "data/01/01" + "f" * 62
REAL = "data/ab/" + "ab" * 32
EMPTY, OBJ, NOPE = "index/" + "e" * 64, "snapshots/" + "0" * 64, "snapshots/" + "0e" * 32
KEY, SNAP = "keys/" + "c" * 64, "snapshots/" + "a" * 64


@pytest.fixture(params=["local", "memory", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    b: Backend
    if request.param == "local":
        b = LocalBackend(str(tmp_path / "store"))
    elif request.param == "memory":
        b = MemoryBackend()
    else:  # a fresh bucket on a real S3 server (moto) on 127.0.0.1, through the retry wrapper
        from casbackup.store.retry import RetryingBackend
        from casbackup.store.s3 import S3Backend

        b = RetryingBackend(S3Backend(request.getfixturevalue("moto_location")))
    yield b
    b.close()


def test_put_get_round_trip(backend: Backend) -> None:
    backend.put("data/ab/" + "ab" * 32, b"hello world")
    backend.put("config", memoryview(b"cfg"))
    assert backend.get("data/ab/" + "ab" * 32) == b"hello world"
    assert backend.get("config") == b"cfg"
    backend.put(EMPTY, b"")
    assert backend.get(EMPTY) == b""
    assert backend.stat(EMPTY) == 0


def test_ranged_get(backend: Backend) -> None:
    backend.put(OBJ, bytes(range(100)))
    assert backend.get(OBJ, 10, 5) == bytes(range(10, 15))
    assert backend.get(OBJ, 0, 100) == bytes(range(100))
    assert backend.get(OBJ, 100, 0) == b""
    assert backend.get(OBJ, 90) == bytes(range(90, 100))
    # Twice through any handle cache, and again after the object is replaced.
    assert backend.get(OBJ, 95, 5) == bytes(range(95, 100))
    backend.put(OBJ, b"x" * 100)
    assert backend.get(OBJ, 95, 5) == b"xxxxx"


@pytest.mark.parametrize(("offset", "length"), [(96, 5), (100, 1), (200, 10), (0, 101)])
def test_ranged_get_past_end_raises(backend: Backend, offset: int, length: int) -> None:
    backend.put(OBJ, bytes(100))
    with pytest.raises(StorageError, match=OBJ):
        backend.get(OBJ, offset, length)


def test_missing_raises_not_found(backend: Backend) -> None:
    for call in (
        lambda: backend.get(NOPE),
        lambda: backend.get(NOPE, 0, 1),
        lambda: backend.stat(NOPE),
        lambda: backend.delete(NOPE),
    ):
        with pytest.raises(NotFound, match=NOPE):
            call()
    assert not backend.exists(NOPE)


def test_delete(backend: Backend) -> None:
    backend.put(SNAP, b"1")
    backend.get(SNAP, 0, 1)  # may leave a cached handle behind
    backend.delete(SNAP)
    assert not backend.exists(SNAP)
    with pytest.raises(NotFound):
        backend.get(SNAP, 0, 1)
    with pytest.raises(NotFound):
        backend.delete(SNAP)


def test_list_by_prefix(backend: Backend) -> None:
    objects = {"config": 3, "keys/" + "1" * 64: 4, P1: 10, P2: 20, P3: 0,
               "index/" + "1" * 64: 5, "snapshots/" + "5" * 64: 6}  # fmt: skip
    for name, size in objects.items():
        backend.put(name, b"z" * size)
    assert dict(backend.list("")) == objects
    assert dict(backend.list("data/")) == {
        k: v for k, v in objects.items() if k.startswith("data/")
    }
    assert dict(backend.list("data/01/")) == {P2: 20, P3: 0}
    assert dict(backend.list(P2)) == {P2: 20}
    assert dict(backend.list("snap")) == {"snapshots/" + "5" * 64: 6}
    assert list(backend.list("locks/")) == []


def test_stat_and_exists(backend: Backend) -> None:
    backend.put(KEY, b"12345")
    assert backend.stat(KEY) == 5
    assert backend.exists(KEY)
    assert not backend.exists("keys/" + "f" * 64)


def test_put_replaces(backend: Backend) -> None:
    backend.put("config", b"old contents that are long")
    backend.put("config", b"new")
    assert backend.get("config") == b"new"
    assert backend.stat("config") == 3
    assert dict(backend.list("config")) == {"config": 3}


def test_errors_are_casbackups_own(backend: Backend) -> None:
    with pytest.raises(CasError):
        backend.get("missing")


# ------------------------------------------------------------------ LocalBackend only
def test_local_list_never_shows_temp_files(tmp_path: Path) -> None:
    b = LocalBackend(str(tmp_path))
    b.put(REAL, b"1")
    (tmp_path / f"{REAL}{TMP_MARK}123456abcdef").write_bytes(b"partial")
    (tmp_path / f"config{TMP_MARK}abcdefabcdef").write_bytes(b"partial")
    assert dict(b.list("")) == {REAL: 1}
    assert sorted(b.list_temp_files()) == sorted(
        [f"{REAL}{TMP_MARK}123456abcdef", f"config{TMP_MARK}abcdefabcdef"]
    )


def test_local_crash_before_rename_leaves_no_partial_object(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = LocalBackend(str(tmp_path))
    b.put("config", b"old")

    def crash(src: str, dst: str, **kwargs: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(StorageError, match="writing data/ab/abab"):
        b.put("data/ab/" + "ab" * 32, b"new data")
    with pytest.raises(StorageError):
        b.put("config", b"new config")
    monkeypatch.undo()
    assert not b.exists("data/ab/" + "ab" * 32)
    assert b.get("config") == b"old"
    assert list(b.list_temp_files()) == []  # the failed put cleaned up after itself


def test_local_process_death_mid_write_leaves_only_a_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A death between write and rename (simulated by an exception no handler catches)."""

    class Death(BaseException):
        pass

    b = LocalBackend(str(tmp_path))
    real_write = os.write

    def die_halfway(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))
        raise Death

    monkeypatch.setattr(os, "write", die_halfway)
    with pytest.raises(Death):
        b.put("data/cd/" + "cd" * 32, b"x" * 1000)
    monkeypatch.undo()
    assert not b.exists("data/cd/" + "cd" * 32)
    assert list(b.list("")) == []
    assert len(list(b.list_temp_files())) == 1


@pytest.mark.parametrize(("code", "text"), [(errno.ENOSPC, "no space left on device"),
                                            (errno.EACCES, "permission denied"),
                                            (errno.EROFS, "read-only file system")])  # fmt: skip
def test_local_os_errors_become_one_line_storage_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, text: str
) -> None:
    b = LocalBackend(str(tmp_path))

    def fail(fd: int, data: bytes) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "write", fail)
    with pytest.raises(StorageError) as info:
        b.put("data/ef/" + "ef" * 32, b"x" * 10)
    monkeypatch.undo()
    assert str(info.value) == f"writing data/ef/{'ef' * 32}: {text}"
    assert "\n" not in str(info.value)
    assert list(b.list_temp_files()) == []


def test_local_refuses_names_that_escape(tmp_path: Path) -> None:
    b = LocalBackend(str(tmp_path / "repo"))
    for name in ("../outside", "/etc/passwd", "data/../../x"):
        with pytest.raises(StorageError, match="invalid object name"):
            b.put(name, b"x")
    assert sorted(os.listdir(tmp_path)) == []


def test_local_upload_is_named_at_commit_and_invisible_before(tmp_path: Path) -> None:
    b = LocalBackend(str(tmp_path))
    up = b.begin_upload("data")
    up.write(b"abc")
    up.write(memoryview(b"defgh")[1:])
    assert list(b.list("")) == []  # a pack being written is never listed
    assert len(list(b.list_temp_files())) == 1
    up.commit("data/12/" + "12" * 32)
    assert b.get("data/12/" + "12" * 32) == b"abcefgh"
    assert list(b.list_temp_files()) == []


def test_local_upload_failures_leave_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = LocalBackend(str(tmp_path))
    up = b.begin_upload("data")
    up.write(b"first")

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StorageError, match="writing a pack: no space left on device"):
        up.write(b"second")
    monkeypatch.undo()
    assert list(b.list_temp_files()) == []
    aborted = b.begin_upload("data")
    aborted.write(b"x")
    aborted.abort()
    assert list(b.list_temp_files()) == [] and list(b.list("")) == []
