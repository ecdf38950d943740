"""The storage backend protocol: a flat namespace of immutable named objects.

Names are relative POSIX paths such as ``config``, ``keys/<hex>``,
``data/ab/<hex>``. Semantics every backend must keep (the conformance tests in
tests/store check them):

- ``put(name, data)``: atomic and durable when it returns. A reader sees either
  no object or all of it, never a prefix, even if the process dies mid-write.
  Putting an existing name replaces it atomically (only ``config`` and lock files
  are ever rewritten; content-addressed names always carry the same bytes).
- ``get(name, offset=0, length=None)``: the bytes, or exactly ``length`` bytes
  from ``offset``. A missing object raises ``NotFound`` (never returns None: in a
  content-addressed store, missing means damaged). A range past the end raises
  ``StorageError``.
- ``delete(name)``: removes; deleting a missing object raises ``NotFound``.
- ``list(prefix)``: yields ``(name, size)`` for every object whose name starts
  with ``prefix``; order is unspecified. Never yields temp files.
- ``stat(name)``: the size, or ``NotFound``.
Errors are casbackup's own: NotFound, StorageError, TransientStorageError.

Hostile storage (store/names.py, repo_format.md "Limits readers enforce"): every
method accepts only names of the exact shape the format writes, in their exact folder
(``data/<first two hex>/<64 hex>``, ``index/<64 hex>``, ``locks/<32 hex>``, ...), and
raises ``StorageError`` for any other. ``list`` yields only such names of regular
objects; every other entry it meets (a symlink, a FIFO, an unknown name or folder) is
an *odd entry*: never followed, read or deleted, recorded in ``skipped`` (a
``SkippedEntries``, shown as warnings) and enumerated by ``odd_entries(prefix)`` (for
``check``). A whole-object ``get`` of an object over its kind's cap, or of anything
that is not a regular file, raises ``ObjectRefused`` (a ``StorageError``) before a byte
is read. ``delete`` removes only a regular object, never what a symlink points to.

``remote`` (optional, False when absent): every request crosses a network. ``is_remote``
below is the one rule readers use for it; wrappers forward the inner backend's.

Optional (``LocalFiles``): a backend whose objects are local files may also offer
``open_file(name)``, an unbuffered binary file of the object, so a reader that goes
through a whole pack (``check --read-data``) opens it once and reads into its own
buffer. A wrapper that changes what ``get`` returns (fault injection) must not forward
it; readers fall back to ranged ``get``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO, Protocol, runtime_checkable

from casbackup.store.names import SkippedEntries


class Backend(Protocol):
    location: str

    def put(self, name: str, data: bytes | memoryview) -> None: ...

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes: ...

    def delete(self, name: str) -> None: ...

    def list(self, prefix: str) -> Iterator[tuple[str, int]]: ...

    def stat(self, name: str) -> int: ...

    def exists(self, name: str) -> bool: ...

    def odd_entries(self, prefix: str = "") -> Iterator[tuple[str, str]]: ...

    def close(self) -> None: ...

    skipped: SkippedEntries


def is_remote(backend: object) -> bool:
    """Whether every request to ``backend`` crosses a network (an object store): the one
    rule every reader uses to choose read-ahead threads, merged-range gaps, the tree
    cache and the background uploader. A backend says so with a true ``remote``
    attribute (S3Backend; a storage plugin may); every wrapper forwards its inner
    backend's (RetryingBackend, GuardedBackend, FaultyBackend), so a wrapped local
    folder is judged local and a wrapped object store remote. Without the attribute a
    backend is local (a folder, memory). A fast path that needs a folder's files
    (``LocalFiles.open_file``, a ``root`` for helper processes) is a capability,
    looked up on its own."""
    return bool(getattr(backend, "remote", False))


def odd_entries(backend: Backend, prefix: str = "") -> list[tuple[str, str]]:
    """(name, why) of the odd entries under ``prefix`` (none for a backend that cannot
    hold any); a backend's own scan, for ``check`` to report them as damage."""
    scan = getattr(backend, "odd_entries", None)
    return list(scan(prefix)) if scan is not None else []


def skipped_names(backend: Backend) -> list[str]:
    """The odd entries this run's listings skipped so far (kept for ``skipped_warnings``)."""
    skipped = getattr(backend, "skipped", None)
    return skipped.names() if isinstance(skipped, SkippedEntries) else []


def skipped_warnings(backend: Backend) -> list[str]:
    """One-line warnings for the odd entries this run's listings skipped, then forgotten."""
    skipped = getattr(backend, "skipped", None)
    return skipped.take() if isinstance(skipped, SkippedEntries) else []


@runtime_checkable
class LocalFiles(Protocol):
    def open_file(self, name: str) -> BinaryIO:
        """The object as an unbuffered file the caller closes; a missing one raises NotFound."""
        ...


def delete_if_present(backend: Backend, name: str) -> bool:
    """Delete ``name``; False when it is gone already (an interrupted run of the same
    maintenance got that far). Other errors (StorageError) propagate."""
    from casbackup.errors import NotFound

    try:
        backend.delete(name)
    except NotFound:
        return False
    return True
