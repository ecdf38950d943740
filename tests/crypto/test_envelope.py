"""The envelope: round trips, and every kind of tampering fails authentication."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casbackup.crypto.envelope import HEADER, OVERHEAD, Opener, Sealer
from casbackup.errors import FormatError, IntegrityError
from casbackup.repo.ids import Kind

ROOT = bytes(range(32))
ids = st.binary(min_size=32, max_size=32)
kinds = st.sampled_from(Kind)


@given(kinds, ids, st.binary(max_size=2000))
def test_round_trip(kind: Kind, object_id: bytes, plaintext: bytes) -> None:
    sealed = Sealer(ROOT).seal(kind, object_id, plaintext)
    assert len(sealed) == len(plaintext) + OVERHEAD
    assert Opener(ROOT).open(kind, object_id, sealed) == plaintext
    assert Opener(ROOT).open(kind, object_id, memoryview(sealed)) == plaintext


@settings(max_examples=200)
@given(kinds, ids, st.binary(min_size=1, max_size=300), st.data())
def test_any_flipped_bit_fails(
    kind: Kind, object_id: bytes, plaintext: bytes, data: st.DataObject
) -> None:
    sealed = bytearray(Sealer(ROOT).seal(kind, object_id, plaintext))
    bit = data.draw(st.integers(0, len(sealed) * 8 - 1))
    sealed[bit // 8] ^= 1 << (bit % 8)
    # The version byte fails as a format error, everything else as an authentication error.
    with pytest.raises(IntegrityError):
        Opener(ROOT).open(kind, object_id, bytes(sealed))


@given(kinds, kinds, ids, st.binary(max_size=100))
def test_wrong_kind_fails(kind: Kind, other: Kind, object_id: bytes, plaintext: bytes) -> None:
    sealed = Sealer(ROOT).seal(kind, object_id, plaintext)
    if other != kind:
        with pytest.raises(IntegrityError, match="authentication failed"):
            Opener(ROOT).open(other, object_id, sealed)


@given(kinds, ids, ids, st.binary(max_size=100))
def test_wrong_object_id_fails(
    kind: Kind, object_id: bytes, other: bytes, plaintext: bytes
) -> None:
    sealed = Sealer(ROOT).seal(kind, object_id, plaintext)
    if other != object_id:
        with pytest.raises(IntegrityError, match="authentication failed"):
            Opener(ROOT).open(kind, other, sealed)


def test_blob_moved_to_another_id_fails() -> None:
    """Swapping two blobs' envelopes (as a hostile store could inside a pack) is detected."""
    sealer, opener = Sealer(ROOT), Opener(ROOT)
    a_id, b_id = b"a" * 32, b"b" * 32
    a, b = sealer.seal(Kind.DATA, a_id, b"alpha"), sealer.seal(Kind.DATA, b_id, b"beta")
    with pytest.raises(IntegrityError):
        opener.open(Kind.DATA, a_id, b)
    with pytest.raises(IntegrityError):
        opener.open(Kind.DATA, b_id, a)


def test_other_key_fails() -> None:
    sealed = Sealer(ROOT).seal(Kind.DATA, bytes(32), b"secret")
    with pytest.raises(IntegrityError):
        Opener(bytes(32)).open(Kind.DATA, bytes(32), sealed)


def test_too_short_and_unknown_version_are_format_errors() -> None:
    with pytest.raises(FormatError, match="too short"):
        Opener(ROOT).open(Kind.DATA, bytes(32), b"\x01" * (OVERHEAD - 1))
    sealed = bytearray(Sealer(ROOT).seal(Kind.DATA, bytes(32), b"x"))
    sealed[0] = 2
    with pytest.raises(FormatError, match="version 2"):
        Opener(ROOT).open(Kind.DATA, bytes(32), bytes(sealed))


def _session_counter(sealed: bytes) -> tuple[bytes, int]:
    _version, session, counter = HEADER.unpack_from(sealed, 0)
    return session, counter


def test_two_sealers_never_share_a_session() -> None:
    sessions = {
        _session_counter(Sealer(ROOT).seal(Kind.DATA, bytes(32), b""))[0] for _ in range(500)
    }
    assert len(sessions) == 500


def test_counters_increase_and_never_repeat_across_threads() -> None:
    sealer = Sealer(ROOT)
    seen: list[tuple[bytes, int]] = []
    lock = threading.Lock()

    def work() -> None:
        local = [_session_counter(sealer.seal(Kind.DATA, bytes(32), b"x")) for _ in range(300)]
        with lock:
            seen.extend(local)
        counters = [c for _s, c in local]
        assert counters == sorted(counters) and len(set(counters)) == len(counters)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({s for s, _c in seen}) == 1
    assert sorted(c for _s, c in seen) == list(range(1200))
