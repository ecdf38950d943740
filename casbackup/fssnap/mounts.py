"""Which mount holds a path, from /proc/self/mountinfo (Linux)."""

from __future__ import annotations

import os
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    source: str  # the device or dataset
    root: str  # the folder of the file system mounted here ("/" or a subvolume path)


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts(text: str | None = None) -> list[Mount]:
    if text is None:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
            text = f.read()
    found = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        found.append(Mount(_unescape(fields[4]), tail[0], _unescape(tail[1]), _unescape(fields[3])))
    return found


def mount_of(path: str, text: str | None = None) -> Mount | None:
    """The mount that holds `path` (resolved): the last-mounted of the longest prefix."""
    real = os.path.realpath(path)
    best: Mount | None = None
    for m in mounts(text):
        mp = m.mount_point.rstrip("/") or "/"
        if real == mp or real.startswith(mp.rstrip("/") + "/") or mp == "/":
            if best is None or len(mp) >= len(best.mount_point.rstrip("/") or "/"):
                best = m
    return best
