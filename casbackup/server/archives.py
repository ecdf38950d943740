"""A snapshot folder as one streamed zip (``GET /api/snapshots/{id}/download?format=zip``).

``zipfile`` writes into `_Sink`, a write-only object without ``tell``/``seek``: zipfile then
streams (each member followed by a data descriptor, the central directory at the end) and
never seeks back. After every write the generator hands what the sink holds to the response
and empties it, so memory stays one read block plus the compressor's window whatever the
folder's size. Members whose size (known from the tree) is near 4 GiB or more get ZIP64
records (zipfile decides from ``ZipInfo.file_size``).

Names: zip stores UTF-8 names (flag bit 11); a file name that is not valid UTF-8 has no
lossless zip form, so its undecodable bytes become U+FFFD (the tar format keeps them as they
are: use ``format=tar`` for such folders).
"""

from __future__ import annotations

import stat
import time
import zipfile
from collections.abc import Iterator
from typing import Any

from casbackup.errors import StorageError
from casbackup.repo.tree import NodeKind

BLOCK = 1 << 20


class _Sink:
    """Write-only stream: collects what zipfile writes until the generator takes it."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def take(self) -> bytes:
        out = b"".join(self.parts)
        self.parts.clear()
        return out


def _zip_name(name: str) -> str:
    """A member name zip can store: surrogate-escaped bytes (non-UTF-8) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _info(entry: Any, arcname: str, mode_type: int) -> zipfile.ZipInfo:
    n = entry.node
    seconds = max(n.mtime_ns // 1_000_000_000, 315_532_800)  # zip times start in 1980
    when = time.gmtime(seconds)[:6]
    info = zipfile.ZipInfo(_zip_name(arcname), date_time=when)
    info.external_attr = ((mode_type | (n.mode & 0o7777)) & 0xFFFF) << 16
    info.create_system = 3  # Unix: the high 16 bits of external_attr are st_mode
    return info


def zip_stream(vfs: Any, root: str, top: str) -> Iterator[bytes]:
    """The folder ``root`` of ``vfs`` (casbackup/vfs) as zip bytes, members under ``top/``:
    folders, regular files (deflated) and symbolic links (the target as content, the
    Info-ZIP convention). Other kinds (devices, sockets) are left out, as in the tar."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        stack = [(root, top)]
        while stack:
            folder, arc = stack.pop()
            info = _info(vfs.lookup(folder), arc + "/", stat.S_IFDIR)
            info.external_attr |= 0x10  # MS-DOS directory bit
            zf.writestr(info, b"", compress_type=zipfile.ZIP_STORED)
            yield sink.take()
            for child in sorted(vfs.listdir(folder), key=lambda e: e.name):
                child_arc = f"{arc}/{child.name}"
                if child.kind == NodeKind.DIR:
                    stack.append((child.path, child_arc))
                elif child.kind == NodeKind.SYMLINK:
                    info = _info(child, child_arc, stat.S_IFLNK)
                    zf.writestr(info, bytes(child.node.link_target))
                    yield sink.take()
                elif child.kind == NodeKind.FILE:
                    info = _info(child, child_arc, stat.S_IFREG)
                    size = child.node.size
                    info.file_size = size  # ZIP64 headers from the start when it is large
                    info.compress_type = zipfile.ZIP_DEFLATED
                    opened = vfs.open(child.path)
                    with zf.open(info, "w") as member:
                        pos = 0
                        while pos < size:
                            data = opened.read(pos, min(BLOCK, size - pos))
                            if not data:  # never a silently short member
                                raise StorageError(
                                    f"{child.path}: the file ended at {pos} of {size} bytes"
                                )
                            pos += len(data)
                            member.write(data)
                            yield sink.take()
                    yield sink.take()
    yield sink.take()
