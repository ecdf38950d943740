"""``check``'s look at everything but packs, trees and index files: the config, key files,
verification records and duplicate snapshot records. (What this client's rollback record
notices reaches the user as the repository's alerts, printed by the CLI.)

Hash-named objects are checked against their names when they are loaded
(``Repository.get_encrypted``); here every one of them is loaded once, so a copied,
renamed or damaged object is reported by name.
"""

from __future__ import annotations

from casbackup.errors import CasError
from casbackup.repo.config import RepoConfig
from casbackup.repo.keyring import list_key_files
from casbackup.repo.repository import Repository
from casbackup.repo.snapshot import Snapshot, split_rewrites
from casbackup.verify.records import list_records


def check_metadata(repo: Repository, errors: list[str], warnings: list[str]) -> None:
    """Append what is wrong to ``errors`` (damage) and ``warnings`` (worth a look)."""
    _check_config(repo, errors)
    if not repo.config.authenticated:
        warnings.append(
            f"the repository config is format version {repo.config.version}, which is not "
            "authenticated: run 'casbackup migrate'"
        )
    _check_keys(repo, errors, warnings)
    records = list_records(repo)
    errors.extend(records.damaged)
    warnings.extend(w for w in records.warnings if w not in records.damaged)
    snaps = []
    for fid in repo.usable_snapshot_ids():
        try:
            snaps.append(repo.load_snapshot(fid))
        except CasError:
            continue  # the snapshot walk reports it, with what it breaks
    snaps, leftovers = split_rewrites(snaps)
    for old, new in leftovers:
        warnings.append(
            f"snapshot record {old.short_id} is an older record of snapshot {new.short_id} "
            f"(a tag change was interrupted): 'casbackup forget {old.id[:12]}' removes it"
        )
    _check_duplicates(snaps, errors)


def _check_config(repo: Repository, errors: list[str]) -> None:
    """The stored config, read again: still the one opened, still authenticated."""
    try:
        stored = RepoConfig.decode(repo.backend.get("config"))
        stored.verify_mac(repo.key)
    except CasError as exc:
        errors.append(f"config: {exc}")
        return
    if stored != repo.config:
        errors.append("config: it changed while this check ran")


def _check_keys(repo: Repository, errors: list[str], warnings: list[str]) -> None:
    try:
        keys = list_key_files(repo.backend, repo.key_name)
    except CasError as exc:  # a malformed CASBACKUP_KDF_LIMIT: opening already refused it
        warnings.append(f"key files not checked: {exc}")
        return
    for key in keys:
        if key.info is None:
            errors.append(f"key file keys/{key.id} is damaged: {key.problem}")
        elif key.over_limit:
            warnings.append(
                f"key file keys/{key.id} asks for {key.info.kdf.describe()}, above the "
                "limit: it is never tried"
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
