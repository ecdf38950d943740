"""What this client remembers about each repository it opened, kept outside the repository.

Whoever can write the repository's storage can put back an old file or delete a new one;
only a record the storage cannot touch notices. Stored per repository id at
``<state root>/<repository id>/state.json`` (folder 0700, file 0600), where the state root
is ``$CASBACKUP_STATE_DIR``, else ``$XDG_STATE_HOME/casbackup``, else
``~/.local/state/casbackup``. JSON::

    {"version": 1,
     "format_version": 2,             newest repository format seen (a lower one: rollback)
     "last_key": "<key file id>",     the key file that opened it last (tried first)
     "snapshots": ["<id>", ...],      snapshots seen and not forgotten here
     "forgotten": ["<id>", ...],      snapshots this client removed (never trusted again)
     "forgetting": ["<id>", ...],     being removed: recorded before the delete, moved to
                                      "forgotten" once it is done (optional key)
     "verifications": {"<snapshot id>": {"id": "<record id>", "time": "<ISO>", "ok": true}}}

Updates are read-merge-write under an ``flock`` on ``state.lock`` beside it, written to an
exclusive temp name, fsynced and renamed, so concurrent commands of one client lose
nothing and a crash leaves the old or the new record. A damaged record is replaced (it
only costs the warnings it would have given).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from casbackup.repo.userdirs import local_base, unwritable_because
from casbackup.units import plural

STATE_VERSION = 1
_FILE = "state.json"
_MAX_BYTES = 64 << 20  # a state file is ids only; anything bigger is not ours


def state_root() -> str:
    explicit = os.environ.get("CASBACKUP_STATE_DIR")
    if explicit:
        return explicit
    return os.path.join(local_base("XDG_STATE_HOME", ".local", "state"), "casbackup")


@dataclass(frozen=True)
class SeenRecord:
    """The newest verification record of one snapshot this client has seen."""

    id: str
    time: str
    ok: bool

    def newer_than(self, other: SeenRecord) -> bool:
        return (self.time, self.id) > (other.time, other.id)


@dataclass
class StateDoc:
    format_version: int = 0
    last_key: str = ""
    snapshots: set[str] = field(default_factory=set)
    forgotten: set[str] = field(default_factory=set)
    verifications: dict[str, SeenRecord] = field(default_factory=dict)
    forgetting: set[str] = field(default_factory=set)

    def encode(self) -> bytes:
        doc = {
            "version": STATE_VERSION,
            "format_version": self.format_version,
            "last_key": self.last_key,
            "snapshots": sorted(self.snapshots),
            "forgotten": sorted(self.forgotten),
            "forgetting": sorted(self.forgetting),
            "verifications": {
                sid: {"id": r.id, "time": r.time, "ok": r.ok}
                for sid, r in sorted(self.verifications.items())
            },
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> StateDoc:
        """ValueError on anything but a well-formed record."""
        try:
            doc = json.loads(data)
            if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
                raise ValueError("unknown state version")
            out = cls(
                format_version=_int(doc["format_version"]),
                last_key=_str(doc["last_key"]),
                snapshots={_str(s) for s in doc["snapshots"]},
                forgotten={_str(s) for s in doc["forgotten"]},
                forgetting={_str(s) for s in doc.get("forgetting", ())},
            )
            for sid, rec in doc["verifications"].items():
                out.verifications[_str(sid)] = SeenRecord(
                    _str(rec["id"]), _str(rec["time"]), bool(rec["ok"])
                )
        except (KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise ValueError(f"malformed state record: {exc}") from None
        return out


def _int(value: Any) -> int:
    if type(value) is not int:
        raise TypeError("expected an integer")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


class LocalState:
    """The record of one repository (by id). Loaded lazily; ``update`` merges and saves."""

    def __init__(self, repo_id: str, root: str | None = None) -> None:
        self.folder = os.path.join(root or state_root(), repo_id)
        self.path = os.path.join(self.folder, _FILE)
        self._doc: StateDoc | None = None
        self.problem = ""  # why the stored record was unusable, if it was

    @property
    def doc(self) -> StateDoc:
        """The last loaded (or saved) record; a read-only view between updates."""
        if self._doc is None:
            self._doc = self._read()
        return self._doc

    def _read(self) -> StateDoc:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return StateDoc()
        except OSError as exc:
            self.problem = f"{self.path}: {exc.strerror}"
            return StateDoc()
        try:
            data = os.read(fd, _MAX_BYTES + 1)
        except OSError as exc:  # a folder in its place, an I/O error: start afresh
            self.problem = f"{self.path}: {exc.strerror}"
            return StateDoc()
        finally:
            os.close(fd)
        try:
            if len(data) > _MAX_BYTES:
                raise ValueError("too large")
            return StateDoc.decode(data)
        except ValueError as exc:
            self.problem = f"{self.path} is damaged ({exc}); starting a new one"
            return StateDoc()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        fd = os.open(
            os.path.join(self.folder, "state.lock"),
            os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def update(self, change: Callable[[StateDoc], bool]) -> StateDoc:
        """Apply ``change`` to the current stored record; save if it returns True.

        Local I/O errors are not fatal (the record is an aid, not the data): the change is
        kept in memory and ``problem`` says why it was not saved."""
        try:
            with self._locked():
                doc = self._read()
                if change(doc):
                    self._write(doc)
        except OSError as exc:
            why = unwritable_because(self.path, state_root(), exc, variable="CASBACKUP_STATE_DIR")
            self.problem = f"cannot save {self.path}: {why}"
            doc = self._doc if self._doc is not None else StateDoc()
            change(doc)
        self._doc = doc
        return doc

    def _write(self, doc: StateDoc) -> None:
        tmp = f"{self.path}.tmp-{os.urandom(6).hex()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(doc.encode())
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.close(fd)
        try:
            os.replace(tmp, self.path)
        except OSError:
            os.unlink(tmp)
            raise
        dfd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def _short(ids: set[str]) -> str:
    shown = ", ".join(sorted(i[:8] for i in ids)[:5])
    return shown + (", ..." if len(ids) > 5 else "")


def screen_snapshots(state: LocalState, present: list[str]) -> tuple[list[str], list[str]]:
    """(the snapshot ids to use, alerts) for a listing of ``snapshots/``.

    A snapshot this client forgot that is present again is left out (a rollback or a
    planted copy must not become ``latest`` nor be recovered). Snapshots this client
    saw that are gone without being forgotten here give one alert: another client's
    ``forget`` does that too, so it is a warning, not an error. The record of seen
    snapshots then follows the listing.

    A snapshot whose forget was interrupted before its file was deleted (``forgetting``,
    present) is an ordinary snapshot again, for the next forget to decide; one whose file
    is gone was forgotten. Neither is an alert: a crash is not a rollback.
    """
    listed = set(present)
    if state.doc.forgetting:

        def settle(d: StateDoc) -> bool:
            d.forgotten |= d.forgetting - listed
            d.snapshots |= d.forgetting & listed
            d.forgetting.clear()
            return True

        state.update(settle)
    doc = state.doc
    back = listed & doc.forgotten
    gone = doc.snapshots - listed
    alerts = []
    if back:
        alerts.append(
            f"{plural(len(back), 'snapshot')} this client forgot {'is' if len(back) == 1 else 'are'} back in the repository "
            f"({_short(back)}): the repository was rolled back or tampered with; they are ignored"
        )
    if gone:
        alerts.append(
            f"{plural(len(gone), 'snapshot')} this client saw before {'is' if len(gone) == 1 else 'are'} gone ({_short(gone)}) and {'was' if len(gone) == 1 else 'were'} "
            "not forgotten here: another client forgot them, or the repository was rolled back"
        )
    fresh = listed - doc.forgotten - doc.snapshots
    if gone or fresh:

        def change(d: StateDoc) -> bool:
            d.snapshots -= gone
            d.snapshots |= listed - d.forgotten
            return True

        state.update(change)
    return [s for s in present if s not in doc.forgotten], alerts


def remember_snapshot(
    state: LocalState, snapshot_id: str, *, forgotten: bool = False, forgetting: bool = False
) -> None:
    """Record a snapshot this client wrote; one it is about to delete (``forgetting``,
    before the delete: a rollback right after it is noticed); or one it deleted
    (``forgotten``, after the delete). A crash between the two leaves it ``forgetting``,
    which the next listing settles (``screen_snapshots``)."""

    def change(d: StateDoc) -> bool:
        if forgetting:
            d.forgetting.add(snapshot_id)
            d.snapshots.discard(snapshot_id)
        elif forgotten:
            d.forgotten.add(snapshot_id)
            d.forgetting.discard(snapshot_id)
            d.snapshots.discard(snapshot_id)
        else:
            d.snapshots.add(snapshot_id)
        return True

    state.update(change)
