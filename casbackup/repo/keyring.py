"""Finding the key file a passphrase opens, without letting planted key files set the cost.

Key files are plaintext and anyone who can write the storage can add some. Opening
therefore (1) tries first the key file that opened this repository last on this client
(``LocalState.last_key``), then the others from the cheapest Argon2 cost up; (2) caps
the Argon2 cost a key file may ask for (``KdfLimit``); (3) skips key files over
``MAX_KEYFILE_BYTES`` unread, and key files whose content does not match their name;
(4) runs Argon2 for at most ``max_tries`` key files (``CASBACKUP_KEY_TRIES``, default
20) costing at most twice the limit's cost in all (unless ``CASBACKUP_KEY_TRIES`` is
set), or only for the key files whose id starts with ``CASBACKUP_KEY_FILE``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from casbackup.crypto.keyfile import (
    KdfLimit,
    KdfParams,
    KeyFileInfo,
    keyfile_info,
    require_within,
    unwrap_key,
)
from casbackup.crypto.keys import MasterKey
from casbackup.errors import (
    CasError,
    FormatError,
    StorageError,
    UnsupportedFormat,
    UsageError,
    WrongPassword,
)
from casbackup.repo.ids import file_id
from casbackup.store.base import Backend

MAX_KEYFILE_BYTES = 64 * 1024  # a key file is about 500 bytes of JSON
DEFAULT_MAX_TRIES = 20
TRIES_ENV = "CASBACKUP_KEY_TRIES"
SELECT_ENV = "CASBACKUP_KEY_FILE"


@dataclass(frozen=True)
class KeyChoice:
    """How to pick key files: the one to try first, a prefix filter, a bound, a cost cap."""

    preferred: str = ""  # key file id (no "keys/")
    select: str = ""  # only ids starting with this
    max_tries: int = DEFAULT_MAX_TRIES
    limit: KdfLimit = KdfLimit()
    # The key files tried may cost at most twice the limit's cost in all (one is always
    # tried); off when CASBACKUP_KEY_TRIES asks for a number of tries.
    budgeted: bool = True

    @property
    def budget(self) -> int | None:
        """KiB-passes of Argon2 the key files tried may cost together, None for no bound."""
        return 2 * self.limit.memory_kib * self.limit.iterations if self.budgeted else None

    @classmethod
    def from_env(cls, preferred: str = "") -> KeyChoice:
        """``CASBACKUP_KEY_FILE``, ``CASBACKUP_KEY_TRIES`` and ``CASBACKUP_KDF_LIMIT``."""
        select = os.environ.get(SELECT_ENV, "").strip().lower()
        if select.startswith("keys/"):
            select = select[5:]
        if select and any(c not in "0123456789abcdef" for c in select):
            raise UsageError(f"{SELECT_ENV}={select!r} is not a key file id or prefix")
        tries_text = os.environ.get(TRIES_ENV, "").strip()
        if tries_text and (
            not (tries_text.isascii() and tries_text.isdigit()) or int(tries_text) < 1
        ):
            raise UsageError(f"{TRIES_ENV}={tries_text!r}: give a positive number")
        tries = int(tries_text) if tries_text else DEFAULT_MAX_TRIES
        return cls(preferred, select, tries, KdfLimit.from_env(), budgeted=not tries_text)


def _cost(kdf: KdfParams) -> int:
    """What one Argon2 run of ``kdf`` costs, in KiB-passes (its time grows with both)."""
    return kdf.memory_kib * kdf.iterations


def find_key(
    backend: Backend, repo_id: bytes, password: bytes, choice: KeyChoice
) -> tuple[MasterKey, str]:
    """(master key, "keys/<id>") of the first key file ``password`` opens.

    The key file that opened last on this client is tried first, alone. The others are
    then read and checked (no Argon2) and tried from the cheapest up (by name among
    equals): a planted key file that asks for the most the limit allows (about 18 s of
    Argon2 each) is tried after the real ones, also on a client that never opened the
    repository.

    Raises WrongPassword when none opens (naming how many were skipped and, when the
    bound stopped the search, the variables that widen it), FormatError when every key
    file is unusable (damaged, too large, or too costly), UnsupportedFormat when every one
    is of a format this casbackup does not know, FormatError when there is none.
    """
    sizes = {name.rsplit("/", 1)[1]: size for name, size in backend.list("keys/")}
    if not sizes:
        raise FormatError(f"repository at {backend.location} has no key files")
    ids = sorted(k for k in sizes if k.startswith(choice.select))
    if not ids:
        raise UsageError(f"no key file's id starts with {choice.select!r} ({SELECT_ENV})")
    damaged: list[str] = []
    newer = 0  # of them, key files of a format this casbackup does not know
    tried = 0
    spent = 0  # KiB-passes of the Argon2 runs so far

    def unusable(name: str, exc: CasError) -> None:
        nonlocal newer
        damaged.append(f"{name}: {exc}")  # a damaged key file must not hide a good one
        newer += isinstance(exc, UnsupportedFormat)

    def attempt(kid: str) -> MasterKey | None:
        nonlocal tried, spent
        name = f"keys/{kid}"
        try:
            if sizes[kid] > MAX_KEYFILE_BYTES:
                raise FormatError(f"{sizes[kid]} bytes, not a key file")
            data = backend.get(name)
            spent += _cost(_checked(data, kid, choice.limit))
            return unwrap_key(data, password, repo_id, choice.limit)
        except WrongPassword:
            tried += 1  # only attempts that ran Argon2 count against the bounds
        except (FormatError, UnsupportedFormat, StorageError) as exc:  # StorageError: refused
            unusable(name, exc)
        return None

    # The key file that opened last, alone first: a client that knows it reads no other.
    if choice.preferred in ids:
        key = attempt(choice.preferred)
        if key is not None:
            return key, f"keys/{choice.preferred}"
    costs: dict[str, int] = {}
    for kid in ids:
        if kid == choice.preferred:
            continue
        try:
            if sizes[kid] > MAX_KEYFILE_BYTES:
                raise FormatError(f"{sizes[kid]} bytes, not a key file")
            costs[kid] = _cost(_checked(backend.get(f"keys/{kid}"), kid, choice.limit))
        except (FormatError, UnsupportedFormat, StorageError) as exc:
            unusable(f"keys/{kid}", exc)
    # Only ids and costs are kept (a key file is read again when tried), never many files.
    budget = choice.budget
    for kid in sorted(costs, key=lambda kid: (costs[kid], kid)):
        if tried >= choice.max_tries:
            break
        if budget is not None and tried and spent + costs[kid] > budget:
            break  # planted key files at the limit must not cost a typo minutes
        key = attempt(kid)
        if key is not None:
            return key, f"keys/{kid}"
    untried = len(ids) - tried - len(damaged)
    if damaged and not tried and not untried:
        # Not the passphrase's fault: saying "wrong passphrase" would send users astray.
        if newer == len(damaged):  # a newer casbackup's key files, as a newer config is
            raise UnsupportedFormat(
                f"no key file of this repository can be read by this casbackup "
                f"({damaged[0]}); upgrade casbackup"
            )
        raise FormatError(f"no key file of this repository is readable ({damaged[0]})")
    skipped = f" ({len(damaged)} damaged key files skipped)" if damaged else ""
    if untried > 0:
        raise WrongPassword(
            f"wrong passphrase: no key file of the {tried} tried opens with it{skipped}; "
            f"{untried} more not tried: set {TRIES_ENV}={len(ids)} to try them all, or "
            f"{SELECT_ENV}=<id> to pick the key file (its name under keys/)"
        )
    raise WrongPassword(f"wrong passphrase: no key file of this repository opens with it{skipped}")


def _checked(data: bytes, kid: str, limit: KdfLimit) -> KdfParams:
    """The cost ``data`` asks for, once it is a well-formed key file named ``kid`` within
    ``limit``. FormatError (naming the limit's variable when over it), UnsupportedFormat."""
    if file_id(data) != kid:
        raise FormatError("its content does not match its name")
    kdf = keyfile_info(data).kdf
    require_within(kdf, limit)
    return kdf


@dataclass(frozen=True)
class KeyEntry:
    id: str  # the key file's id (its name under keys/)
    current: bool  # the key that opened this session
    info: KeyFileInfo | None  # None when the key file cannot be read
    problem: str = ""
    over_limit: bool = False  # asks for more than KdfLimit: opening never tries it


def list_key_files(backend: Backend, current: str = "") -> list[KeyEntry]:
    """Every key file with its cost, by name; damaged ones (too large, not matching their
    name, undecodable) with their problem. ``current`` is "keys/<id>" of the open key.
    UsageError if ``CASBACKUP_KDF_LIMIT`` is malformed."""
    limit = KdfLimit.from_env()
    entries = []
    for name, size in sorted(backend.list("keys/")):
        kid = name.rsplit("/", 1)[1]
        info: KeyFileInfo | None = None
        problem = ""
        try:
            if size > MAX_KEYFILE_BYTES:
                raise FormatError(f"{size} bytes: not a key file")
            data = backend.get(name)
            if file_id(data) != kid:
                raise FormatError("its content does not match its name")
            info = keyfile_info(data)
        except CasError as exc:
            problem = str(exc)
        over = info is not None and not limit.allows(info.kdf)
        entries.append(KeyEntry(kid, name == current, info, problem, over))
    return entries
