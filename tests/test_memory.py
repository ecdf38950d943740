"""memory.large_buffers_in_heap: the mmap threshold is raised while any user is inside,
and set back to tune_allocator's only when the last one leaves (threads, nesting)."""

from __future__ import annotations

import threading

import pytest

from casbackup import memory


def test_the_threshold_comes_back_when_the_last_user_leaves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(memory, "_mallopt", lambda: lambda opt, value: calls.append((opt, value)))
    monkeypatch.setattr(memory, "_tuned", True)
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
    raised = [
        (memory._M_MMAP_THRESHOLD, memory._HEAP_THRESHOLD),
        (memory._M_TRIM_THRESHOLD, memory._HEAP_THRESHOLD),
    ]
    assert calls == raised  # still one inside: nothing put back
    release.set()
    t.join(10)
    assert calls[2:] == [
        (memory._M_MMAP_THRESHOLD, memory._MMAP_THRESHOLD),
        (memory._M_TRIM_THRESHOLD, memory._TRIM_THRESHOLD),
    ]
    assert memory._heap_users == 0


def test_nothing_is_changed_where_the_allocator_was_not_tuned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(memory, "_mallopt", lambda: lambda opt, value: calls.append((opt, value)))
    monkeypatch.setattr(memory, "_tuned", False)
    with memory.large_buffers_in_heap():
        pass
    assert calls == []
