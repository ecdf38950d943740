"""The repository's plaintext config: the only object readable without a key.

JSON, at ``config``::

    {"format": "casbackup", "version": 2, "id": "<64 hex>", "mac": "<64 hex>",
     "chunker": {"algorithm": "fastcdc2020", "min_size": 262144, "avg_size": 786432,
                 "max_size": 8388608, "normalization": 1},
     "dump_chunker": {... same keys, smaller sizes for database dumps ...},
     "pack_size": 16777216, "compression": "zstd", "compression_level": 3,
     "aead": "aes-256-gcm", "id_hash": "blake3-keyed"}

It holds nothing secret: the chunker's gear-table seed is derived from the master
key. A repository whose ``version`` is newer than this program knows is refused.

Version 2 authenticates it: ``mac`` is the keyed BLAKE3 (key: ``MasterKey.config_mac_key``)
of the canonical JSON of every other field (sorted keys, no spaces). The config must be
read before the key (its id binds the key files), so ``decode`` parses and range-checks
it, and ``verify_mac`` is called as soon as a key file has opened. Version 1 configs
have no MAC: they are read, never written to (``casbackup migrate`` upgrades them).
Version 3 is version 2 plus DELTA blobs (repo/delta.py): a version 2 repository is
read and written as it is (no deltas) until ``casbackup migrate`` raises it to 3.
Version 4 is version 3 plus TREE_DELTA blobs (trees stored as deltas, repo/delta.py); a
version 3 repository is read and written as it is (no tree deltas) until ``migrate``.
"""

from __future__ import annotations

import hmac
import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import blake3

from casbackup.crypto.keys import MasterKey
from casbackup.errors import ConfigTampered, FormatError, UnsupportedFormat

FORMAT_NAME = "casbackup"
# 2: config MAC, names checked; 3: delta blobs; 4: tree delta blobs; 5: snapshot records
# rewritten by `tag` (record version 2); 6: aligned DELTA payloads (repo_format.md "Format
# versions")
FORMAT_VERSION = 6
OLDEST_READABLE = 1

# Ranges a config may hold (checked before anything uses them): zstd's levels (negative
# ones are its fast modes); pack_size bounds what one pack write buffers.
COMPRESSION_LEVELS = range(-7, 23)
PACK_SIZES = range(1 << 20, (512 << 20) + 1)


@dataclass(frozen=True)
class ChunkerParams:
    # pyfastcdc's real average is about avg_size + min_size (cut-point skipping):
    # 256 KiB + 768 KiB gives ~1 MiB chunks, restic's and borg's order of size.
    min_size: int = 256 * 1024
    avg_size: int = 768 * 1024
    max_size: int = 8 * 1024 * 1024
    normalization: int = 1
    algorithm: str = "fastcdc2020"

    def validate(self) -> None:
        sizes = (self.min_size, self.avg_size, self.max_size, self.normalization)
        # A damaged config must be refused, not crash comparing a str with an int.
        if not all(type(v) is int for v in sizes):
            raise FormatError("chunker parameters must be integers")
        if self.algorithm != "fastcdc2020":
            raise UnsupportedFormat(f"chunker {self.algorithm!r} is not supported")
        if not (64 <= self.min_size <= 1 << 20 and 256 <= self.avg_size <= 4 << 20):
            raise FormatError("chunker sizes are out of range")
        if not (1024 <= self.max_size <= 16 << 20 and self.min_size < self.max_size):
            raise FormatError("chunker sizes are out of range")
        if self.normalization not in (0, 1, 2, 3):
            raise FormatError("chunker normalization must be 0 to 3")


# Database dumps dedup far better with small chunks (ANCHORS: a clustered 1% change
# adds 5-9 MB with 1-2 MiB chunks, 1.3 MB with 64 KiB chunks).
DUMP_CHUNKER = ChunkerParams(min_size=32 * 1024, avg_size=64 * 1024, max_size=1024 * 1024)


@dataclass(frozen=True)
class RepoConfig:
    id: str = field(default_factory=lambda: os.urandom(32).hex())
    chunker: ChunkerParams = ChunkerParams()
    dump_chunker: ChunkerParams = DUMP_CHUNKER
    pack_size: int = 16 * 1024 * 1024
    compression: str = "zstd"
    compression_level: int = 3
    aead: str = "aes-256-gcm"
    id_hash: str = "blake3-keyed"
    version: int = FORMAT_VERSION
    mac: str = ""  # hex keyed BLAKE3 of the other fields (version 2); see ``sign``

    @property
    def id_bytes(self) -> bytes:
        return bytes.fromhex(self.id)

    def _fields(self) -> dict[str, Any]:
        doc = {"format": FORMAT_NAME, **asdict(self)}
        doc.pop("mac")
        return doc

    def sign(self, key: MasterKey) -> RepoConfig:
        """This config with its MAC under ``key`` (version 2 and later)."""
        return replace(self, mac=_mac(key, self._fields()))

    def encode(self) -> bytes:
        """The stored bytes. A version 2 config must be signed first (``sign``)."""
        doc = self._fields()
        if self.version >= 2:
            if not self.mac:
                raise ValueError("a version 2 config must be signed before it is written")
            doc["mac"] = self.mac
        return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"

    def verify_mac(self, key: MasterKey) -> None:
        """Raise ConfigTampered unless the MAC matches (call once the key is known).

        Version 1 configs carry no MAC: callers treat them as read-only (MigrationRequired).
        """
        if self.version < 2:
            return
        if not hmac.compare_digest(self.mac, _mac(key, self._fields())):
            raise ConfigTampered(
                "the repository config was changed by someone without the key (its MAC does "
                "not match); refusing to use it. Restore the original 'config' file"
            )

    @property
    def authenticated(self) -> bool:
        """Whether this version carries a MAC (version 1 does not)."""
        return self.version >= 2

    @classmethod
    def decode(cls, data: bytes) -> RepoConfig:
        """Parse and range-check a stored config (not yet authenticated: ``verify_mac``)."""
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise FormatError("repository config is not valid JSON") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise FormatError(
                "this is not a casbackup repository (config has no casbackup format marker)"
            )
        version = doc.get("version")
        if type(version) is not int or version > FORMAT_VERSION or version < OLDEST_READABLE:
            raise UnsupportedFormat(
                f"repository format version {version!r} is not supported by this casbackup "
                f"(it reads versions {OLDEST_READABLE} to {FORMAT_VERSION}); upgrade casbackup"
            )
        known = {"format", *(f for f in cls.__dataclass_fields__ if f != "mac")}
        if version >= 2:
            if not isinstance(doc.get("mac"), str) or len(doc["mac"]) != 64:
                raise ConfigTampered("the repository config has no valid MAC")
            known.add("mac")
            # Every stored field is covered by the MAC; an unknown one would be a field
            # this program ignores, so it cannot be "authenticated" in any useful sense.
            if set(doc) != known:
                raise FormatError("repository config has missing or unknown fields")
        try:
            config = cls(
                id=_typed(doc["id"], str),
                chunker=_chunker(doc["chunker"]),
                dump_chunker=_chunker(doc["dump_chunker"]),
                pack_size=_typed(doc["pack_size"], int),
                compression=_typed(doc["compression"], str),
                compression_level=_typed(doc["compression_level"], int),
                aead=_typed(doc["aead"], str),
                id_hash=_typed(doc["id_hash"], str),
                version=version,
                mac=_typed(doc.get("mac", ""), str),
            )
            bytes.fromhex(config.id)
        except (KeyError, TypeError, ValueError, OverflowError):
            raise FormatError("repository config is missing fields or has bad values") from None
        if len(config.id) != 64:
            raise FormatError("repository id must be 64 hex digits")
        config.validate()
        return config

    def validate(self) -> None:
        """Range-check every parameter (FormatError / UnsupportedFormat)."""
        self.chunker.validate()
        self.dump_chunker.validate()
        if self.compression not in ("zstd", "none"):
            raise UnsupportedFormat(f"compression {self.compression!r} is not supported")
        if self.compression_level not in COMPRESSION_LEVELS:
            raise FormatError(
                f"compression_level {self.compression_level} is out of range (-7 to 22)"
            )
        if self.aead != "aes-256-gcm" or self.id_hash != "blake3-keyed":
            raise UnsupportedFormat(
                "repository uses a cipher or id hash this casbackup does not know"
            )
        if self.pack_size not in PACK_SIZES:
            raise FormatError("pack_size is out of range")


def _typed(value: Any, kind: type) -> Any:
    # bool is an int to Python; 1e9 is a float: neither is a valid size or level.
    if type(value) is not kind:
        raise TypeError(f"expected {kind.__name__}")
    return value


def _chunker(value: Any) -> ChunkerParams:
    if not isinstance(value, dict) or set(value) != set(ChunkerParams.__dataclass_fields__):
        raise TypeError("chunker parameters are incomplete")
    return ChunkerParams(**value)


def _mac(key: MasterKey, fields: dict[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return blake3.blake3(canonical, key=key.config_mac_key).hexdigest()
