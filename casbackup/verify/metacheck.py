"""``check``'s look at everything but packs, trees and index files: the config, key files,
verification records, duplicate snapshot records and this client's rollback record.

Hash-named objects are checked against their names when they are loaded
(``Repository.get_encrypted``); here every one of them is loaded once, so a copied,
renamed or damaged object is reported by name.
"""

from __future__ import annotations

from casbackup.crypto.keyfile import KdfLimit, decode_keyfile
from casbackup.errors import CasError
from casbackup.repo.ids import file_id
from casbackup.repo.keyring import MAX_KEYFILE_BYTES
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot
from casbackup.verify.records import list_records


def check_metadata(repo: Repository, errors: list[str], warnings: list[str]) -> None:
    """Append what is wrong to ``errors`` (damage) and ``warnings`` (worth a look)."""
    if not repo.config.authenticated:
        warnings.append(
            f"the repository config is format version {repo.config.version}, which is not "
            "authenticated: run 'casbackup migrate'"
        )
    _check_keys(repo, errors, warnings)
    records = list_records(repo)
    errors.extend(w for w in records.warnings if "is unreadable" in w)
    warnings.extend(w for w in records.warnings if "is unreadable" not in w)
    _check_duplicates(repo.list_snapshots(warnings=[]), errors)


def _check_keys(repo: Repository, errors: list[str], warnings: list[str]) -> None:
    try:
        limit = KdfLimit.from_env()
    except CasError:
        limit = KdfLimit()
    for name, size in sorted(repo.backend.list("keys/")):
        if size > MAX_KEYFILE_BYTES:
            errors.append(f"key file {name} is {size} bytes: not a key file")
            continue
        try:
            data = repo.backend.get(name)
            if file_id(data) != name.rsplit("/", 1)[1]:
                errors.append(f"key file {name}: its content does not match its name")
                continue
            _doc, kdf = decode_keyfile(data)
        except CasError as exc:
            errors.append(f"key file {name} is damaged: {exc}")
            continue
        if not limit.allows(kdf):
            warnings.append(
                f"key file {name} asks for {kdf.describe()}, above the limit: it is never tried"
            )


def _check_duplicates(snapshots: list[Snapshot], errors: list[str]) -> None:
    """The same backup under two names (a copy re-sealed by someone with the key): one
    backup run writes one record, so the same tree, start time and host twice is not a
    second backup."""
    first: dict[tuple[str, int, str, str], Snapshot] = {}
    for snap in snapshots:
        key = (snap.tree, snap.start_ns, snap.host, snap.time)
        other = first.setdefault(key, snap)
        if other is not snap:
            errors.append(
                f"snapshots {other.short_id} and {snap.short_id} are the same backup (same tree, "
                "time and host) stored twice: one of them was copied; 'forget' the one you "
                "did not make"
            )
