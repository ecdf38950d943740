"""The hand-off to the readers: files in flight, answers settled per batch."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from casbackup.archiver.backup import BackupOptions, run_backup
from casbackup.archiver.later import Later, settle_all
from casbackup.archiver.reading import InFlight
from casbackup.reporter import Progress, Reporter


def test_in_flight_waits_until_answers_make_room() -> None:
    gate = InFlight(10)
    gate.take(6)
    gate.take(4)  # exactly at the limit: no wait
    entered = threading.Event()
    passed = threading.Event()

    def walker() -> None:
        entered.set()
        gate.take(3)
        passed.set()

    t = threading.Thread(target=walker)
    t.start()
    entered.wait()
    assert not passed.wait(0.2)  # 10 + 3 > 10: waits
    gate.give(2)
    assert not passed.wait(0.2)  # 8 + 3 > 10: still waits
    gate.give(1)
    assert passed.wait(5)
    t.join()


def test_in_flight_lets_a_batch_over_the_limit_go_alone() -> None:
    gate = InFlight(4)
    gate.take(9)  # nothing in flight: a batch bigger than the limit is not stuck forever
    done = threading.Event()
    t = threading.Thread(target=lambda: (gate.take(1), done.set()))
    t.start()
    assert not done.wait(0.2)
    gate.give(9)
    assert done.wait(5)
    t.join()


def test_settle_all_settles_every_later_and_runs_callbacks_after() -> None:
    cond = threading.Condition()
    a, b, c = Later[int](cond), Later[int](cond), Later[int](cond)
    seen: list[int] = []
    b.add_done_callback(lambda later: seen.append(later.result()))
    boom = ValueError("unreadable")
    settle_all(cond, [(a, 1, None), (b, 2, None), (c, None, boom)])
    assert (a.result(), b.result()) == (1, 2)
    assert seen == [2]
    with pytest.raises(ValueError, match="unreadable"):
        c.result()
    with pytest.raises(RuntimeError, match="settled twice"):
        settle_all(cond, [(a, 3, None)])


class _FailingProgress(Reporter):
    def progress(self, progress: Progress) -> None:
        raise RuntimeError("progress display broke")


def test_a_failure_while_settling_a_batch_fails_the_backup_instead_of_hanging(
    repo, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"f{i}").write_bytes(bytes([i]) * (100 + i))
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            run_backup(repo, BackupOptions(paths=(str(src),)), _FailingProgress())
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            outcome.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(120)
    assert not t.is_alive(), "the backup hung on files whose batch failed to settle"
    assert isinstance(outcome[0], RuntimeError)
    assert "progress display broke" in str(outcome[0])
