"""Local temporary files of a restore that was killed outright, and who may remove them.

A restore killed by SIGKILL (or a power cut) cannot remove what it wrote on this machine: the
SQLite engine's copy beside the target, the PostgreSQL privileges pass's folder in the temp
folder (the dump's first bytes); nor can a backup killed while SQLite copies the database into
the temp folder (sqlite.py). Their names carry `<pid>-<token>` (`process_tag()`): the
process's pid and a token drawn once per process, so that the next restore removes those whose
process is gone, and those of an earlier process that had this process's pid (a container's
or a rescue system's restore, run again after a power cut, often gets the same small pid),
and never a live restore's. (The server side of a killed restore is claims.py.)
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable

from casbackup.liveness import pid_exists

_TOKEN: tuple[int, str] | None = None  # (pid, token) of this process


def _token() -> str:
    """This process's token (a forked child draws its own)."""
    global _TOKEN
    if _TOKEN is None or _TOKEN[0] != os.getpid():
        _TOKEN = (os.getpid(), os.urandom(4).hex())
    return _TOKEN[1]


def process_tag() -> str:
    """`<pid>-<token>` of this process: 8 lowercase hex digits for the token."""
    return f"{os.getpid()}-{_token()}"


def is_stale(pid: int, token: str) -> bool:
    """Whether the process that wrote a name tagged `pid`-`token` is gone: no process has
    that pid, or this process has it under another token."""
    if pid == os.getpid():
        return token != _token()
    return not pid_exists(pid)


def sweep_stale_folders(
    parent: str, pattern: re.Pattern[str], remove: Callable[[str], None]
) -> list[str]:
    """Remove, with ``remove(path)``, the folders in ``parent`` whose name ``pattern`` matches
    in full with groups (pid, token) of a process that is gone (``is_stale``); returns their
    paths. Only this user's real folders (lstat: a symlink is never one); anything that
    cannot be removed now is left for the next sweep. Never raises."""
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    for name in names:
        match = pattern.fullmatch(name)
        if match is None or not is_stale(int(match.group(1)), match.group(2)):
            continue
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                continue
            remove(path)
        except OSError:
            continue  # gone meanwhile, or not ours to remove
        removed.append(path)
    return removed
