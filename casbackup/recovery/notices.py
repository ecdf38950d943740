"""What a recovery plan says beyond what it does: parts it cannot bring back, caveats of the
verification it relies on. Each is a plan warning (shown by dry runs, on the terminal and in
the report); none stops the recovery.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from casbackup.repo.snapshot import Snapshot
from casbackup.verify.records import VerificationRecord

VERIFY_WARNINGS_SHOWN = 20  # of the chosen snapshot's verification, in the plan


def not_in_snapshot(
    snap: Snapshot, sources: Iterable[str], databases: Iterable[str], paths: tuple[str, ...]
) -> list[str]:
    """A warning for each of the local config's `sources` (paths) and `databases` (names) of
    the application that `snap` does not hold (`paths`: its source paths): added to the
    config after it was taken, or its backups failed since. The recovery cannot bring them
    back, and used to pass over them without a word."""
    held = {os.path.normpath(p) for p in paths}
    out = [
        f"source {src} is in the config but not in snapshot {snap.short_id}: not recovered"
        for src in sources
        if os.path.normpath(os.path.abspath(src)) not in held
    ]
    names = {r.name for r in snap.databases if isinstance(r.name, str)}
    out.extend(
        f"database {name!r} is in the config but not in snapshot {snap.short_id}: not recovered"
        for name in databases
        if name not in names
    )
    return out


def verification_warnings(snap: Snapshot, record: VerificationRecord | None) -> list[str]:
    """The warnings of the verification `record` of `snap` the recovery relies on (at most
    VERIFY_WARNINGS_SHOWN, then how many more): what it could not prove, such as roles a
    dump's privileges need that the backup does not create, or files a sandbox cannot hold.
    They used to be in the record only, and recover said just 'verified'."""
    if record is None:
        return []
    said = [w for w in record.warnings if isinstance(w, str)]
    out = [
        f"the verification of snapshot {snap.short_id} ({record.time[:19]}) warned: {w}"
        for w in said[:VERIFY_WARNINGS_SHOWN]
    ]
    if len(said) > VERIFY_WARNINGS_SHOWN:
        out.append(
            f"... and {len(said) - VERIFY_WARNINGS_SHOWN} more warnings of that verification "
            "(the report's 'verification' lists them)"
        )
    return out
