"""The repository's plaintext config: the only object readable without a key.

JSON, at ``config``::

    {"format": "casbackup", "version": 1, "id": "<64 hex>",
     "chunker": {"algorithm": "fastcdc2020", "min_size": 262144, "avg_size": 786432,
                 "max_size": 8388608, "normalization": 1},
     "dump_chunker": {... same keys, smaller sizes for database dumps ...},
     "pack_size": 16777216, "compression": "zstd", "compression_level": 3,
     "aead": "aes-256-gcm", "id_hash": "blake3-keyed"}

It holds nothing secret: the chunker's gear-table seed is derived from the master
key. A repository whose ``version`` is newer than this program knows is refused.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from casbackup.errors import FormatError, UnsupportedFormat

FORMAT_NAME = "casbackup"
FORMAT_VERSION = 1


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

    @property
    def id_bytes(self) -> bytes:
        return bytes.fromhex(self.id)

    def encode(self) -> bytes:
        doc = {"format": FORMAT_NAME, **asdict(self)}
        return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> RepoConfig:
        try:
            doc = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise FormatError("repository config is not valid JSON") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
            raise FormatError(
                "this is not a casbackup repository (config has no casbackup format marker)"
            )
        version = doc.get("version")
        if type(version) is not int or version > FORMAT_VERSION or version < 1:
            raise UnsupportedFormat(
                f"repository format version {version!r} is not supported by this casbackup "
                f"(it reads version {FORMAT_VERSION}); upgrade casbackup"
            )
        try:
            config = cls(
                id=str(doc["id"]),
                chunker=ChunkerParams(**doc["chunker"]),
                dump_chunker=ChunkerParams(**doc["dump_chunker"]),
                pack_size=int(doc["pack_size"]),
                compression=str(doc["compression"]),
                compression_level=int(doc["compression_level"]),
                aead=str(doc["aead"]),
                id_hash=str(doc["id_hash"]),
                version=version,
            )
            bytes.fromhex(config.id)
        except (KeyError, TypeError, ValueError, OverflowError):
            raise FormatError("repository config is missing fields or has bad values") from None
        if len(config.id) != 64:
            raise FormatError("repository id must be 64 hex digits")
        config.chunker.validate()
        config.dump_chunker.validate()
        if config.compression not in ("zstd", "none"):
            raise UnsupportedFormat(f"compression {config.compression!r} is not supported")
        if config.aead != "aes-256-gcm" or config.id_hash != "blake3-keyed":
            raise UnsupportedFormat(
                "repository uses a cipher or id hash this casbackup does not know"
            )
        if not (1 << 20 <= config.pack_size <= 512 << 20):
            raise FormatError("pack_size is out of range")
        return config
