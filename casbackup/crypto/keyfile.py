"""Key files: the master key wrapped by a passphrase.

A key file is plaintext JSON (it must be readable before any key is known)::

    {"version": 1, "kdf": "argon2id", "salt": b64(16), "memory_kib": int,
     "iterations": int, "lanes": int, "nonce": b64(12), "wrapped": b64(48),
     "created": iso8601, "host": str, "user": str}

``wrapped`` is AES-256-GCM(kek, nonce, master_secret, aad=repository_id) where
kek = Argon2id(passphrase, salt, ...). Binding the repository id means a key file
copied from another repository does not open this one. Several key files are
several passphrases for the same master key; changing a passphrase writes a new
key file and re-encrypts nothing else.

Key files are plaintext and anyone who can write the storage can plant one, so the cost
a key file asks for is capped (``KdfLimit``) before Argon2 runs: a planted file cannot
make a command allocate gigabytes or spin for minutes.
"""

from __future__ import annotations

import base64
import getpass
import json
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from casbackup.crypto.keys import MasterKey
from casbackup.errors import FormatError, UnsupportedFormat, UsageError, WrongPassword

KEYFILE_VERSION = 1
WRAPPED_LEN = 32 + 16  # the master secret and its AES-GCM tag


@dataclass(frozen=True)
class KdfParams:
    """Argon2id cost: 64 MiB, 3 passes, 4 lanes (0.38 s measured on a busy 2-core machine;
    the former 32 MiB x 4 took 0.27 s there).

    RFC 9106 section 4's second recommended option ("if much less memory is available":
    t=3, p=4, m=64 MiB), the memory borg 2 uses too.
    """

    memory_kib: int = 65536
    iterations: int = 3
    lanes: int = 4

    def describe(self) -> str:
        """E.g. "Argon2id 64 MiB x 3 passes, 4 lanes"."""
        memory = (
            f"{self.memory_kib // 1024} MiB" if self.memory_kib % 1024 == 0
            else f"{self.memory_kib} KiB"
        )  # fmt: skip
        return f"Argon2id {memory} x {self.iterations} passes, {self.lanes} lanes"

    def derive(self, passphrase: bytes, salt: bytes) -> bytes:
        return Argon2id(
            salt=salt,
            length=32,
            iterations=self.iterations,
            lanes=self.lanes,
            memory_cost=self.memory_kib,
        ).derive(passphrase)


# For tests only: 8 MiB keeps hundreds of CLI invocations fast. Never a default.
WEAK_KDF = KdfParams(memory_kib=8192, iterations=1, lanes=1)

LIMIT_ENV = "CASBACKUP_KDF_LIMIT"


@dataclass(frozen=True)
class KdfLimit:
    """The most a key file may ask for before it is tried (default: 1 GiB, 10 passes,
    16 lanes, 16x the default cost in memory). Users who chose more set
    ``CASBACKUP_KDF_LIMIT=MEMORY_MIB:PASSES:LANES``; the format's own bounds (4 GiB,
    100 passes, 64 lanes, see ``decode_keyfile``) hold whatever the limit says."""

    memory_kib: int = 1 << 20
    iterations: int = 10
    lanes: int = 16

    def describe(self) -> str:
        return f"{self.memory_kib // 1024} MiB, {self.iterations} passes, {self.lanes} lanes"

    def allows(self, kdf: KdfParams) -> bool:
        return (
            kdf.memory_kib <= self.memory_kib
            and kdf.iterations <= self.iterations
            and kdf.lanes <= self.lanes
        )

    @classmethod
    def from_env(cls) -> KdfLimit:
        """The limit in ``CASBACKUP_KDF_LIMIT``, or the default; UsageError if malformed."""
        text = os.environ.get(LIMIT_ENV, "").strip()
        if not text:
            return cls()
        parts = text.split(":")
        if len(parts) != 3 or not all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts):
            raise UsageError(f"{LIMIT_ENV}={text!r}: use MEMORY_MIB:PASSES:LANES, e.g. 4096:20:16")
        return cls(int(parts[0]) * 1024, int(parts[1]), int(parts[2]))


DEFAULT_LIMIT = KdfLimit()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise FormatError(f"key file field {field!r} is not a string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise FormatError(f"key file field {field!r} is not base64") from None


def wrap_key(
    master: MasterKey, passphrase: bytes, repo_id: bytes, kdf: KdfParams = KdfParams()
) -> bytes:
    salt = os.urandom(16)
    nonce = os.urandom(12)
    kek = kdf.derive(passphrase, salt)
    wrapped = AESGCM(kek).encrypt(nonce, master.secret, repo_id)
    doc = {
        "version": KEYFILE_VERSION,
        "kdf": "argon2id",
        "salt": _b64(salt),
        "memory_kib": kdf.memory_kib,
        "iterations": kdf.iterations,
        "lanes": kdf.lanes,
        "nonce": _b64(nonce),
        "wrapped": _b64(wrapped),
        "created": datetime.now(UTC).isoformat(),
        "host": socket.gethostname(),
        "user": getpass.getuser(),
    }
    return json.dumps(doc, indent=1).encode()


@dataclass(frozen=True)
class KeyFileInfo:
    created: str
    host: str
    user: str
    kdf: KdfParams


def decode_keyfile(data: bytes) -> tuple[dict[str, Any], KdfParams]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise FormatError("key file is not valid JSON") from None
    if not isinstance(doc, dict):
        raise FormatError("key file is not a JSON object")
    if doc.get("version") != KEYFILE_VERSION:
        raise UnsupportedFormat(f"key file version {doc.get('version')!r} is not supported")
    if doc.get("kdf") != "argon2id":
        raise UnsupportedFormat(f"key derivation {doc.get('kdf')!r} is not supported")
    values = [doc.get(name) for name in ("memory_kib", "iterations", "lanes")]
    # JSON integers only: int() would take 8191.5 as 8191, "8192" as 8192 and true as 1.
    if not all(type(v) is int for v in values):
        raise FormatError("key file has bad KDF parameters")
    kdf = KdfParams(*values)
    # Argon2 itself refuses less than 8 KiB of memory per lane.
    if not (
        1 <= kdf.lanes <= 64
        and 8 * kdf.lanes <= kdf.memory_kib <= 4 << 20
        and 1 <= kdf.iterations <= 100
    ):
        raise FormatError("key file KDF parameters are out of range")
    # Checked here, not only when unwrapping: `key list` and `check` name a malformed file,
    # and no Argon2 runs for one that could never open.
    salt = _unb64(doc.get("salt"), "salt")
    nonce = _unb64(doc.get("nonce"), "nonce")
    wrapped = _unb64(doc.get("wrapped"), "wrapped")
    if not 8 <= len(salt) <= 64 or len(nonce) != 12 or len(wrapped) != WRAPPED_LEN:
        raise FormatError("key file salt, nonce or wrapped key has the wrong size")
    doc.update(salt=salt, nonce=nonce, wrapped=wrapped)
    return doc, kdf


def keyfile_info(data: bytes) -> KeyFileInfo:
    doc, kdf = decode_keyfile(data)
    return KeyFileInfo(
        str(doc.get("created", "")), str(doc.get("host", "")), str(doc.get("user", "")), kdf
    )


def require_within(kdf: KdfParams, limit: KdfLimit) -> None:
    """FormatError, naming the variable that raises the limit, if ``kdf`` asks for more."""
    if not limit.allows(kdf):
        raise FormatError(
            f"key file asks for {kdf.describe()}, above the limit of {limit.describe()}"
            f"; if you chose that cost, set {LIMIT_ENV}=MEMORY_MIB:PASSES:LANES"
        )


def unwrap_key(
    data: bytes, passphrase: bytes, repo_id: bytes, limit: KdfLimit = DEFAULT_LIMIT
) -> MasterKey:
    """Return the master key, or raise WrongPassword if this passphrase does not open it.

    FormatError when the file is damaged or asks for more than ``limit`` (checked before
    Argon2 runs)."""
    doc, kdf = decode_keyfile(data)
    require_within(kdf, limit)
    kek = kdf.derive(passphrase, doc["salt"])
    try:
        secret = AESGCM(kek).decrypt(doc["nonce"], doc["wrapped"], repo_id)
    except InvalidTag:
        raise WrongPassword(
            "wrong passphrase: no key file of this repository opens with it"
        ) from None
    return MasterKey(secret)
