"""The folders a recovery creates above each source (and a folder source itself), given
what the snapshot recorded for them.

A backup of ``/srv/app`` records ``/srv`` too (mode, owner, times, extended attributes: the
walker stores every folder from / down to a source, archiver/walk.py). recover used to make
``TARGET/srv`` with ``makedirs``: 0777 less the umask (0777 under umask 0, a folder anyone
could rename the source out of), the restoring user's owner and the time of the recovery.

The source folder itself came back with the same default mode (the restore gives the
entries inside the folder it writes into their metadata, not that folder its own).

Now each folder above a source, and a folder source, that does not exist yet is made 0700
at once (nothing more open than it should be while the sources are restored into it) and,
once every source is restored, given the snapshot's mode, owner (as root, as the restore
does for files), extended attributes and times, deepest first (an entry made in a folder
changes its times).
A folder the snapshot does not record (a forged or damaged tree) is left 0755 at most,
owned as the target is. A folder that exists already is never changed: it is this machine's.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from casbackup.archiver.restore_meta import apply_metadata
from casbackup.errors import CasError
from casbackup.recovery.layout import component, is_in_place
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.repo.tree import Node, NodeKind

#: The mode of a folder the snapshot does not record (see the module docstring).
UNRECORDED_MODE = 0o755


@dataclass
class Parents:
    """The folders this recovery created above its sources (``make``), finished by
    ``finish`` once the sources are restored."""

    repo: Repository
    snapshot: Snapshot
    target: str
    owners: bool = field(default_factory=lambda: os.geteuid() == 0)
    _made: list[tuple[str, Node | None]] = field(default_factory=list)

    def make(self, source: str, folder: bool) -> None:
        """Create the missing folders above ``source`` (a snapshot path), and the source
        itself when it is a ``folder`` (the restore applies the metadata of what is inside
        it, not its own), at the places the recovery layout gives them (layout.py:
        ``TARGET/<path>``, or the path itself in place), each 0700. Raises OSError when one
        cannot be made (the restore of the source would fail on it the same way)."""
        parts = [p for p in source.split("/") if p]
        in_place = is_in_place(self.target)
        place = "/" if in_place else self.target
        for i, part in enumerate(parts if folder else parts[:-1]):
            place = os.path.join(place, part if in_place else component(part))
            try:
                os.mkdir(place, 0o700)
            except FileExistsError:
                continue
            self._made.append((place, self._recorded("/" + "/".join(parts[: i + 1]))))

    def _recorded(self, path: str) -> Node | None:
        try:
            node = self.repo.find_node(self.snapshot.root, path)
        except CasError:
            return None
        return node if node is not None and node.kind == NodeKind.DIR else None

    def finish(self) -> list[str]:
        """Give each created folder the snapshot's metadata, deepest first; one warning per
        thing not applied (never raises)."""
        problems: list[str] = []
        for place, node in sorted(self._made, key=lambda m: m[0].count("/"), reverse=True):
            try:
                fd = os.open(place, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                problems.append(f"{place}: its metadata not restored: {exc.strerror}")
                continue
            try:
                if node is None:
                    problems += _unrecorded(fd, place, self.owners)
                    continue
                problems += [
                    f"{place}: {p}"
                    for p in apply_metadata(
                        fd,
                        node.uid,
                        node.gid,
                        stat.S_IMODE(node.mode),
                        node.mtime_ns,
                        owners=self.owners,
                        xattrs=node.xattrs,
                    )  # fmt: skip
                ]
            finally:
                os.close(fd)
        self._made.clear()
        return problems


def _unrecorded(fd: int, place: str, owners: bool) -> list[str]:
    """A created folder the snapshot does not record: owned as the folder above it (the
    target's, or the machine's), ``UNRECORDED_MODE`` at most."""
    try:
        above = os.stat(os.path.dirname(place))
        if owners:
            os.fchown(fd, above.st_uid, above.st_gid)
        os.fchmod(fd, UNRECORDED_MODE)
    except OSError as exc:
        return [f"{place}: not recorded in the snapshot, left as it was made: {exc.strerror}"]
    return []
