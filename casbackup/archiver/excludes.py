"""Exclude patterns (restic-like).

- A pattern without ``/`` matches any path component's name: ``*.log``, ``node_modules``.
- A pattern with ``/`` matches the whole absolute path, or its tail when it does
  not start with ``/``: ``/var/cache`` or ``cache/tmp``.
- ``**`` matches across directories; ``*`` and ``?`` do not cross ``/``.
- A leading ``!`` re-includes what an earlier pattern excluded.
"""

from __future__ import annotations

import re
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
    ) -> None:
        self._exact = exact
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
        return bool(self._rules or self._exact)

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


def read_exclude_file(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    except OSError as exc:
        raise UsageError(f"cannot read exclude file {path}: {exc.strerror}") from None
