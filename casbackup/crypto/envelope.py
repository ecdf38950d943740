"""Authenticated encryption of every stored object: the envelope.

Layout (all integers big-endian; byte counts in brackets)::

    version [1] = 0x01
    session [16]   random per writing session
    counter [8]    per-session message counter
    ciphertext+tag [n+16]   AES-256-GCM(session_key, nonce, codec[1] || payload, aad)

    session_key = keyed-BLAKE3(key=encryption_root, session)
    nonce       = 0x00000000 || counter            (12 bytes)
    aad         = version || session || counter || kind[1] || object_id[32]

Why a (key, nonce) pair never repeats: every process that writes opens a new
session with 16 fresh random bytes, hence its own AEAD key, and counts nonces
from 0 in memory. A crash loses the counter but also the session: the next run
draws a new one. Two clients writing at once draw different sessions (a collision
needs ~2^64 sessions). No nonce state is stored or shared, so nothing a server or
another client does can make a client reuse one.

Binding ``kind`` and ``object_id`` (the chunk id for chunks) as associated data
means a blob moved, swapped or relabelled inside a pack fails authentication.
"""

from __future__ import annotations

import os
import struct
import threading

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from casbackup.errors import FormatError, IntegrityError

VERSION = 1
HEADER = struct.Struct(">B16sQ")  # version[1] session[16] counter[8] = 25 bytes
TAG_SIZE = 16
OVERHEAD = HEADER.size + TAG_SIZE
ZERO_ID = bytes(32)


class Sealer:
    """Encrypts objects for one writing session. Thread-safe."""

    def __init__(self, encryption_root: bytes) -> None:
        self._root = encryption_root
        self._session = os.urandom(16)
        self._aead = AESGCM(blake3.blake3(self._session, key=encryption_root).digest())
        self._counter = 0
        self._lock = threading.Lock()

    def _next_counter(self) -> int:
        with self._lock:
            value = self._counter
            self._counter += 1
        if value >= 1 << 63:  # unreachable in practice; never wrap
            raise RuntimeError("session counter exhausted")
        return value

    def seal(self, kind: int, object_id: bytes, plaintext: bytes) -> bytes:
        counter = self._next_counter()
        header = HEADER.pack(VERSION, self._session, counter)
        nonce = b"\0\0\0\0" + counter.to_bytes(8, "big")
        aad = header + bytes((kind,)) + object_id
        return header + self._aead.encrypt(nonce, plaintext, aad)


class Opener:
    """Decrypts envelopes from any session. Caches per-session AEAD objects. Thread-safe."""

    def __init__(self, encryption_root: bytes) -> None:
        self._root = encryption_root
        self._cache: dict[bytes, AESGCM] = {}
        self._lock = threading.Lock()

    def _aead(self, session: bytes) -> AESGCM:
        aead = self._cache.get(session)
        if aead is None:
            aead = AESGCM(blake3.blake3(session, key=self._root).digest())
            with self._lock:
                if len(self._cache) > 4096:  # bound memory on repositories with many sessions
                    self._cache.clear()
                self._cache[session] = aead
        return aead

    def open(self, kind: int, object_id: bytes, envelope: bytes | memoryview) -> bytes:
        if len(envelope) < OVERHEAD:
            raise FormatError("encrypted object is too short")
        version, session, counter = HEADER.unpack_from(envelope, 0)
        if version != VERSION:
            raise FormatError(f"unknown envelope version {version}")
        header = bytes(envelope[: HEADER.size])
        nonce = b"\0\0\0\0" + counter.to_bytes(8, "big")
        aad = header + bytes((kind,)) + object_id
        try:
            # A view, not a copy: AESGCM reads any buffer (a pack's blobs are read into one).
            view = memoryview(envelope)[HEADER.size :]
            return self._aead(session).decrypt(nonce, view, aad)
        except InvalidTag:
            raise IntegrityError("authentication failed (data damaged or not ours)") from None
