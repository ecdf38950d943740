"""The local state record: round trip, hostile bytes, concurrent updates, private modes."""

from __future__ import annotations

import os
import stat
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from casbackup.repo.localstate import LocalState, SeenRecord, StateDoc, state_root

ids = st.text("0123456789abcdef", min_size=64, max_size=64)


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 9),
    ids,
    st.sets(ids, max_size=4),
    st.sets(ids, max_size=4),
    st.dictionaries(ids, st.tuples(ids, st.text(max_size=30), st.booleans()), max_size=3),
    st.sets(ids, max_size=4),
)
def test_round_trip(version, key, seen, forgotten, records, forgetting) -> None:  # type: ignore[no-untyped-def]
    doc = StateDoc(version, key, seen, forgotten, {s: SeenRecord(*r) for s, r in records.items()},
                   forgetting)  # fmt: skip
    assert StateDoc.decode(doc.encode()) == doc


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_value_error(data: bytes) -> None:
    try:
        StateDoc.decode(data)
    except ValueError:
        pass


def test_damaged_record_is_replaced(tmp_path) -> None:  # type: ignore[no-untyped-def]
    state = LocalState("r", str(tmp_path))
    os.makedirs(state.folder)
    with open(state.path, "w") as f:
        f.write('{"version": 1, "snapshots": 5}')
    assert state.doc == StateDoc() and "damaged" in state.problem
    state.update(lambda d: d.forgotten.add("x") or True)
    assert LocalState("r", str(tmp_path)).doc.forgotten == {"x"}


def test_concurrent_updates_lose_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    def add(n: int) -> None:
        state = LocalState("r", str(tmp_path))
        for i in range(20):
            state.update(lambda d, i=i: d.snapshots.add(f"{n}-{i}") or True)

    threads = [threading.Thread(target=add, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(LocalState("r", str(tmp_path)).doc.snapshots) == 80


def test_private_modes_and_root(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("CASBACKUP_STATE_DIR", str(tmp_path / "s"))
    assert state_root() == str(tmp_path / "s")
    monkeypatch.delenv("CASBACKUP_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "x"))
    assert state_root() == str(tmp_path / "x" / "casbackup")
    state = LocalState("r")
    state.update(lambda d: True)
    assert stat.S_IMODE(os.stat(state.path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state.folder).st_mode) == 0o700
    assert not [n for n in os.listdir(state.folder) if ".tmp-" in n]


def test_unusable_record_path_is_not_fatal(tmp_path) -> None:  # type: ignore[no-untyped-def]
    state = LocalState("r", str(tmp_path))
    os.makedirs(state.path)  # a folder where the file should be
    assert state.doc == StateDoc() and state.problem
    state.update(lambda d: d.snapshots.add("x") or True)  # kept in memory, not fatal
    assert state.doc.snapshots == {"x"} and "cannot save" in state.problem
    assert not [n for n in os.listdir(state.folder) if ".tmp-" in n]
