"""store/stopping.py: a stop never waits on a store request that does not answer."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import pytest

from casbackup.errors import StorageError
from casbackup.store import stopping


class _Owner:
    location = "s3:http://127.0.0.1:1/bucket"


@pytest.fixture(autouse=True)
def _no_stop_yet() -> Iterator[None]:
    stopping._stopped_at.clear()
    previous = signal.getsignal(signal.SIGINT)
    yield
    stopping._stopped_at.clear()
    signal.signal(signal.SIGINT, previous)


def _sigint_main_after(seconds: float) -> threading.Timer:
    main = threading.main_thread().ident
    assert main is not None
    timer = threading.Timer(seconds, signal.pthread_kill, (main, signal.SIGINT))
    timer.start()
    return timer


def test_a_stop_ends_the_wait_on_a_request_that_hangs() -> None:
    assert threading.current_thread() is threading.main_thread()
    released = threading.Event()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _sigint_main_after(0.2)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        stopping.call(released.wait, _Owner(), "reading config")
    assert time.monotonic() - start < 30  # a hang guard: the request never answers
    assert stopping.stopped() is not None
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    released.set()


def test_a_deferred_stop_lets_a_quick_request_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    # The request ends right after the stop was handled, not after fixed times (a timer late
    # on a loaded machine stopped it after the request had ended); the grace period is
    # a hang guard here.
    monkeypatch.setattr(stopping, "GRACE_S", 60.0)
    asked: list[int] = []
    handled = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        asked.append(signum)
        handled.set()

    signal.signal(signal.SIGINT, handler)

    def slow() -> str:
        assert handled.wait(60)
        return "answer"

    _sigint_main_after(0.1)
    assert stopping.call(slow, _Owner(), "reading config") == "answer"
    assert asked == [signal.SIGINT]


def test_a_deferred_stop_gives_a_hung_request_one_grace_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: asked.append(signum))
    released = threading.Event()
    owner = _Owner()
    _sigint_main_after(0.1)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        stopping.call(released.wait, owner, "reading a tree")
    took = time.monotonic() - start
    # At least the grace period; at most a hang guard (the request never answers): upper
    # limits near the grace flaked on a loaded 2-core machine.
    assert stopping.GRACE_S <= took < 30, took
    assert asked == [signal.SIGINT]
    # The store is judged hung: the way out (a lock's release) does not wait on it again,
    # not even a grace period, made far longer than the hang guard to tell.
    monkeypatch.setattr(stopping, "GRACE_S", 600.0)
    start = time.monotonic()
    with pytest.raises(StorageError, match="did not answer within 600 s after the stop"):
        stopping.call(released.wait, owner, "deleting locks/x")
    assert time.monotonic() - start < 30
    released.set()


def test_after_a_stop_each_request_waits_one_grace_period_then_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stopping.note_stop()
    owner = _Owner()
    assert stopping.call(lambda: 7, owner, "reading config") == 7  # a store that answers
    released = threading.Event()
    start = time.monotonic()
    with pytest.raises(StorageError, match="deleting locks/x: s3:http://127.0.0.1:1/bucket"):
        stopping.call(released.wait, owner, "deleting locks/x")
    assert stopping.GRACE_S <= time.monotonic() - start < 30  # a hang guard above
    monkeypatch.setattr(stopping, "GRACE_S", 600.0)  # a wait now would be a long one
    start = time.monotonic()
    with pytest.raises(StorageError):
        stopping.call(lambda: 7, owner, "writing index/y")
    assert time.monotonic() - start < 30
    assert stopping.call(lambda: 8, _Owner(), "reading config") == 8  # another store is fine
    released.set()


def test_errors_and_answers_come_back_as_they_were() -> None:
    def fails() -> None:
        raise TimeoutError("the store's own timeout")

    with pytest.raises(TimeoutError, match="the store's own timeout"):
        stopping.call(fails, _Owner(), "reading config")
    assert stopping.call(lambda: b"x" * 3, _Owner(), "reading config") == b"xxx"


def test_other_threads_call_directly() -> None:
    seen: list[str] = []

    def where() -> None:
        seen.append(threading.current_thread().name)

    thread = threading.Thread(target=lambda: stopping.call(where, _Owner(), "x"), name="mine")
    thread.start()
    thread.join()
    stopping.call(where, _Owner(), "x")
    assert seen[0] == "mine" and seen[1].startswith("store-call-")


def test_a_lock_held_by_a_hung_request_is_waited_for_only_so_long_after_a_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found with SeaweedFS hanging the index PUT the upload thread makes: after Ctrl-C the
    # flush waited for the index lock that thread held, for good.
    monkeypatch.setattr(stopping, "_stopped_at", [])
    lock = threading.Lock()
    lock.acquire()
    taker = threading.Thread(target=lambda: got.append(stopping.acquire(lock)))
    got: list[bool] = []
    taker.start()
    taker.join(0.6)
    assert taker.is_alive()  # no stop: waited for
    stopping.note_stop()
    taker.join(60)  # a hang guard: without the stop it waits for ever
    assert not taker.is_alive() and got == [False]
    lock.release()
    assert stopping.acquire(lock)  # free: taken at once, stop or not
