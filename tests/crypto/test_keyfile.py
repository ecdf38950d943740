"""Key files: wrap/unwrap round trips, wrong passphrases, and damaged files."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from casbackup.crypto.keyfile import (
    WEAK_KDF,
    KdfParams,
    decode_keyfile,
    keyfile_info,
    unwrap_key,
    wrap_key,
)
from casbackup.crypto.keys import MasterKey
from casbackup.errors import FormatError, IntegrityError, UnsupportedFormat, WrongPassword

REPO_ID = bytes(range(32))
OWN_ERRORS = (FormatError, IntegrityError, UnsupportedFormat, WrongPassword)


@settings(max_examples=15, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(max_size=64))
def test_round_trip(secret: bytes, passphrase: bytes) -> None:
    data = wrap_key(MasterKey(secret), passphrase, REPO_ID, WEAK_KDF)
    assert unwrap_key(data, passphrase, REPO_ID).secret == secret
    assert keyfile_info(data).kdf == WEAK_KDF


def test_wrong_passphrase_and_other_repository() -> None:
    data = wrap_key(MasterKey.generate(), b"right", REPO_ID, WEAK_KDF)
    with pytest.raises(WrongPassword):
        unwrap_key(data, b"wrong", REPO_ID)
    with pytest.raises(WrongPassword):  # a key file copied from another repository
        unwrap_key(data, b"right", bytes(32))


# Field values a damaged or hostile (plaintext!) key file may hold.
odd_values = st.none() | st.booleans() | st.integers() | st.text(max_size=10) | st.sampled_from(
    [1e999, -1e999, 0.5, [], {}, "AAAA", "!!", 8, 64, 4 << 20, 100])  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["version", "kdf", "salt", "memory_kib", "iterations", "lanes", "nonce",
                        "wrapped", "created"]), odd_values, st.booleans())  # fmt: skip
def test_damaged_fields_raise_only_own_errors(field: str, value: object, drop: bool) -> None:
    doc = json.loads(wrap_key(MasterKey(bytes(32)), b"pw", REPO_ID, WEAK_KDF))
    if drop:
        doc.pop(field)
    else:
        doc[field] = value
    if doc.get("memory_kib") in (4 << 20,) or doc.get("iterations") == 100:
        return  # legal but deliberately slow parameters: not a decoding question
    try:
        unwrap_key(json.dumps(doc).encode(), b"pw", REPO_ID)
    except OWN_ERRORS:
        pass


@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    try:
        decode_keyfile(data)
    except OWN_ERRORS:
        pass


def test_deep_json_and_impossible_kdf() -> None:
    with pytest.raises(FormatError):
        decode_keyfile(b"[" * 100_000 + b"]" * 100_000)
    doc = json.loads(wrap_key(MasterKey(bytes(32)), b"pw", REPO_ID, WEAK_KDF))
    doc.update(memory_kib=8, lanes=64)  # Argon2 needs memory >= 8 KiB per lane
    with pytest.raises(FormatError):
        decode_keyfile(json.dumps(doc).encode())
    doc.update(memory_kib=1e999)
    with pytest.raises(FormatError):
        decode_keyfile(json.dumps(doc).encode())


def test_kdf_params_derive_is_deterministic() -> None:
    kdf = KdfParams(memory_kib=64, iterations=1, lanes=1)
    assert (
        kdf.derive(b"p", b"saltsalt")
        == kdf.derive(b"p", b"saltsalt")
        != kdf.derive(b"q", b"saltsalt")
    )


@pytest.mark.parametrize(
    ("field", "value"),
    [("memory_kib", 8191.5), ("memory_kib", "8192"), ("iterations", True), ("lanes", 1.0)],
)
def test_kdf_parameters_must_be_integers(field: str, value: object) -> None:
    # int() took 8191.5 as 8191 and True as 1: a key file whose cost is not what it says
    # ran Argon2 and was called a wrong passphrase instead of a damaged key file.
    doc = json.loads(wrap_key(MasterKey(bytes(32)), b"pw", REPO_ID, WEAK_KDF))
    doc[field] = value
    with pytest.raises(FormatError, match="bad KDF parameters"):
        decode_keyfile(json.dumps(doc).encode())
