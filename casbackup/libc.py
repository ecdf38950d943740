"""The C library's functions that Python does not expose (prctl, madvise, mallopt).

``libc()`` opens the running process's own symbols (``dlopen(NULL)``), which on Linux include
libc's. ``ctypes.util.find_library("c")``, used before, runs ``ldconfig -p`` (or gcc) in a
subprocess on every call: in a forked helper process (check's pack readers, the backup's
readers, a service worker) that meant a subprocess started from a child of a process with
other threads, before the helper had even set its parent-death signal.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any


@functools.cache
def libc() -> Any | None:
    """The C library as a ``ctypes.CDLL`` (errno kept for ``ctypes.get_errno``), or None
    where the process's symbols cannot be opened. Cached: callers in a forked child reuse
    the parent's handle."""
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


def function(name: str) -> Any | None:
    """libc's function ``name``, or None where there is none (not Linux, not glibc)."""
    lib = libc()
    return getattr(lib, name, None) if lib is not None else None


libc()  # opened at import, before any fork: children inherit the handle
