"""The repository's object names and size caps: what a backend accepts, lists and reads.

Whoever can write to the storage can plant anything there: a symlink ``data/au`` to a
folder outside the repository, a file named ``authorized_keys``, a FIFO, a 4 GiB sparse
snapshot. Every backend therefore accepts only names of the exact shape the format
writes (repo_format.md "Layout"), in their exact folder, and reads an object whole only
when its size is under the cap of its kind (repo_format.md "Limits readers enforce").
Anything else met in a listing is an *odd entry*: never followed, read or deleted,
reported by ``check`` and skipped (with a warning) by everything else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from casbackup.errors import StorageError

KiB = 1024
MiB = 1024 * KiB

# Encrypted objects other than packs decompress to at most 64 MiB (repo/codec.py); the
# stored form adds the envelope and zstd's frame, far less than this slack.
_ENVELOPE_SLACK = 64 * KiB
_DECOMPRESSED_MAX = 64 * MiB

#: Top-level folders and the shape of the names inside them (the leaf only).
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_PACK_FOLDER = re.compile(r"[0-9a-f]{2}")
#: Temp files the local backend writes: ``<leaf>.tmp-<12 hex>``, ``upload.tmp-<12 hex>``.
TMP_MARK = ".tmp-"
_TEMP = re.compile(r"(?:[0-9a-f]{64}|[0-9a-f]{32}|config|upload)\.tmp-[0-9a-f]{12}")


@dataclass(frozen=True)
class Rule:
    """One kind of object: the shape of its leaf name and the most a whole read may return."""

    kind: str
    leaf: re.Pattern[str]
    cap: int  # bytes; a whole-object read of a larger object is refused


FOLDERS: dict[str, Rule] = {
    "keys": Rule("key file", _HEX64, 64 * KiB),
    "locks": Rule("lock", _HEX32, 64 * KiB),
    "snapshots": Rule("snapshot", _HEX64, 16 * MiB),
    "verifications": Rule("verification record", _HEX64, 16 * MiB),
    "checkstate": Rule("check state", _HEX64, _DECOMPRESSED_MAX + _ENVELOPE_SLACK),
    "index": Rule("index file", _HEX64, _DECOMPRESSED_MAX + _ENVELOPE_SLACK),
}
#: Packs are read in ranges the index gives; only prune's repack reads one whole, and
#: no pack is larger than the largest pack_size (512 MiB) plus one blob and its header.
PACK_RULE = Rule("pack", _HEX64, 640 * MiB)
CONFIG_RULE = Rule("config", re.compile("config"), 64 * KiB)
#: Every folder a repository may contain (``data`` holds the 256 ``data/<xx>`` folders).
TOP_FOLDERS = frozenset([*FOLDERS, "data"])


class ObjectRefused(StorageError):
    """An object exists under a valid name but may not be read: it is not a regular
    file, or it is larger than the cap of its kind. The storage is damaged (or hostile)."""


def rule_for(name: str) -> Rule | None:
    """The rule of a well-formed object name, or None when the name is not one the format
    writes (``data/<first two hex of id>/<64 hex>``, ``index/<64 hex>``, ...)."""
    if name == "config":
        return CONFIG_RULE
    parts = name.split("/")
    if len(parts) == 2:
        rule = FOLDERS.get(parts[0])
        if rule is not None and rule.leaf.fullmatch(parts[1]):
            return rule
        return None
    if len(parts) == 3 and parts[0] == "data" and _HEX64.fullmatch(parts[2]):
        if parts[1] == parts[2][:2]:
            return PACK_RULE
    return None


def check_name(name: str) -> Rule:
    """The rule of ``name``; raises StorageError for any name the format never writes."""
    rule = rule_for(name)
    if rule is None:
        raise StorageError(f"invalid object name {name!r}")
    return rule


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temp file a local backend leaves when a write dies midway,
    in a folder where it writes them (the top, a top folder, or ``data/<xx>``)."""
    parts = name.split("/")
    if not _TEMP.fullmatch(parts[-1]):
        return False
    folders = parts[:-1]
    if not folders:
        return True
    if folders[0] not in TOP_FOLDERS:
        return False
    if len(folders) == 1:
        return True
    return len(folders) == 2 and folders[0] == "data" and bool(_PACK_FOLDER.fullmatch(folders[1]))


def is_folder(path: str) -> bool:
    """Whether ``path`` is a folder of the layout: a top folder or ``data/<2 hex>``."""
    parts = path.split("/")
    if len(parts) == 1:
        return parts[0] in TOP_FOLDERS
    return len(parts) == 2 and parts[0] == "data" and bool(_PACK_FOLDER.fullmatch(parts[1]))


def check_size(name: str, size: int, rule: Rule) -> None:
    """Raise ObjectRefused when a whole read of ``name`` would return more than its cap."""
    if size > rule.cap:
        raise ObjectRefused(
            f"{name} is damaged: {size} bytes, more than the {rule.cap} a {rule.kind} may have"
        )


class SkippedEntries:
    """Odd entries a backend's listings skipped in this run (a bounded record, for warnings)."""

    LIMIT = 100

    def __init__(self) -> None:
        self.entries: dict[str, str] = {}  # name -> why (first LIMIT only)
        self.more = 0

    def add(self, name: str, why: str) -> None:
        if name in self.entries:
            return
        if len(self.entries) >= self.LIMIT:
            self.more += 1
            return
        self.entries[name] = why

    def names(self) -> list[str]:
        """The recorded names (without forgetting them)."""
        return list(self.entries)

    def take(self) -> list[str]:
        """The recorded entries as one-line warnings, and forget them."""
        lines = [
            f"skipped {name!r} in the repository: {why} (run 'casbackup check')"
            for name, why in self.entries.items()
        ]
        if self.more:
            lines.append(f"skipped {self.more} more odd entries in the repository")
        self.entries, self.more = {}, 0
        return lines


def filter_listing(
    items: Iterable[tuple[str, int]], prefix: str, skipped: SkippedEntries
) -> list[tuple[str, int]]:
    """Well-formed names under ``prefix`` (a backend without folders, such as memory);
    others are recorded in ``skipped``."""
    out = []
    for name, size in items:
        if not name.startswith(prefix):
            continue
        if rule_for(name) is None:
            if not is_temp_name(name):
                skipped.add(name, "is not a name the repository format uses")
            continue
        out.append((name, size))
    return out
