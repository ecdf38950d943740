"""The background pack uploader for remote stores (repo/uploader.py)."""

from __future__ import annotations

import threading

import pytest

from casbackup.errors import Interrupted, StorageError
from casbackup.repo.uploader import PackUploader


class Packer:
    def __init__(self, n: int) -> None:
        self.n = n
        self.aborted = False

    def abort(self) -> None:
        self.aborted = True


def test_packs_are_stored_in_order_and_wait_returns_when_all_are() -> None:
    stored: list[int] = []
    gate = threading.Event()

    def write(p: Packer) -> None:
        gate.wait(5)
        stored.append(p.n)

    up = PackUploader(write, depth=1)
    up.submit(Packer(1))  # taken by the thread, blocked on the gate
    up.submit(Packer(2))  # waiting in the queue
    blocked = threading.Thread(target=up.submit, args=(Packer(3),))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # depth 1: the third waits (memory stays bounded)
    gate.set()
    blocked.join(5)
    up.wait()
    assert stored == [1, 2, 3]
    up.close()


def test_a_failure_surfaces_and_later_packs_are_aborted_never_stored() -> None:
    stored: list[int] = []

    def write(p: Packer) -> None:
        if p.n == 1:
            raise StorageError("writing data/x: the server answered 403")
        stored.append(p.n)

    up = PackUploader(write)
    up.submit(Packer(1))
    with pytest.raises(StorageError, match="403"):
        up.wait()
    late = Packer(2)
    with pytest.raises(StorageError):
        up.submit(late)
    assert late.aborted and stored == []
    up.close()


def test_close_aborts_what_waits() -> None:
    gate = threading.Event()
    stored: list[int] = []

    def write(p: Packer) -> None:
        gate.wait(5)
        stored.append(p.n)

    up = PackUploader(write)
    up.submit(Packer(1))
    waiting = Packer(2)
    up.submit(waiting)
    closer = threading.Thread(target=up.close)
    closer.start()
    while not up._closing:  # close has begun before the first write ends
        threading.Event().wait(0.01)
    gate.set()
    closer.join(5)
    assert not closer.is_alive() and waiting.aborted and stored == [1]


@pytest.fixture
def _stopped(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from casbackup.store import stopping

    monkeypatch.setattr(stopping, "_stopped_at", [])
    monkeypatch.setattr(stopping, "_hung", [])
    return stopping


def test_after_a_stop_a_hanging_upload_holds_the_way_out_only_so_long(  # type: ignore[no-untyped-def]
    _stopped, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Found with SeaweedFS behind a proxy hanging data PUTs: after Ctrl-C `backup` joined
    # the upload thread, stuck in its PUT, for the store's timeout times the retries
    # (killed 60 s after SIGINT); now it exits 130 about 1.5 s after it.
    import time

    from casbackup.repo import uploader

    monkeypatch.setattr(uploader, "UPLOAD_GRACE_S", 1.5)
    release, began = threading.Event(), threading.Event()
    up = PackUploader(lambda p: (began.set(), release.wait()))
    up.submit(Packer(1))
    assert began.wait(5)  # being stored when the stop comes
    _stopped.note_stop()
    start = time.monotonic()
    with pytest.raises(StorageError, match="did not finish after the stop"):
        up.wait()
    took = time.monotonic() - start
    assert 1.4 <= took < 30, took  # the grace given; then a hang guard (the upload hangs)
    # The upload was given up by wait: not waited for a second time, not even a grace
    # period, made far longer than the hang guard to tell.
    monkeypatch.setattr(uploader, "UPLOAD_GRACE_S", 600.0)
    start = time.monotonic()
    up.close()
    assert time.monotonic() - start < 30
    release.set()


def test_after_a_stop_a_full_queue_holds_neither_submit_nor_close(_stopped) -> None:  # type: ignore[no-untyped-def]
    # Found with SeaweedFS hanging data PUTs: after Ctrl-C the readers' collector threads
    # waited in submit behind the hung upload, and the walker on them, for good; then
    # close waited to queue its end behind the same upload.
    import time

    release = threading.Event()
    up = PackUploader(lambda p: release.wait())
    up.submit(Packer(1))  # being stored: hangs
    up.submit(Packer(2))  # queued (depth 1)
    third = Packer(3)
    blocked = threading.Thread(target=lambda: pytest.raises(Interrupted, up.submit, third))
    blocked.start()
    threading.Event().wait(0.3)
    assert blocked.is_alive()  # no stop yet: a full queue is waited for
    _stopped.note_stop()
    blocked.join(60)  # a hang guard: without the stop it waits for ever
    assert not blocked.is_alive() and third.aborted
    start = time.monotonic()
    up.close()
    assert time.monotonic() - start < 30  # a hang guard: the upload never ends
    release.set()


def test_without_a_stop_wait_still_waits_for_the_upload(_stopped) -> None:  # type: ignore[no-untyped-def]
    done: list[int] = []

    def slow(p: Packer) -> None:
        threading.Event().wait(1.2)  # longer than a stop's grace: no stop, no bound
        done.append(p.n)

    up = PackUploader(slow)
    up.submit(Packer(1))
    up.wait()
    assert done == [1]
    up.close()
