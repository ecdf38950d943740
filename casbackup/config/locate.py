"""Where in a TOML config file each key is, so that an error names the line.

tomllib gives values, not positions. This reads the text line by line as TOML lays it out
(table headers, arrays of tables, ``key = value`` lines, multi-line arrays and strings) and
maps each key path as the validator spells it (``applications[1].databases[0].port``) to
the line where it is written. It is a help for messages only: a layout it does not follow
(inline tables, keys that need quoting) leaves those keys without a line, never a wrong file.
"""

from __future__ import annotations

import re

_HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\- ]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-]+(?:\s*\.\s*[A-Za-z0-9_\-]+)*)\s*=")
_INDEX = re.compile(r"\[\d+\]$")


def key_lines(text: str) -> dict[str, int]:
    """{key path: 1-based line} for the tables and keys of a TOML ``text``.

    Array-of-tables entries are counted as the validator counts them (``applications[0]``,
    then ``applications[1]``; ``[[applications.databases]]`` within the latest application).
    The first line that writes a path wins."""
    lines: dict[str, int] = {}
    counts: dict[str, int] = {}  # array-of-tables path (indexed parents) -> entries so far
    table = ""
    multiline: str | None = None  # the closing quotes of a multi-line string we are in
    depth = 0  # open brackets of a multi-line array value
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw
        if multiline is not None:
            if multiline in line:
                multiline = None
            continue
        if depth > 0:
            depth = max(0, depth + _brackets(line))
            continue
        header = _HEADER.match(line)
        if header:
            parts = [p.strip() for p in header.group(2).split(".")]
            path = _indexed(parts[:-1], counts)
            name = f"{path}.{parts[-1]}" if path else parts[-1]
            if header.group(1) == "[[":
                index = counts.get(name, 0)
                counts[name] = index + 1
                lines.setdefault(name, number)
                name = f"{name}[{index}]"
            table = name
            lines.setdefault(name, number)
            continue
        key = _KEY.match(line)
        if key is None:
            continue
        dotted = ".".join(p.strip() for p in key.group(1).split("."))
        lines.setdefault(f"{table}.{dotted}" if table else dotted, number)
        value = line[key.end() :]
        for quotes in ('"""', "'''"):
            if value.count(quotes) % 2 == 1:
                multiline = quotes
        if multiline is None:
            depth = max(0, _brackets(value))
    return lines


def line_of(lines: dict[str, int], key: str) -> int | None:
    """The line of ``key``, else of the nearest enclosing path that is written (an array's
    element: the array; a key that is missing: its table); None when nothing is."""
    while key:
        if key in lines:
            return lines[key]
        if _INDEX.search(key):
            key = _INDEX.sub("", key)
        else:
            key = key.rpartition(".")[0]
    return None


def _indexed(parts: list[str], counts: dict[str, int]) -> str:
    """A header's parent path with the latest entry of each array of tables in it."""
    path = ""
    for part in parts:
        path = f"{path}.{part}" if path else part
        if path in counts:
            path = f"{path}[{counts[path] - 1}]"
    return path


def _brackets(value: str) -> int:
    """Open minus closed brackets of a value, outside strings and comments."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'', "", value).split("#", 1)[0]
    return text.count("[") - text.count("]")
