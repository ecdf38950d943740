"""Exclude patterns (restic-like).

- A pattern without ``/`` matches any path component's name: ``*.log``, ``node_modules``.
- A pattern with ``/`` matches the whole absolute path, or its tail when it does
  not start with ``/``: ``/var/cache`` or ``cache/tmp``.
- ``**`` matches across directories; ``*`` and ``?`` do not cross ``/``.
- A leading ``!`` re-includes what an earlier pattern excluded.

Beside the patterns, two rules that look at the entry itself (restic's options of the same
names; applied by the walk and by the readers' comparison with the parent alike, so a
folder that gains a tag is left out by the very next backup):
- ``if_present``: a folder holding a file NAME (``NAME:HEADER``: whose first bytes are
  HEADER) is left out whole. ``--exclude-caches`` is ``CACHEDIR.TAG`` with the header of
  the Cache Directory Tagging Specification (https://bford.info/cachedir/).
- ``larger_than``: a regular file of more than this many bytes is left out.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

from casbackup.errors import UsageError


def _translate(pattern: str, kind: str = "exclude") -> str:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                raise UsageError(f"{kind} pattern {pattern!r} has an unclosed '['")
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            if body.startswith("!"):
                body = "^" + body[1:]
            out.append(f"[{body}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


# https://bford.info/cachedir/: a CACHEDIR.TAG counts only when it starts with these bytes.
CACHEDIR_TAG = "CACHEDIR.TAG:Signature: 8a477f597d28d172789f06886806bc55"


def parse_if_present(specs: tuple[str, ...] | list[str]) -> tuple[tuple[bytes, bytes], ...]:
    """``NAME`` or ``NAME:HEADER`` (restic's ``--exclude-if-present``) -> (name, header) pairs.

    Raises UsageError for an empty name or one holding ``/`` (a file inside the folder is
    meant, not a path)."""
    if not specs:
        return ()  # and no import of the config package (backup PATHS starts sooner)
    from casbackup.config.model import IF_PRESENT_RULE, if_present_ok

    pairs = []
    for spec in specs:
        if not if_present_ok(spec):
            raise UsageError(f"--exclude-if-present {spec!r}: {IF_PRESENT_RULE}")
        name, _, header = spec.partition(":")
        pairs.append((os.fsencode(name), os.fsencode(header)))
    return tuple(pairs)


@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    negate: bool


class Excluder:
    """Decides which paths a backup leaves out.

    ``patterns``: the rules above, in order. ``exact``: absolute paths always left out,
    whatever the patterns say (the database files an application dumps through its
    engine: a ``!`` rule must not bring a live database file back into the walk).
    ``rename``: (read folder, original path) pairs: a source read from a file-system
    snapshot is matched as if read at its original path, so ``/srv/app/cache`` still
    excludes the snapshot's copy of that folder.

    ``kind``: what the patterns are to the user ("exclude"; "include" for restore's -i,
    "search" for find), as the error names them.

    Raises UsageError (one line naming the pattern) for a pattern that is not a valid glob.
    """

    def __init__(
        self,
        patterns: list[str] | tuple[str, ...],
        exact: frozenset[str] = frozenset(),
        rename: tuple[tuple[str, str], ...] = (),
        kind: str = "exclude",
        *,
        if_present: tuple[str, ...] = (),
        larger_than: int = 0,
    ) -> None:
        self._exact = exact
        self._if_present = parse_if_present(if_present)
        self._larger_than = larger_than
        self._rename = tuple((r.rstrip("/"), o.rstrip("/")) for r, o in rename)
        self.patterns = tuple(p for p in patterns if p.strip() and not p.lstrip().startswith("#"))
        rules = []
        for raw in self.patterns:
            pattern = raw.strip()
            negate = pattern.startswith("!")
            if negate:
                pattern = pattern[1:]
            pattern = pattern.rstrip("/")
            if not pattern:
                continue
            body = _translate(pattern, kind)
            if pattern.startswith("/"):
                regex = f"^{body}$"
            elif "/" in pattern:
                regex = f"(^|/){body}$"
            else:
                regex = f"(^|/){body}$"
            try:
                compiled = re.compile(regex, re.DOTALL)
            except re.error as exc:  # '[z-a]', '[]': the glob's own syntax, told as such
                raise UsageError(f"{kind} pattern {raw!r} is not valid: {exc.msg}") from None
            rules.append(_Rule(compiled, negate))
        self._rules = tuple(rules)

    def __bool__(self) -> bool:
        return bool(self._rules or self._exact or self._if_present or self._larger_than)

    def excluded_entry(self, path: bytes, st: os.stat_result) -> bool:
        """The rules that need the entry's lstat ``st``: a folder holding one of the
        ``if_present`` files, a regular file over ``larger_than`` bytes. A tag file that
        cannot be read counts as absent (the folder is backed up: never less than asked)."""
        mode = st.st_mode
        if self._larger_than and stat.S_ISREG(mode) and st.st_size > self._larger_than:
            return True
        if self._if_present and stat.S_ISDIR(mode):
            for name, header in self._if_present:
                if _holds(os.path.join(path, name), header):
                    return True
        return False

    def excluded(self, path: str) -> bool:
        for read, original in self._rename:
            if path == read or path.startswith(read + "/"):
                path = original + path[len(read) :]
                break
        if path in self._exact:
            return True
        result = False
        for rule in self._rules:
            if rule.regex.search(path):
                result = not rule.negate
        return result


def _holds(path: bytes, header: bytes) -> bool:
    """Whether ``path`` is a regular file (not followed if a link) starting with ``header``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        return not header or os.read(fd, len(header)) == header
    except OSError:
        return False
    finally:
        os.close(fd)


def read_exclude_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    except OSError as exc:
        raise UsageError(f"cannot read exclude file {path}: {exc.strerror}") from None
