"""Where this client keeps its own files (the index cache, the local state), and what to
say when it may not write there.

``sudo casbackup ...`` may keep the user's HOME (``sudo -E``, older Ubuntu's sudo,
scripts that set it): root then made the user's ``~/.cache/casbackup`` and
``~/.local/state/casbackup`` root's, and the user's own next backup failed on its
cache with a bare "Permission denied". As root, a default location inside another
user's folder is not taken: root's own home is (pip does the same, for its cache).
"""

from __future__ import annotations

import errno
import os
import pwd
import shlex
import stat

from casbackup.store.ownership import user_name

__all__ = ["ForeignCacheEntry", "local_base", "refuse_foreign", "unwritable_because"]


def local_base(xdg_var: str, *under_home: str) -> str:
    """``$xdg_var``, else ``~/<under_home...>``; as root, when that lies in a folder another
    user owns, the same under root's own home (from the passwd database)."""
    base = os.environ.get(xdg_var) or os.path.join(os.path.expanduser("~"), *under_home)
    if os.geteuid() == 0 and _nearest_owner(base) not in (None, 0):
        try:
            home = pwd.getpwuid(0).pw_dir
        except KeyError:
            return base
        return os.path.join(home, *under_home)
    return base


def _nearest_owner(path: str) -> int | None:
    """The owner of ``path``, or of its nearest folder that exists; None if none can be seen."""
    path = os.path.abspath(path)
    while True:
        try:
            return os.stat(path).st_uid
        except OSError:
            parent = os.path.dirname(path)
            if parent == path:
                return None
            path = parent


def unwritable_because(
    path: str, top: str, exc: OSError, *, variable: str = "CASBACKUP_CACHE_DIR"
) -> str:
    """Why ``path`` (at or below the folder ``top`` that this client owns, such as the
    cache root) cannot be used, for "cannot open the index cache at PATH: ...": the
    entry from ``top`` down that another user owns and how to give it back, or where to
    point the client instead (``variable``: the setting that moves it); ``exc``'s own
    words when it is no refusal."""
    if exc.errno not in (errno.EACCES, errno.EPERM):
        return exc.strerror or str(exc)
    me = os.geteuid()
    top = os.path.abspath(top)
    path = os.path.abspath(path)
    chain = [top]
    if path.startswith(top + os.sep):
        for part in os.path.relpath(path, top).split(os.sep):
            chain.append(os.path.join(chain[-1], part))
    for entry in chain:
        try:
            owner = os.lstat(entry).st_uid
        except OSError:
            break
        if owner != me:
            return (
                f"permission denied: {entry} is owned by {user_name(owner)}, not by you"
                f" ({user_name(me)}); a command run as that user with your HOME made it."
                f" 'sudo chown -R {user_name(me)}: {shlex.quote(top)}' gives it back"
                + (" (or remove it: it is only a cache)" if "CACHE" in variable else "")
            )
    return (
        f"permission denied (set {variable} to a folder you can write, or give this user a"
        " home it can write)"
    )


class ForeignCacheEntry(PermissionError):
    """A folder or file of the cache that another user owns, or one that is a link."""


def refuse_foreign(path: str, *, shared_ok: bool) -> None:
    """ForeignCacheEntry unless ``path`` is ours and no link, as ssh refuses key files that
    others could have written. The cache root itself (``shared_ok``) may be root's, if no
    one else can swap what is in it (sticky, like /tmp, or writable by root only); it may
    be a link (a cache moved to a bigger disk), nothing below it may."""
    st = os.stat(path) if shared_ok else os.lstat(path)
    me = os.geteuid()
    if stat.S_ISLNK(st.st_mode):
        raise ForeignCacheEntry(errno.EPERM, "is a symbolic link, refused", path)
    if st.st_uid == me:
        return
    if shared_ok and st.st_uid == 0 and (st.st_mode & stat.S_ISVTX or not st.st_mode & 0o022):
        return
    raise ForeignCacheEntry(
        errno.EPERM, f"is owned by {user_name(st.st_uid)}, not by you, refused", path
    )
