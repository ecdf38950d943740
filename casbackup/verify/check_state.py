"""Per-pack verification results, so bounded ``check --max-duration`` runs cover everything.

Stored as ``checkstate/<file id>``: an envelope (kind CHECK_STATE, zero object id)
whose plaintext, after the codec byte, is compact JSON with sorted keys::

    {"packs": {"<pack file id>": {"ok": true, "verified": 1795735706}, ...},
     "updated": "2026-11-26T23:28:26+00:00", "version": 1}

``verified`` is when the pack was last read in full (unix seconds), ``ok`` whether it
passed then. A new state is written before the previous ones are deleted, so a crash
leaves two, never none; readers merge every state they find (the newest verdict per
pack wins), which also makes two concurrent checks harmless.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from casbackup.errors import CasError, NotFound
from casbackup.repo.ids import FileId, Kind
from casbackup.repo.repository import Repository

STATE_DIR = "checkstate"
STATE_VERSION = 1


@dataclass(frozen=True)
class PackVerdict:
    verified: int
    ok: bool


@dataclass
class CheckState:
    packs: dict[FileId, PackVerdict]
    names: list[str]  # the stored objects this state was read from (replaced on save)

    def order(self, packs: Iterable[FileId]) -> list[FileId]:
        """Packs that failed last time first, then never verified ones, then oldest first.

        Ties are shuffled so that a repository verified all at once is not always read in
        the same order."""
        candidates = list(packs)
        random.shuffle(candidates)

        def rank(pack: FileId) -> tuple[int, int]:
            verdict = self.packs.get(pack)
            if verdict is None:
                return (1, 0)
            return (0 if not verdict.ok else 2, verdict.verified)

        return sorted(candidates, key=rank)

    def record(self, packs: Iterable[FileId], damaged: set[str], when: int) -> None:
        for pack in packs:
            self.packs[pack] = PackVerdict(when, pack not in damaged)

    def encode(self, present: Iterable[FileId]) -> bytes:
        keep = set(present)
        doc = {
            "version": STATE_VERSION,
            "updated": datetime.now(UTC).replace(microsecond=0).isoformat(),
            "packs": {p: {"verified": v.verified, "ok": v.ok}
                      for p, v in sorted(self.packs.items()) if p in keep},
        }  # fmt: skip
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _decode(data: bytes) -> dict[FileId, PackVerdict]:
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        raise ValueError("unknown check state version")
    return {
        FileId(p): PackVerdict(int(v["verified"]), bool(v["ok"])) for p, v in doc["packs"].items()
    }


def load_check_state(repo: Repository, warnings: list[str]) -> CheckState:
    state = CheckState({}, [])
    for name, _size in sorted(repo.backend.list(f"{STATE_DIR}/")):
        try:
            packs = _decode(repo.get_encrypted(name, Kind.CHECK_STATE))
        except NotFound:
            continue
        except (CasError, ValueError, KeyError, TypeError, AttributeError) as exc:
            # Only a cache of past work: a damaged one costs re-reading, nothing else.
            warnings.append(f"check state {name} is unreadable ({exc}); it will be replaced")
            state.names.append(name)
            continue
        state.names.append(name)
        for pack, verdict in packs.items():
            old = state.packs.get(pack)
            if old is None or verdict.verified > old.verified:
                state.packs[pack] = verdict
    return state


def save_check_state(repo: Repository, state: CheckState, present: Iterable[FileId]) -> FileId:
    """Write the new state, then delete the ones it replaces (never the other way round)."""
    fid = repo.save_file_object(STATE_DIR, Kind.CHECK_STATE, state.encode(present))
    for name in state.names:
        if name == f"{STATE_DIR}/{fid}":
            continue
        try:
            repo.backend.delete(name)
        except NotFound:
            pass
    state.names = [f"{STATE_DIR}/{fid}"]
    return fid
