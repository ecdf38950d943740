"""The engine-independent machinery: the process stream, stderr draining, registry, secrets."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from casbackup.engines import get_engine
from casbackup.engines.base import DatabaseSpec, DumpInfo, resolve_password
from casbackup.engines.process import STDERR_KEEP, ProcessDumpStream, summarize
from casbackup.errors import DatabaseError


def _info(size: int) -> DumpInfo:
    return DumpInfo("fake", "fake", "1", {"t": 1}, "bin", size)


def _stream(script: str) -> ProcessDumpStream:
    return ProcessDumpStream(
        [sys.executable, "-c", script],
        what="fake dump",
        env=None,
        validate=lambda head, tail, size: None,
        make_info=_info,
    )


def test_success_returns_info() -> None:
    with _stream("import sys; sys.stdout.buffer.write(b'x' * 300000)") as s:
        assert len(s.read()) == 300000
        assert s.finish().size == 300000


def test_non_zero_exit_reports_last_stderr_lines_on_one_line() -> None:
    script = "import sys; print('partial'); sys.stderr.write('noise\\nerror: boom\\n'); sys.exit(3)"
    with _stream(script) as s:
        s.read()
        with pytest.raises(DatabaseError) as e:
            s.finish()
    assert str(e.value).startswith("fake dump: python")
    assert str(e.value).endswith("exited with status 3: noise; error: boom")
    assert "\n" not in str(e.value)


def test_zero_bytes_is_a_failure() -> None:
    with _stream("pass") as s, pytest.raises(DatabaseError, match="produced no output"):
        s.read()
        s.finish()


def test_huge_stderr_neither_deadlocks_nor_grows() -> None:
    # 4 MiB on stderr before any stdout: without a drain thread both pipes would fill up.
    script = (
        "import sys; sys.stderr.write('e' * (4 << 20) + '\\nlast line\\n'); sys.stderr.flush();"
        "sys.stdout.buffer.write(b'd' * (1 << 20)); sys.exit(1)"
    )
    with _stream(script) as s:
        assert len(s.read()) == 1 << 20
        with pytest.raises(DatabaseError, match="last line"):
            s.finish()
        assert len(s._drain.text()) <= STDERR_KEEP


def test_validate_failure_is_reported() -> None:
    def reject(head: bytes, tail: bytes, size: int) -> None:
        raise DatabaseError("truncated")

    s = ProcessDumpStream(
        [sys.executable, "-c", "print('x')"], what="w", env=None, validate=reject, make_info=_info
    )
    s.read()
    with pytest.raises(DatabaseError, match="truncated"):
        s.finish()


def test_close_kills_and_reaps() -> None:
    s = _stream("import time, sys; sys.stdout.write('x' * 100000); time.sleep(60)")
    s.read(10)
    s.close()
    with pytest.raises(ChildProcessError):
        os.waitpid(s.pid, os.WNOHANG)


def test_summarize() -> None:
    assert summarize(b"") == "no error output"
    assert summarize(b"a\n\nb\nc\nd\n") == "b; c; d"
    assert len(summarize(b"x" * 5000)) <= 403


def test_registry() -> None:
    assert get_engine("mariadb").name == "mysql"
    assert get_engine("postgres").name == "postgresql"
    with pytest.raises(DatabaseError, match="unknown database engine 'oracle' .known: mysql"):
        get_engine("oracle")


def test_resolve_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_password(DatabaseSpec("d", "mysql")) is None
    monkeypatch.delenv("CASB_NOPE", raising=False)
    with pytest.raises(DatabaseError, match="CASB_NOPE .password_env. is not set"):
        resolve_password(DatabaseSpec("d", "mysql", password_env="CASB_NOPE"))
    f = tmp_path / "pw"
    f.write_text(" sp ace \n")
    assert resolve_password(DatabaseSpec("d", "mysql", password_file=str(f))) == " sp ace "
    with pytest.raises(DatabaseError, match="cannot read password_file"):
        resolve_password(DatabaseSpec("d", "mysql", password_file=str(tmp_path / "no")))
