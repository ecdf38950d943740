"""Where each part of a snapshot lands on this machine, and whether the target can take it.

One rule for every application, one source or several: a source at ``/etc/myapp`` goes to
``TARGET/etc/myapp``, as ``casbackup restore`` lays a snapshot out. An application whose
sources have different parents (``/etc/myapp``, ``/var/lib/myapp``, ``/srv/myapp/uploads``)
keeps them apart, and the tree below the target is the machine's own, so the operator copies
or mounts it back without renaming anything. The target ``/`` is the recovery in place: each
source back at its own path, where a machine being rebuilt needs it.

Paths from the snapshot are data (anyone who can write the repository with the key may have
forged them): below a target each component is made harmless (never ``..``), so a stored path
cannot leave the target; in place a source is restored only when the local config lists it
among the application's sources (a snapshot never chooses where files go on this machine).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from casbackup.units import human_bytes

IN_PLACE = "/"  # the target of a recovery in place


def is_in_place(target: str) -> bool:
    """Whether ``target`` (an absolute path) means putting each source back at its path."""
    return os.path.normpath(target) == IN_PLACE


def component(name: str) -> str:
    """`name` made one harmless path component: never empty, `.`, `..`, or holding `/` or NUL
    (stored paths are data from the repository; joined as they are they could leave the
    target)."""
    name = name.replace("/", "_").replace("\0", "_")
    return name if name not in ("", ".", "..") else "_" + name.replace(".", "_")


def below(target: str, path: str) -> str:
    """Where the absolute `path` goes below `target`: ``target/<path>``, each component of
    `path` made harmless (empty ones, from ``//`` or a trailing ``/``, are dropped). The
    result is always inside `target`; a path with no component at all is ``target/root``."""
    parts = [component(p) for p in path.split("/") if p != ""]
    return os.path.join(target, *parts) if parts else os.path.join(target, "root")


def dest_paths(target: str, paths: Iterable[str]) -> dict[str, str]:
    """Source path -> the path it is restored to (see the module's rule); in place, the
    source's own path, normalised."""
    if is_in_place(target):
        return {p: os.path.normpath(p) for p in paths}
    return {p: below(target, p) for p in paths}


def configured(path: str, sources: Iterable[str]) -> bool:
    """Whether `path` (a snapshot's source) is one of the local config's `sources`."""
    held = {os.path.normpath(os.path.abspath(s)) for s in sources}
    return os.path.normpath(path) in held


def plain_absolute(path: str) -> bool:
    """Whether `path` is absolute with no `.`, `..`, empty or NUL-holding component (a stored
    path that could not climb anywhere it does not name)."""
    parts = path.split("/")
    return path.startswith("/") and not any(p in ("", ".", "..") or "\0" in p for p in parts[1:])


def target_problem(target: str) -> str | None:
    """Why nothing can be written at `target` (a folder that may not exist yet), checked on
    its nearest existing ancestor; None when it looks writable. Without this a read-only
    target was found out only after the re-check had read every byte of the snapshot."""
    where = target
    while not os.path.lexists(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    if not os.path.isdir(where):
        return f"the target {target} cannot be made: {where} is not a folder"
    try:
        read_only = bool(os.statvfs(where).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    if read_only:
        return f"the target {target} is on a read-only file system"
    if not os.access(where, os.W_OK | os.X_OK):
        return f"the target {target} cannot be written: no permission to write in {where}"
    return None


def space_warning(target: str, needed: int) -> str | None:
    """A warning when the target's file system has less free space than the files' size
    (not a refusal: files with holes and a file system that compresses need less)."""
    where = target
    while not os.path.isdir(where) and os.path.dirname(where) != where:
        where = os.path.dirname(where)
    try:
        st = os.statvfs(where)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    if free >= needed:
        return None
    return (
        f"the target's file system has {human_bytes(free)} free and the files and SQLite "
        f"databases take {human_bytes(needed)}: the recovery will likely stop when it is full"
    )


def not_empty(path: str) -> bool:
    """Whether something is at `path`: a folder with entries, or any other entry."""
    if os.path.isdir(path) and not os.path.islink(path):
        return bool(os.listdir(path))
    return os.path.lexists(path)


def inside(path: str | None, folder: str) -> bool:
    """Whether ``path`` (a database file's) lies in ``folder``, by their absolute names."""
    if not path:
        return False
    return os.path.commonpath([os.path.abspath(path), folder]) == folder
