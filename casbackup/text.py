"""Text that leaves the process (a job's log, a web page, a notification): valid UTF-8,
whatever the file names it mentions.

A file name need not be UTF-8; Python carries its other bytes as surrogate escapes
(``os.fsdecode``), which SQLite, an HTTP response or a mail refuse to encode ("surrogates
not allowed"). A service job's warning naming such a file failed the whole job after its
snapshot was saved, a snapshot page listing it answered 500, and the healthchecks and
email notifiers failed to send the warning of such a backup. Such bytes are shown as ``\\xNN``,
as the CLI shows them (cli/render.py ``printable``).
"""

from __future__ import annotations

from typing import Any


def storable(value: Any) -> Any:
    """``value`` (text, or JSON-shaped lists and dicts of it) with every text that is not
    valid UTF-8 made so: surrogate-escaped bytes as ``\\xNN``, any other lone surrogate as
    ``\\udNNN``. Anything else is returned as it is; valid text is returned unchanged."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            try:
                raw = value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:  # a lone surrogate of another kind (a JSON escape)
                return value.encode("utf-8", "backslashreplace").decode("utf-8")
            return raw.decode("utf-8", "backslashreplace")
        return value
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    return value
