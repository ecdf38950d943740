"""Database dump engines: each turns a configured database into a byte stream and back.

See `base.py` for the contract (`DumpStream.finish()` is the only proof that a dump succeeded).
"""

from casbackup.engines.base import (
    DatabaseSpec,
    DumpInfo,
    DumpStream,
    Engine,
    RestoreInfo,
    canonical_engine_name,
    engine_names,
    get_engine,
    register_engine,
)

__all__ = [
    "DatabaseSpec",
    "DumpInfo",
    "DumpStream",
    "Engine",
    "RestoreInfo",
    "canonical_engine_name",
    "engine_names",
    "get_engine",
    "register_engine",
]
