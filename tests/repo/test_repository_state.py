"""A stateful test of Repository against a dict model (zarr's approach), on MemoryBackend."""

from __future__ import annotations

import os
import shutil

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from casbackup.repo.ids import BlobId, Kind
from casbackup.repo.indexcache import cache_root
from casbackup.repo.repository import Repository
from casbackup.store.memory import MemoryBackend
from casbackup.testing.fixtures import make_repo, open_repo
from casbackup.verify.repair import repair_index

# Small blobs never fill a (1 MiB) pack, so nothing is stored before an explicit flush.
blob_data = st.binary(max_size=300) | st.sampled_from([b"", b"same", bytes(1000)])


class RepositoryMachine(RuleBasedStateMachine):
    repo: Repository

    @initialize()
    def create(self) -> None:
        self.backend = MemoryBackend()
        self.repo = make_repo(self.backend)
        self.durable: dict[BlobId, tuple[Kind, bytes]] = {}  # flushed: survives reopen
        self.pending: dict[BlobId, tuple[Kind, bytes]] = {}  # saved, not yet flushed

    def _known(self) -> dict[BlobId, tuple[Kind, bytes]]:
        return {**self.durable, **self.pending}

    @rule(kind=st.sampled_from([Kind.DATA, Kind.TREE]), data=blob_data)
    def save_blob(self, kind: Kind, data: bytes) -> None:
        blob_id, added = self.repo.save_blob(kind, data)
        assert blob_id == self.repo.blob_id(data)
        assert added == (blob_id not in self._known())
        if added:
            self.pending[blob_id] = (kind, data)

    @rule()
    def flush(self) -> None:
        self.repo.flush()
        self.durable.update(self.pending)
        self.pending.clear()

    @precondition(lambda self: bool(self._known()))
    @rule(data=st.data())
    def load_blob(self, data: st.DataObject) -> None:
        # Insertion order, not sorted ids: ids are keyed by a fresh random key each run,
        # so sorting them would make hypothesis replay a different choice.
        blob_id = data.draw(st.sampled_from(list(self._known())))
        kind, expected = self._known()[blob_id]
        assert self.repo.load_blob(blob_id, kind) == expected
        if blob_id in self.pending:  # loading an unflushed blob stores its pack first
            self.flush()

    @rule(wipe_cache=st.booleans())
    def reopen(self, wipe_cache: bool) -> None:
        self.repo.close()
        if wipe_cache:
            shutil.rmtree(os.path.join(cache_root(), self.repo.config.id), ignore_errors=True)
        self.repo = open_repo(self.backend)
        self.pending.clear()  # never flushed: gone with the process

    @precondition(lambda self: not self.pending)
    @rule(read_all_packs=st.booleans())
    def repair(self, read_all_packs: bool) -> None:
        result = repair_index(self.repo, read_all_packs=read_all_packs)
        assert result.blobs == len(self.durable) and not result.packs_unreadable

    @invariant()
    def has_blob_agrees(self) -> None:
        if not hasattr(self, "repo"):
            return
        for blob_id in self._known():
            assert self.repo.has_blob(blob_id)
        assert not self.repo.has_blob(self.repo.blob_id(b"never saved"))

    @rule()
    def every_durable_blob_loads(self) -> None:
        for blob_id, (kind, data) in self.durable.items():
            assert self.repo.load_blob(blob_id, kind) == data

    def teardown(self) -> None:
        if hasattr(self, "repo"):
            self.repo.close()


RepositoryMachine.TestCase.settings = settings(
    max_examples=50, stateful_step_count=25, deadline=None
)
TestRepository = RepositoryMachine.TestCase
