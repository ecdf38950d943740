"""Who owns what a local repository holds, when more than one user runs casbackup on it.

A user's own repository (in their home, on their USB disk) is often written once by
root as well (``sudo casbackup backup`` of a folder the user cannot read). Files and
folders root creates there are root's, 0600/0700: the user's next backup, check or
prune then fails on them with "permission denied". So root gives what it creates in a
repository folder owned by someone else to that owner (``owner_to_give``), as the user
would have written it; and a refusal names the entry another user owns and how to give
it back (``denied_hint``), for repositories written that way before.
"""

from __future__ import annotations

import errno
import os
import pwd
import shlex

__all__ = ["denied_hint", "owner_to_give", "user_name"]


def owner_to_give(st: os.stat_result) -> tuple[int, int] | None:
    """``(uid, gid)`` to give new entries of a repository whose folder has status ``st``:
    its owner's when we run as root and the folder is another user's; None otherwise
    (not root, or root's own repository: entries are the creator's, as always)."""
    if os.geteuid() != 0 or st.st_uid == 0:
        return None
    return st.st_uid, st.st_gid


def user_name(uid: int) -> str:
    """The login name of ``uid``, or ``uid N`` when the system does not know it."""
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return f"uid {uid}"


def denied_hint(root: str, name: str, exc: OSError) -> str:
    """What to add to "permission denied" on ``name`` (a path under the folder ``root``):
    the first of ``root``, its folders on the way to ``name`` and ``name`` itself that
    another user owns, and the command that gives the repository back to us. "" when
    ``exc`` is not a refusal, when we are root, or when every entry is ours (then the
    modes are at fault, not the owners, and the plain error says enough)."""
    me = os.geteuid()
    if exc.errno not in (errno.EACCES, errno.EPERM) or me == 0:
        return ""
    path = root
    parts = [p for p in name.split("/") if p]
    for rel in [""] + ["/".join(parts[: i + 1]) for i in range(len(parts))]:
        path = os.path.join(root, rel) if rel else root
        try:
            st = os.lstat(path)
        except OSError:
            return ""  # not reachable from here: nothing more to say about owners
        if st.st_uid != me:
            what = rel or "the repository folder"
            return (
                f" ({what} is owned by {user_name(st.st_uid)}, not by you ({user_name(me)}):"
                f" a command run as that user wrote it; 'sudo chown -R {user_name(me)}:"
                f" {shlex.quote(root)}' gives the repository back to you)"
            )
    return ""
