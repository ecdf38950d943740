"""writers.publish: a verified temporary file gets its real name, never replacing an entry
unless asked, by each of the three ways the file system may offer."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from casbackup.archiver import writers


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    (tmp_path / "tmp").write_bytes(b"new")
    yield fd
    os.close(fd)


def no_renameat2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writers, "_RENAMEAT2", None)


def no_hard_links(monkeypatch: pytest.MonkeyPatch) -> None:
    no_renameat2(monkeypatch)

    def refused(*_a: object, **_k: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")  # vfat, some FUSE file systems

    monkeypatch.setattr(writers.os, "link", refused)


WAYS = {"renameat2": lambda mp: None, "link": no_renameat2, "rename": no_hard_links}


@pytest.mark.parametrize("way", sorted(WAYS))
def test_publish_gives_the_name(folder: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                way: str) -> None:  # fmt: skip
    WAYS[way](monkeypatch)
    assert writers.publish(folder, b"tmp", b"real") is True
    assert os.listdir(tmp_path) == ["real"] and (tmp_path / "real").read_bytes() == b"new"


@pytest.mark.parametrize("way", sorted(WAYS))
def test_publish_never_replaces_without_being_asked(
    folder: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    WAYS[way](monkeypatch)
    (tmp_path / "real").symlink_to(tmp_path / "elsewhere")
    assert writers.publish(folder, b"tmp", b"real") is False
    assert (tmp_path / "real").is_symlink() and not (tmp_path / "elsewhere").exists()
    writers.discard(folder, b"tmp")
    assert os.listdir(tmp_path) == ["real"]


def test_publish_with_replace_swaps_the_entry_itself(folder: int, tmp_path: Path) -> None:
    (tmp_path / "outside").write_bytes(b"precious")
    (tmp_path / "real").symlink_to(tmp_path / "outside")
    assert writers.publish(folder, b"tmp", b"real", replace=True) is True
    assert not (tmp_path / "real").is_symlink() and (tmp_path / "real").read_bytes() == b"new"
    assert (tmp_path / "outside").read_bytes() == b"precious"
    (tmp_path / "tmp").write_bytes(b"newer")
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        writers.publish(folder, b"tmp", b"d", replace=True)  # a folder is never replaced


@pytest.mark.parametrize("name", [b"../escape", b"a/b", b"..", b"", b"x\0y"])
def test_a_writer_refuses_a_name_the_decoder_would(
    folder: int, tmp_path: Path, name: bytes
) -> None:
    job = writers.FileJob((), 0, b"", 0, 0, 0o644, 0, False, (), b".casbackup-restore-t")
    written = writers.write_file(folder, name, job, None, lambda n: None)  # type: ignore[arg-type]
    assert written.error == "invalid file name"
    assert sorted(os.listdir(tmp_path)) == ["tmp"]  # nothing created
    assert not (tmp_path.parent / "escape").exists()
