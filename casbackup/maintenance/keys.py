"""Key slots: several passphrases for one master key. Adding writes a key file; removing
deletes one, never the last that opens the repository, nor (without force) the one in use."""

from __future__ import annotations

from casbackup.crypto.keyfile import KdfParams
from casbackup.errors import AmbiguousId, NotFound, UsageError, WrongPassword
from casbackup.repo.keyring import KeyEntry, list_key_files
from casbackup.repo.repository import Repository
from casbackup.units import plural

__all__ = ["KeyEntry", "add_key", "change_password", "list_keys", "remove_key"]


def list_keys(repo: Repository) -> list[KeyEntry]:
    """Every key file with its cost (see ``keyring.list_key_files``)."""
    return list_key_files(repo.backend, repo.key_name)


def add_key(repo: Repository, password: bytes, kdf: KdfParams = KdfParams()) -> str:
    """Write a key file that ``password`` opens; its id. UsageError for an empty passphrase,
    MigrationRequired for a repository this program may only read."""
    if not password:
        raise UsageError("an empty passphrase is not allowed")
    return repo.add_key(password, kdf).rsplit("/", 1)[1]


def _resolve(keys: list[KeyEntry], ref: str) -> KeyEntry:
    ref = ref.lower()
    matches = [k for k in keys if k.id.startswith(ref)] if ref else []
    if not matches:
        raise NotFound(f"no key matches {ref!r} (see 'casbackup key list')")
    if len(matches) > 1:
        raise AmbiguousId(f"{ref!r} matches {plural(len(matches), 'key')}; give more digits")
    return matches[0]


def remove_key(repo: Repository, ref: str, *, force: bool = False) -> str:
    """Delete the key file whose id starts with ``ref``; its id. NotFound, AmbiguousId;
    UsageError for the last key opening would try (readable, within the cost limit), or
    the key in use without ``force``."""
    keys = list_keys(repo)
    target = _resolve(keys, ref)
    # Only key files opening would try count as another way in: a damaged one opens
    # nothing, and one over the cost limit is never tried (CASBACKUP_KDF_LIMIT).
    others = [k for k in keys if k.id != target.id and k.info is not None and not k.over_limit]
    if not others:
        raise UsageError(
            "refusing to remove the last key: the repository could never be opened again"
        )
    if target.current and not force:
        raise UsageError(
            "this is the key you opened the repository with; use --force to remove it anyway "
            "(or 'casbackup key passwd' to change the passphrase)"
        )
    repo.backend.delete(f"keys/{target.id}")
    return target.id


def change_password(
    repo: Repository, password: bytes, kdf: KdfParams = KdfParams()
) -> tuple[str, str]:
    """Add a key with the new passphrase, then remove the current one: (new id, old id).

    In this order a crash leaves both passphrases working, never neither. Call it under
    the exclusive lock. WrongPassword, with nothing added, when the key in use is gone: a
    command that changed keys meanwhile (between opening and locking) removed it."""
    old = repo.key_name.rsplit("/", 1)[1]
    if not repo.backend.exists(repo.key_name):
        raise WrongPassword(
            f"key {old[:8]}, which this passphrase opened, was removed meanwhile (another key "
            "change?): this passphrase no longer opens the repository; nothing was changed"
        )
    new = add_key(repo, password, kdf)
    repo.backend.delete(repo.key_name)
    repo.key_name = f"keys/{new}"
    repo.remember_open()  # the new key file is the one to try first from now on
    return new, old
