"""A snapshot's folder as one streamed archive: tar (POSIX pax) or zip.

``casbackup dump SNAPSHOT:FOLDER`` (restic's ``dump --archive``, borg's ``export-tar``) and
the service's folder download write the same bytes. Both hand in `Member` entries in the
order to write them (a folder before what it holds); the writers here build the headers and
stream each file's contents through in reads of at most ``BLOCK`` bytes, so memory stays
flat whatever the folder holds.

tar (pax format, read by GNU tar, bsdtar and Python's tarfile): folders, files, symbolic
links, FIFOs and device nodes with their permission bits, owner ids and names, modification
time to the nanosecond (pax ``mtime``) and extended attributes (pax ``SCHILY.xattr.NAME``,
as GNU tar ``--xattrs`` writes them; POSIX ACLs travel there in their binary
``system.posix_acl_*`` form). Names of one inode recorded with one content (hard links,
``Node.link_group``) are written once and then as hard-link members. Names are the stored
bytes (non-UTF-8 names are kept exactly, pax ``hdrcharset=BINARY``). Sockets have no tar
form and are left out, as GNU tar does.

zip: folders, files (deflated) and symbolic links (the target as content, the Info-ZIP
convention) with their permission bits; zip stores UTF-8 names, so bytes of a name that are
not UTF-8 become U+FFFD. Owners, nanoseconds, attributes, hard links and special files have
no zip form: use tar to keep them.

A file whose stored content ends before its recorded size raises `IntegrityError`: an
archive member is never silently short (a short tar member would shift every later one).
"""

from __future__ import annotations

import os
import stat
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from casbackup.errors import CasError, IntegrityError
from casbackup.repo.tree import Node, NodeKind

BLOCK = 1 << 20  # bytes per content read: one chunk-sized piece at a time
FORMATS = ("tar", "zip")

_TAR_TYPES = {
    NodeKind.DIR: tarfile.DIRTYPE, NodeKind.FILE: tarfile.REGTYPE,
    NodeKind.SYMLINK: tarfile.SYMTYPE, NodeKind.FIFO: tarfile.FIFOTYPE,
    NodeKind.CHARDEV: tarfile.CHRTYPE, NodeKind.BLOCKDEV: tarfile.BLKTYPE,
}  # fmt: skip


@dataclass(frozen=True)
class Member:
    """One entry to archive: ``path`` is its name in the archive (``/``-separated, no leading
    ``/``; undecodable bytes surrogate-escaped, as ``os.fsdecode`` gives them), ``node`` its
    recorded metadata, ``read(pos, n)`` (files only) returns up to ``n`` bytes of its content
    from byte ``pos``, ``b""`` at the end."""

    path: str
    node: Node
    read: Callable[[int, int], bytes] | None = None


def tree_members(repo: object, top: Node, name: str) -> Iterator[Member]:
    """The folder node ``top`` of a snapshot in ``repo`` (a ``Repository``) and everything
    below it, depth first, each folder before its entries (in stored order, which is by
    name). Members are named ``name/...``, or ``...`` alone when ``name`` is empty (a whole
    snapshot). Trees are loaded one folder at a time; contents are read in batches through
    the restore's read plan (``readcheck.read_files``: per pack, ahead of the writing),
    each chunk checked and each file's size and content hash compared at its end."""
    from casbackup.archiver.readcheck import read_files

    for (node, path), stream in read_files(repo, _walk(repo, top, name)):  # type: ignore[arg-type]
        if node.kind != NodeKind.FILE:
            yield Member(path, node)
        else:
            yield Member(path, node, _reader(stream, node, path))


def _walk(repo: object, top: Node, name: str) -> Iterator[tuple[Node, tuple[Node, str]]]:
    """(node, (node, path)) of ``tree_members``' entries in their order (``read_files``'
    pairs: the tag carries the node and its name in the archive)."""
    stack: list[tuple[Node, str]] = [(top, name)]
    while stack:
        folder, path = stack.pop()
        if path:
            yield folder, (folder, path)
        nodes = repo.load_tree(folder.subtree) if folder.subtree is not None else []  # type: ignore[attr-defined]
        below: list[tuple[Node, str]] = []
        for node in nodes:
            child = f"{path}/{os.fsdecode(node.name)}" if path else os.fsdecode(node.name)
            if node.kind == NodeKind.DIR:
                below.append((node, child))
            else:
                yield node, (node, child)
        stack.extend(reversed(below))


def _reader(stream: object, node: Node, path: str) -> Callable[[int, int], bytes]:
    """A Member's ``read`` over its FileStream (or the error that stopped it first)."""
    if isinstance(stream, CasError):
        error = stream

        def fail(pos: int, n: int) -> bytes:
            raise error

        return fail

    def read(pos: int, n: int) -> bytes:  # sequential: pos is where the last read ended
        data: bytes = stream.read(n)  # type: ignore[attr-defined]
        if pos + len(data) >= node.size and stream.read(1):  # type: ignore[attr-defined]
            # The read past the end is what checks the whole file's content hash.
            raise IntegrityError(f"{path}: the stored content is longer than {node.size} bytes")
        return data

    return read


def archive_stream(fmt: str, members: Iterable[Member]) -> Iterator[bytes]:
    """``members`` as ``fmt`` (one of ``FORMATS``) archive bytes, piece by piece."""
    if fmt == "tar":
        return tar_stream(members)
    if fmt == "zip":
        return zip_stream(members)
    raise ValueError(f"unknown archive format {fmt!r}")


def _contents(member: Member) -> Iterator[bytes]:
    """A file member's exact recorded size of content, in pieces of at most BLOCK bytes."""
    size, pos = member.node.size, 0
    assert member.read is not None
    while pos < size:
        try:
            data = member.read(pos, min(BLOCK, size - pos))
        except CasError as exc:  # a damaged or missing chunk: say which file it hit
            # A new error, not the one read: a failed range's error is shared by every blob
            # in it, and a second file hit by it read "b: a: ..." (helper-69).
            raise exc.saying(f"{member.path}: {exc.message}") from None
        if not data:
            raise IntegrityError(f"{member.path}: the stored content ends at byte {pos} of {size}")
        if len(data) > size - pos:
            raise IntegrityError(f"{member.path}: the stored content is longer than {size} bytes")
        pos += len(data)
        yield data


# ------------------------------------------------------------------------------------- tar
def tar_stream(members: Iterable[Member]) -> Iterator[bytes]:
    """``members`` as a POSIX pax tar stream, ending with the two zero blocks."""
    first_names: dict[tuple[int, int, bytes], str] = {}  # link_group -> first name written
    for m in members:
        n = m.node
        kind = _TAR_TYPES.get(n.kind)
        if kind is None:
            continue  # a socket
        group = n.link_group
        if group is not None and group in first_names:
            yield _tar_header(m, tarfile.LNKTYPE, first_names[group])
            continue
        yield _tar_header(m, kind)
        if n.kind == NodeKind.FILE:
            if group is not None:
                first_names[group] = m.path
            yield from _contents(m)
            yield b"\0" * (-n.size % tarfile.BLOCKSIZE)
    yield b"\0" * (2 * tarfile.BLOCKSIZE)


def _tar_header(m: Member, kind: bytes, link_to: str = "") -> bytes:
    n = m.node
    name = m.path + "/" if n.kind == NodeKind.DIR else m.path
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = n.mode & 0o7777
    info.uid, info.gid, info.uname, info.gname = n.uid, n.gid, n.user, n.group
    info.mtime = n.mtime_ns // 1_000_000_000
    pax: dict[str, str] = {}
    if n.mtime_ns % 1_000_000_000 or n.mtime_ns < 0:  # ustar: whole non-negative seconds
        whole, nanos = divmod(abs(n.mtime_ns), 1_000_000_000)
        pax["mtime"] = f"{'-' if n.mtime_ns < 0 else ''}{whole}.{nanos:09d}"
    if kind == tarfile.REGTYPE:
        info.size = n.size
    elif kind == tarfile.LNKTYPE:
        info.linkname = link_to
    elif kind == tarfile.SYMTYPE:
        info.linkname = os.fsdecode(n.link_target)
    elif kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = os.major(n.rdev), os.minor(n.rdev)
    for key, value in n.xattrs:
        pax["SCHILY.xattr." + os.fsdecode(key)] = value.decode("utf-8", "surrogateescape")
    info.pax_headers = pax
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


# ------------------------------------------------------------------------------------- zip
class _Sink:
    """Write-only stream without ``tell``/``seek``: zipfile then writes each member with a
    data descriptor and never seeks back; the generator empties it after every write."""

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


def _zip_info(m: Member, name: str, type_bits: int) -> zipfile.ZipInfo:
    n = m.node
    seconds = max(n.mtime_ns // 1_000_000_000, 315_532_800)  # zip times start in 1980
    info = zipfile.ZipInfo(
        name.encode("utf-8", "surrogateescape").decode("utf-8", "replace"),
        date_time=time.gmtime(seconds)[:6],
    )
    info.external_attr = ((type_bits | (n.mode & 0o7777)) & 0xFFFF) << 16
    info.create_system = 3  # Unix: the high 16 bits of external_attr are st_mode
    return info


def zip_stream(members: Iterable[Member]) -> Iterator[bytes]:
    """``members`` as a streamed zip: folders, files (deflated, level 1; ZIP64 records from
    the start for members near 4 GiB or more) and symbolic links; other kinds left out."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for m in members:
            kind = m.node.kind
            if kind == NodeKind.DIR:
                info = _zip_info(m, m.path + "/", stat.S_IFDIR)
                info.external_attr |= 0x10  # MS-DOS directory bit
                zf.writestr(info, b"", compress_type=zipfile.ZIP_STORED)
            elif kind == NodeKind.SYMLINK:
                zf.writestr(_zip_info(m, m.path, stat.S_IFLNK), bytes(m.node.link_target))
            elif kind == NodeKind.FILE:
                info = _zip_info(m, m.path, stat.S_IFREG)
                info.file_size = m.node.size
                info.compress_type = zipfile.ZIP_DEFLATED
                with zf.open(info, "w") as out:
                    for data in _contents(m):
                        out.write(data)
                        yield sink.take()
            yield sink.take()
    yield sink.take()
