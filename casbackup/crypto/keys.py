"""The master key and the subkeys derived from it.

One random 32-byte secret is the root of every key in a repository. Everything
else is derived with BLAKE3's key-derivation mode under distinct context strings,
so a subkey leaking (say, the chunker seed via chunk sizes) reveals nothing about
the others.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import blake3

SECRET_SIZE = 32

_CTX_ENCRYPTION = "casbackup 2026-11-26 encryption root"
_CTX_CHUNK_ID = "casbackup 2026-11-26 chunk id"
_CTX_CHUNKER = "casbackup 2026-11-26 chunker seed"
_CTX_CONFIG_MAC = "casbackup 2026-11-30 config mac"


def _derive(context: str, secret: bytes) -> bytes:
    return blake3.blake3(secret, derive_key_context=context).digest()


@dataclass(frozen=True)
class MasterKey:
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != SECRET_SIZE:
            raise ValueError("master key must be 32 bytes")

    @classmethod
    def generate(cls) -> MasterKey:
        return cls(os.urandom(SECRET_SIZE))

    @property
    def encryption_root(self) -> bytes:
        """Keys each writing session's AEAD key (see envelope.py)."""
        return _derive(_CTX_ENCRYPTION, self.secret)

    @property
    def chunk_id_key(self) -> bytes:
        """Keys BLAKE3 for chunk ids, so ids reveal nothing without the key."""
        return _derive(_CTX_CHUNK_ID, self.secret)

    @property
    def config_mac_key(self) -> bytes:
        """Keys the BLAKE3 MAC over the plaintext config (repo/config.py): whoever can
        write the storage but lacks the key cannot change how the repository is written."""
        return _derive(_CTX_CONFIG_MAC, self.secret)

    @property
    def chunker_seed(self) -> int:
        """Seeds FastCDC's gear table so cut points depend on the key.

        pyfastcdc takes a non-zero 63-bit integer (a C unsigned long, 0 means "unseeded").
        """
        raw = int.from_bytes(_derive(_CTX_CHUNKER, self.secret)[:8], "little")
        return (raw & ((1 << 63) - 1)) | 1
