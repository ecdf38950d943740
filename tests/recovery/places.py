"""Where recover puts a source: the layout rule, written out for the tests."""

from __future__ import annotations

from pathlib import Path


def landed(target: Path, source: Path) -> Path:
    """Where `recover` restores the source folder `source` (absolute) below `target`:
    ``target/<source's path>``, whatever the number of sources."""
    return target / str(source).lstrip("/")
