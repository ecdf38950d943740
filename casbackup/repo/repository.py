"""The repository: the one object everything above the format talks to.

Write order (the crash-safety argument, see repo_format.md "Invariants"):
1. blobs go into packs; a pack is stored (temp name, fsync, rename, fsync dir)
   before anything names it;
2. an index file naming only stored packs is written after them;
3. a snapshot naming only indexed blobs is written last.
A crash at any point leaves at most packs no index names (``prune`` reclaims them)
or indexed blobs no snapshot uses; never a reference to something missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from casbackup.crypto.keyfile import KdfParams, wrap_key
from casbackup.crypto.keys import MasterKey
from casbackup.errors import (
    CasError,
    ConfigTampered,
    NotFound,
    RepositoryExists,
    RepositoryNotFound,
)
from casbackup.repo.config import RepoConfig
from casbackup.repo.ids import file_id
from casbackup.repo.keyring import KeyChoice, find_key
from casbackup.repo.localstate import LocalState, StateDoc
from casbackup.repo.lock import Lock, acquire_waiting
from casbackup.repo.snapshotstore import SnapshotStore
from casbackup.store.base import Backend, odd_entries


class Repository(SnapshotStore):
    """The repository callers open: ``init``/``open``, keys and locks here; blob storage
    and the index in ``BlobStore`` (blobstore.py); trees and snapshots in
    ``SnapshotStore`` (snapshotstore.py)."""

    # ----------------------------------------------------------------- open/init
    @staticmethod
    def check_can_init(backend: Backend) -> None:
        """Refuse a location that holds a repository or anything else.

        Raises RepositoryExists (exit 20). `init` calls it again; callers call it first so
        that nobody types a new passphrase twice only to learn the location is taken.
        """
        if backend.exists("config"):
            raise RepositoryExists(f"a repository already exists at {backend.location}")
        if any(True for _ in backend.list("")) or odd_entries(backend):
            raise RepositoryExists(
                f"{backend.location} is not empty; choose an empty or new folder"
            )

    @classmethod
    def init(
        cls,
        backend: Backend,
        password: bytes,
        *,
        kdf: KdfParams = KdfParams(),
        config: RepoConfig | None = None,
        key: MasterKey | None = None,
    ) -> Repository:
        """Create a repository. ``key``: reuse another repository's master secret (``init
        --copy-chunker-params-from``: same blob ids and chunker seed, so dedup carries
        across a copy); by default a fresh random one."""
        cls.check_can_init(backend)
        config = config or RepoConfig()
        key = key or MasterKey.generate()
        if config.authenticated:
            config = config.sign(key)
        keyfile = wrap_key(key, password, config.id_bytes, kdf)
        key_name = f"keys/{file_id(keyfile)}"
        # Key first, config last: a folder with a config always has a key that opens it.
        backend.put(key_name, keyfile)
        # Create-only: of two inits racing on one empty location, one wins and the other
        # is told so, instead of both saying 'created' while the second's config replaced
        # the first's (whose passphrase then opens nothing).
        create = getattr(backend, "put_new", None)
        if create is None:
            backend.put("config", config.encode())
        elif not create("config", config.encode()):
            try:
                backend.delete(key_name)  # a key of a repository that never was
            except CasError:
                pass
            raise RepositoryExists(
                f"a repository was created at {backend.location} by someone else meanwhile"
            )
        repo = cls(backend, config, key, key_name)
        repo.remember_open()
        return repo

    @classmethod
    def open(
        cls, backend: Backend, password: bytes, *, choice: KeyChoice | None = None
    ) -> Repository:
        """Open with a passphrase: find its key file (keyring.py), then authenticate the config.

        Raises RepositoryNotFound, WrongPassword, FormatError (damaged key files or
        config), ConfigTampered (the config's MAC fails, or its version went back below
        one this client has seen), UnsupportedFormat (a newer format)."""
        try:
            raw = backend.get("config")
        except NotFound:
            raise RepositoryNotFound(
                f"no repository at {backend.location} (run 'casbackup init' to create one)"
            ) from None
        config = RepoConfig.decode(raw)
        state = LocalState(config.id)
        if config.version < state.doc.format_version:
            raise ConfigTampered(
                f"the repository config is format version {config.version}, but this client "
                f"has opened it as version {state.doc.format_version}: it was rolled back or "
                f"replaced. If you restored an old copy on purpose, delete {state.path}"
            )
        choice = choice or KeyChoice.from_env()
        if not choice.preferred:
            choice = replace(choice, preferred=state.doc.last_key)
        key, name = find_key(backend, config.id_bytes, password, choice)
        config.verify_mac(key)
        repo = cls(backend, config, key, name, state)
        repo.remember_open()
        return repo

    def remember_open(self) -> None:
        """Record the key file that opened the repository and the format version seen."""
        kid = self.key_name.rsplit("/", 1)[1]
        version = self.config.version

        def change(doc: StateDoc) -> bool:
            if doc.last_key == kid and doc.format_version >= version:
                return False
            doc.last_key, doc.format_version = kid, max(doc.format_version, version)
            return True

        self.state.update(change)
        if self.state.problem:
            self.alerts.append(self.state.problem)

    def add_key(self, password: bytes, kdf: KdfParams = KdfParams()) -> str:
        self.require_writable()
        data = wrap_key(self.key, password, self.config.id_bytes, kdf)
        name = f"keys/{file_id(data)}"
        self.backend.put(name, data)
        return name

    def __enter__(self) -> Repository:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def lock(
        self,
        *,
        exclusive: bool = False,
        command: str = "",
        wait_s: float = 0.0,
        on_wait: Callable[[str], None] | None = None,
    ) -> Lock:
        """Take a shared or exclusive lock; LockError (RepositoryBusy: another process
        holds a conflicting one) when it cannot. ``wait_s``: seconds to keep trying while
        another process holds it (``lock.acquire_waiting``; ``on_wait`` hears the first
        refusal)."""
        if exclusive:
            self.require_writable()  # exclusive = forget, prune, repair, key changes
        if wait_s <= 0:
            return Lock(self, exclusive, command).acquire()
        return acquire_waiting(
            self, exclusive=exclusive, command=command, wait_s=wait_s, on_wait=on_wait
        )

    @contextmanager
    def locked(
        self,
        *,
        exclusive: bool = False,
        command: str = "",
        wait_s: float = 0.0,
        on_wait: Callable[[str], None] | None = None,
    ) -> Iterator[Repository]:
        lock = self.lock(exclusive=exclusive, command=command, wait_s=wait_s, on_wait=on_wait)
        try:
            yield self
        finally:
            lock.release()
