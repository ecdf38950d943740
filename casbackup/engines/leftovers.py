"""Local temporary files of a restore that was killed outright, and who may remove them.

A restore killed by SIGKILL (or a power cut) cannot remove what it wrote on this machine: the
SQLite engine's copy beside the target, the PostgreSQL privileges pass's folder in the temp
folder (the dump's first bytes). Their names carry `<pid>-<token>` (`process_tag()`): the
process's pid and a token drawn once per process, so that the next restore removes those whose
process is gone, and those of an earlier process that had this process's pid (a container's
or a rescue system's restore, run again after a power cut, often gets the same small pid),
and never a live restore's. (The server side of a killed restore is claims.py.)
"""

from __future__ import annotations

import os

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
