"""memory.large_buffers_in_heap: the mmap and trim thresholds are raised while any user is
inside, and set back to the ones this process had (tune_allocator's, or a reader's) only
when the last one leaves (threads, nesting)."""

from __future__ import annotations

import threading

import pytest

from casbackup import memory

MMAP, TRIM = memory._M_MMAP_THRESHOLD, memory._M_TRIM_THRESHOLD


def recorded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """mallopt replaced by a list of its (option, value) calls."""
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(memory, "_mallopt", lambda: lambda opt, value: calls.append((opt, value)))
    return calls


def test_the_threshold_comes_back_when_the_last_user_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = recorded(monkeypatch)
    monkeypatch.setattr(memory, "_thresholds", (1 << 20, 1 << 20))  # tune_allocator's
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with memory.large_buffers_in_heap():
            entered.set()
            release.wait(10)

    t = threading.Thread(target=other)
    t.start()
    entered.wait(10)
    with memory.large_buffers_in_heap():
        with memory.large_buffers_in_heap():
            pass
    raised = [(MMAP, memory._HEAP_THRESHOLD), (TRIM, memory._HEAP_THRESHOLD)]
    assert calls == raised  # still one inside: nothing put back
    release.set()
    t.join(10)
    assert calls[2:] == [(MMAP, 1 << 20), (TRIM, 1 << 20)]
    assert memory._heap_users == 0


def test_a_reader_process_gets_its_own_thresholds_back(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = recorded(monkeypatch)
    monkeypatch.setattr(memory, "_thresholds", None)
    memory.tune_allocator_single_thread()
    with memory.large_buffers_in_heap():
        pass
    assert calls[-2:] == [(MMAP, 4 << 20), (TRIM, 4 << 20)]  # not the parent's 1 MiB


def test_a_restore_writer_keeps_8_mib_buffers_in_the_heap_and_gets_them_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = recorded(monkeypatch)
    monkeypatch.setattr(memory, "_thresholds", (1 << 20, 1 << 20))  # forked from the CLI
    memory.tune_allocator_writer()
    assert calls == [(MMAP, 8 << 20), (TRIM, 8 << 20)]
    with memory.large_buffers_in_heap():  # a batch with delta chains
        pass
    assert calls[-2:] == [(MMAP, 8 << 20), (TRIM, 8 << 20)]  # the writer's, not the CLI's


def test_nothing_is_changed_where_the_allocator_was_not_tuned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = recorded(monkeypatch)
    monkeypatch.setattr(memory, "_thresholds", None)
    with memory.large_buffers_in_heap():
        pass
    assert calls == []
