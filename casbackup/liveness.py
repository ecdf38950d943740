"""Whether the process that left something behind (a repository lock) may still be
running: its pid, and which process had that pid.

A pid alone does not say: pids are reused, and the same small pid comes back every time
in a container's entrypoint or a rescue system booted again after a power cut. So a
process is identified by its pid namespace, the boot it ran in and its start in clock
ticks after that boot (proc(5): ``/proc/sys/kernel/random/boot_id``, the ``pid:[inode]``
link ``/proc/self/ns/pid``, field 22 of ``/proc/<pid>/stat``). None of these move when
the clock is set, as a start time in wall-clock seconds would. Where they cannot be
read, the answers fall back to "the pid exists", as before.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class ProcessId:
    """Who a process is beyond its pid; each part None where it cannot be read."""

    boot: str | None  # this boot's random id
    pidns: str | None  # "pid:[4026531836]": which pid namespace the pid is in
    start: int | None  # clock ticks after boot at which the process started


_mine: tuple[int, ProcessId] | None = None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as f:
            return f.read().strip() or None
    except (OSError, ValueError):
        return None


def start_ticks(pid: int) -> int | None:
    """Clock ticks after boot at which process ``pid`` started, or None (no such process,
    no /proc, a /proc mounted with hidepid)."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read()
        # The command name (field 2) is in parentheses and may hold spaces and ')':
        # fields are counted after its last ')'. Field 22 is the 20th after it.
        return int(text[text.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def this_process() -> ProcessId:
    """This process's ``ProcessId`` (read once per process)."""
    global _mine
    pid = os.getpid()
    if _mine is None or _mine[0] != pid:
        try:
            pidns: str | None = os.readlink("/proc/self/ns/pid")
        except OSError:
            pidns = None
        _mine = (pid, ProcessId(_read("/proc/sys/kernel/random/boot_id"), pidns, start_ticks(pid)))
    return _mine[1]


def pid_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists (another user's too). Not a process id (0 or
    negative): True, an answer that never lets anything be removed."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists (EPERM: another user's), or cannot tell
    return True


def gone(pid: int, who: ProcessId) -> bool | None:
    """Whether the process of this host that recorded ``pid`` and ``who`` has ended:
    True when it ran in an earlier boot, or its pid no longer exists or is another
    process's now (another start); False when it may still run; None when this process
    cannot tell, because the pid is in another pid namespace (another container sharing
    the host name) where a pid means something else."""
    me = this_process()
    if who.boot is not None and me.boot is not None and who.boot != me.boot:
        return True
    if who.pidns is not None and me.pidns is not None and who.pidns != me.pidns:
        return None
    if not pid_exists(pid):
        return True
    if who.start is not None:
        now = me.start if pid == os.getpid() else start_ticks(pid)
        if now is not None and now != who.start:
            return True
    return False
