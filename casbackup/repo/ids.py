"""Id types and object kinds shared by the repository format."""

from __future__ import annotations

from enum import IntEnum
from typing import NewType

import blake3

from casbackup.errors import IntegrityError

ID_SIZE = 32

# A chunk or tree id: keyed BLAKE3 of the plaintext (raw 32 bytes).
BlobId = NewType("BlobId", bytes)
# The name of a stored file (pack, index, snapshot): unkeyed BLAKE3 of its stored bytes, hex.
FileId = NewType("FileId", str)


class Kind(IntEnum):
    """What an encrypted envelope holds; bound into its associated data."""

    DATA = 1
    TREE = 2
    PACK_HEADER = 3
    INDEX = 4
    SNAPSHOT = 5
    LOCK = 6
    VERIFICATION = 7
    CHECK_STATE = 8
    # A data blob stored as a difference to another blob (its base): repo/delta.py.
    # Its id is the keyed hash of the full plaintext it decodes to, as for DATA.
    DELTA = 9
    # A tree stored as a difference to another tree (format version 4): repo/delta.py.
    TREE_DELTA = 10


# Kinds stored as blobs in packs (DELTA only from format version 3 on, TREE_DELTA from 4).
BLOB_KINDS = (Kind.DATA, Kind.TREE, Kind.DELTA, Kind.TREE_DELTA)
# Kinds stored as a difference to a base, and the full kind each resolves to.
DELTA_KINDS = (Kind.DELTA, Kind.TREE_DELTA)
FULL_KIND = {Kind.DELTA: Kind.DATA, Kind.TREE_DELTA: Kind.TREE}
DELTA_OF = {Kind.DATA: Kind.DELTA, Kind.TREE: Kind.TREE_DELTA}


def pack_group(kind: int) -> Kind:
    """The pack a blob of ``kind`` goes to: TREE for trees and tree deltas, else DATA."""
    return Kind.TREE if kind in (Kind.TREE, Kind.TREE_DELTA) else Kind.DATA


_hash_threads = True


def single_threaded_hashing() -> None:
    """For forked helper processes: BLAKE3's thread pool does not survive a fork (a pool
    started in the parent would leave the child waiting for threads that do not exist)."""
    global _hash_threads
    _hash_threads = False


def file_hasher() -> blake3.blake3:
    """An incremental ``file_id``, for a file read in pieces; same threading rule as
    ``file_id`` (threads only where the pool is safe, i.e. never in a forked helper)."""
    return blake3.blake3(max_threads=blake3.blake3.AUTO if _hash_threads else 1)


def file_id(data: bytes | memoryview) -> FileId:
    """Name stored files by the hash of their bytes: damage at rest shows without the key."""
    threads = blake3.blake3.AUTO if _hash_threads and len(data) > 1 << 22 else 1
    return FileId(blake3.blake3(data, max_threads=threads).hexdigest())


def parse_file_id(text: str) -> FileId:
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise ValueError(f"not a file id: {text!r}")
    return FileId(text)


# Objects named by the hash of their stored bytes (packs are checked by check --read-data,
# key files by keyring.find_key): a mismatch means a copied, renamed or damaged object.
HASH_NAMED = ("index/", "snapshots/", "verifications/", "checkstate/")


def check_name(name: str, data: bytes | memoryview) -> None:
    """IntegrityError unless a hash-named object's bytes hash to its name."""
    if name.startswith(HASH_NAMED) and file_id(data) != name.rsplit("/", 1)[1]:
        raise IntegrityError(
            f"{name}: its content does not match its name (copied, renamed or damaged)"
        )
