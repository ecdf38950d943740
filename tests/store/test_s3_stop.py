"""Ctrl-C against an object store that stops answering: exit 130 at once, one line.

A real ``casbackup`` process against moto behind FaultProxy, whose "hang" fault accepts a
request and never answers (a store's 120 s timeout, times the retries, was how long a stop
used to take). After the stop the store answers again: the next run works, the lock the
stopped one could not delete being judged stale (its process is gone).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from casbackup.testing.fixtures import run_cli
from tests.cli.conftest import popen_cli
from tests.store.conftest import FaultProxy, make_bucket
from tests.store.test_s3_cli import make_tree


@pytest.fixture
def hanging(moto_endpoint: str, s3_env: None) -> Iterator[tuple[FaultProxy, list[str]]]:
    """A proxy to a fresh bucket that hangs every request whose path holds one of the
    strings in the list it yields (empty: nothing hangs)."""
    marks: list[str] = []
    proxy: FaultProxy

    def plan(n: int) -> str | None:
        method, path = proxy.seen[-1]
        hang = method == "GET" and "list-type" not in path and any(m in path for m in marks)
        return "hang" if hang else None

    proxy = FaultProxy(moto_endpoint, plan)
    proxy.bucket = make_bucket(moto_endpoint)  # type: ignore[attr-defined]
    yield proxy, marks
    proxy.close()


def _stop_while_hanging(proxy: FaultProxy, *args: str, repo: str) -> tuple[int, str]:
    """Run the CLI, SIGINT it once a request hangs: (exit code, stderr). It must end; how
    fast is not asserted (a loaded CI machine), only that the hung request (the store's
    120 s timeout, times the retries) does not hold it: a 60 s hang guard."""
    proc = popen_cli(*args, repo=repo)
    deadline = time.monotonic() + 60
    while proxy.hanging == 0 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.hanging, proc.communicate()
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        _out, err = proc.communicate(timeout=60)
    except Exception:
        proc.kill()
        proc.communicate()
        raise AssertionError("still running 60 s after SIGINT") from None
    return proc.returncode, err.decode()


def _backed_up(proxy: FaultProxy, tmp_path: Path) -> str:
    """A repository on the (not yet hanging) store behind ``proxy`` holding one backup of a
    small tree; its location."""
    repo = f"s3:{proxy.endpoint}/{proxy.bucket}/repo"  # type: ignore[attr-defined]
    src = tmp_path / "src"
    make_tree(src, 7, files=12)
    for args in (("init", "--insecure-test-kdf"), ("backup", str(src))):
        res = run_cli(*args, repo=repo, timeout=120)
        assert res.code == 0, res.err
    return repo


@pytest.mark.parametrize(
    ("command", "mark"),
    [
        # the main thread reads a snapshot (after taking the lock)
        (("check",), "/snapshots/"),
        # the restore's reader threads read file contents; its writers wait on them
        (("restore", "latest", "--target", "TARGET"), "/data/"),
    ],
)
def test_ctrl_c_while_the_store_hangs(
    hanging: tuple[FaultProxy, list[str]], tmp_path: Path, command: tuple[str, ...], mark: str
) -> None:
    proxy, marks = hanging
    repo = _backed_up(proxy, tmp_path)
    args = [a.replace("TARGET", str(tmp_path / "out")) for a in command]
    marks.append(mark)
    code, err = _stop_while_hanging(proxy, *args, repo=repo)
    assert code == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "interrupted" in lines[0], err
    marks.clear()
    proxy.unhang()
    res = run_cli("check", repo=repo, timeout=120)
    assert res.code == 0, res.err


@pytest.mark.parametrize("mark", ["/data/", "/index/"], ids=["pack-upload", "index-write"])
def test_one_ctrl_c_stops_a_backup_whose_upload_hangs(
    moto_endpoint: str, s3_env: None, tmp_path: Path, mark: str
) -> None:
    # Found with SeaweedFS behind a proxy hanging data PUTs (or the index PUT the upload
    # thread makes every 8 packs): backup's first Ctrl-C only asked for a stop at a safe
    # point, and the walker waited on readers that waited on the upload: still running
    # 10 s after SIGINT, and for the store's timeout times the retries. Now 1.3-1.5 s.
    marks = [mark]
    proxy: FaultProxy

    def plan(n: int) -> str | None:
        method, path = proxy.seen[-1]
        return "hang" if method == "PUT" and any(m in path for m in marks) else None

    proxy = FaultProxy(moto_endpoint, plan)
    try:
        repo = f"s3:{proxy.endpoint}/{make_bucket(moto_endpoint)}/repo"
        res = run_cli("init", "--insecure-test-kdf", "--pack-size", "1", repo=repo)
        assert res.code == 0, res.err
        src = tmp_path / "src"
        for i in range(40):
            (src / f"d{i % 4}").mkdir(parents=True, exist_ok=True)
            (src / f"d{i % 4}" / f"f{i}").write_bytes(random.Random(i).randbytes(1 << 20))
        code, err = _stop_while_hanging(proxy, "-q", "backup", str(src), repo=repo)
        assert code == 130, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "interrupted" in lines[0]
        marks.clear()
        proxy.unhang()
        for args in (("backup", str(src)), ("check",)):
            res = run_cli(*args, repo=repo, timeout=120)
            assert res.code == 0, res.err
    finally:
        proxy.close()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_mount_whose_read_hangs_ends_on_one_signal(
    hanging: tuple[FaultProxy, list[str]], tmp_path: Path, signum: int
) -> None:
    # Found with a file read through the mount while the store held its GET: libfuse's
    # handlers took the signal and ended its loop, then waited for the worker thread in
    # that read before unmounting: still mounted 30 s after SIGINT or SIGTERM. Now ~1.1 s.
    from tests.cli.test_mount import require_fuse

    require_fuse()  # a skip, except under CI=true: a failure
    proxy, marks = hanging
    repo = _backed_up(proxy, tmp_path)
    mp = tmp_path / "mnt"
    mp.mkdir()
    proc = popen_cli("mount", str(mp), repo=repo)
    reader = None
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mp) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.path.ismount(mp), proc.communicate(timeout=30)
        big = max((p for p in mp.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        marks.append("/data/")
        reader = subprocess.Popen(
            ["cat", str(big)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while proxy.hanging == 0 and time.monotonic() < deadline + 30:
            time.sleep(0.05)
        assert proxy.hanging
        time.sleep(0.2)
        proc.send_signal(signum)
        try:  # a hang guard, not a time limit: the hung request would hold it 120 s and more
            _out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError("still mounted 60 s after one signal") from None
        assert proc.returncode == 0, err
        lines = err.decode().strip().splitlines()
        assert [line.split(" ", 1)[0] for line in lines] == ["mounted", "unmounted"], lines
        assert not os.path.ismount(mp)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False, capture_output=True)
        if reader is not None:
            reader.kill()
            reader.wait()
    marks.clear()
    proxy.unhang()
    res = run_cli("check", repo=repo, timeout=120)
    assert res.code == 0, res.err
